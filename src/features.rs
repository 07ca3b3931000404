//! Features: the definitions of `features/*.toml` compiled to polars expressions and
//! computed for every customer at every cutoff in one lazy plan. A feature at cutoff `t`
//! sees only events strictly before `t`; windows are `[t - N days, t)`.

use polars::prelude::*;

use crate::config::{
    Agg, Aggregate, DeriveOp, FeatureDef, FeatureKind, FeatureSet, Filter, FilterOp, FilterValue,
    Over, Population, Window, session_field as sf,
};
use crate::error::{Context, Result};
use crate::schema::{EventType, event as ev, output};
use crate::util::MICROS_PER_DAY;

/// Event (or session start) time in µs, the only clock features use.
const T: &str = "_t";

/// Compiles a `where` filter.
pub fn filter_expr(f: &Filter) -> Expr {
    let c = col(f.field.as_str());
    let value = |v: &FilterValue| match v {
        FilterValue::Number(x) => lit(*x),
        FilterValue::Text(s) => lit(s.clone()),
        FilterValue::Bool(b) => lit(*b),
    };
    match &f.op {
        FilterOp::Eq(v) => c.eq(value(v)),
        FilterOp::Ne(v) => c.neq(value(v)),
        FilterOp::Gt(x) => c.gt(lit(*x)),
        FilterOp::Ge(x) => c.gt_eq(lit(*x)),
        FilterOp::Lt(x) => c.lt(lit(*x)),
        FilterOp::Le(x) => c.lt_eq(lit(*x)),
        FilterOp::IsNull => c.is_null(),
        FilterOp::NotNull => c.is_not_null(),
    }
}

/// Event-type condition (true when `events` is empty).
pub fn events_expr(events: &[EventType]) -> Expr {
    events
        .iter()
        .map(|t| col(ev::EVENT_TYPE).eq(lit(t.name())))
        .reduce(|a, b| a.or(b))
        .unwrap_or(lit(true))
}

fn window_expr(window: Window) -> Expr {
    match window {
        Window::All => lit(true),
        Window::Range { from_days, to_days } => col(T)
            .gt_eq(col(output::CUTOFF) - lit(from_days * MICROS_PER_DAY))
            .and(col(T).lt(col(output::CUTOFF) - lit(to_days * MICROS_PER_DAY))),
    }
}

/// Fixed-point scale of feature sums: values are summed as integer millionths, so a sum
/// is exact and does not depend on the order polars adds rows in (floating-point addition
/// does), which keeps outputs byte-identical run after run. Money has two decimals, so
/// nothing is lost there; other fields are rounded to 1e-6.
const SUM_SCALE: f64 = 1e6;

fn fixed_point(e: Expr) -> Expr {
    (e.cast(DataType::Float64) * lit(SUM_SCALE))
        .round(0, RoundMode::default())
        .cast(DataType::Int64)
}

/// Order-independent sum of a float expression (null when every value is null is 0).
fn exact_sum(e: Expr) -> Expr {
    fixed_point(e).sum().cast(DataType::Float64) / lit(SUM_SCALE)
}

/// Order-independent mean: exact sum over the count of non-null values.
fn exact_mean(e: Expr) -> Expr {
    let n = e.clone().count().cast(DataType::Float64);
    when(n.clone().eq(lit(0.0)))
        .then(lit(NULL).cast(DataType::Float64))
        .otherwise(exact_sum(e) / n)
}

/// Rows of the group that the feature looks at: event types, window, then `where`.
fn mask(a: &Aggregate, with_filters: bool) -> Expr {
    let mut m = events_expr(&a.events).and(window_expr(a.window));
    if with_filters {
        for f in &a.filters {
            m = m.and(filter_expr(f));
        }
    }
    m.fill_null(lit(false))
}

/// The aggregation expression of one aggregate feature over one (customer, cutoff) group.
fn aggregate_expr(name: &str, a: &Aggregate) -> Expr {
    let m = mask(a, true);
    let field = || col(a.field.as_deref().expect("validated: field present")).filter(m.clone());
    let days = |e: Expr| {
        (col(output::CUTOFF).first() - e).cast(DataType::Float64) / lit(MICROS_PER_DAY as f64)
    };
    let by_time = |e: Expr| e.sort_by([col(T).filter(m.clone())], SortMultipleOptions::default());
    let f64t = DataType::Float64;
    let e = match a.agg {
        Agg::Count => m.clone().cast(f64t).sum(),
        Agg::CountDistinct => field().drop_nulls().n_unique().cast(f64t),
        Agg::Sum => exact_sum(field()),
        Agg::Mean => exact_mean(field()),
        Agg::Min => field().min().cast(f64t),
        Agg::Max => field().max().cast(f64t),
        Agg::First => by_time(field()).first().cast(f64t),
        Agg::Last => by_time(field()).last().cast(f64t),
        Agg::DaysSinceFirst => days(col(T).filter(m.clone()).min()),
        Agg::DaysSinceLast => days(col(T).filter(m.clone()).max()),
        Agg::ActiveDays => (col(T) / lit(MICROS_PER_DAY))
            .filter(m.clone())
            .n_unique()
            .cast(f64t),
        Agg::Share => {
            let all = mask(a, false);
            let (num, den) = match &a.field {
                Some(f) => (
                    exact_sum(col(f.as_str()).filter(m.clone())),
                    exact_sum(col(f.as_str()).filter(all)),
                ),
                None => (m.clone().cast(f64t.clone()).sum(), all.cast(f64t).sum()),
            };
            when(den.clone().eq(lit(0.0)))
                .then(lit(NULL).cast(DataType::Float64))
                .otherwise(num / den)
        }
        Agg::TopShare => unreachable!("computed in its own branch"),
    };
    e.alias(name)
}

/// `top_share`: per (customer, cutoff, value of `field`) weights, then the largest share.
fn top_share(name: &str, a: &Aggregate, rows: LazyFrame) -> LazyFrame {
    let field = a.field.as_deref().expect("validated");
    let weight = match &a.weight {
        Some(w) => fixed_point(col(w.as_str())).fill_null(lit(0i64)),
        None => lit(1i64),
    };
    rows.filter(mask(a, true).and(col(field).is_not_null()))
        .group_by([col(ev::CUSTOMER_ID), col(output::CUTOFF), col(field)])
        .agg([weight.sum().alias("_w")])
        // Floating-point sums depend on order: fix it, so that identical inputs give
        // identical bits whatever order the group-by emitted.
        .sort([ev::CUSTOMER_ID, output::CUTOFF, field], Default::default())
        .group_by([col(ev::CUSTOMER_ID), col(output::CUTOFF)])
        .agg([
            (col("_w").max().cast(DataType::Float64) / col("_w").sum().cast(DataType::Float64))
                .alias(name),
        ])
        .with_column(
            when(col(name).is_nan())
                .then(lit(NULL).cast(DataType::Float64))
                .otherwise(col(name))
                .alias(name),
        )
}

/// Sessions rebuilt at each cutoff from the events before it.
fn sessions_at_cutoffs(rows: LazyFrame) -> LazyFrame {
    let is = |t: EventType| col(ev::EVENT_TYPE).eq(lit(t.name()));
    let n = |t: EventType| is(t).cast(DataType::Float64).sum();
    rows.group_by([
        col(ev::CUSTOMER_ID),
        col(output::CUTOFF),
        col(ev::SESSION_ID),
    ])
    .agg([
        col(T).min().alias(T),
        len().cast(DataType::Float64).alias(sf::EVENTS),
        n(EventType::PageView).alias(sf::PAGE_VIEWS),
        n(EventType::Search).alias(sf::SEARCHES),
        n(EventType::CartAdd).alias(sf::CART_ADDS),
        ((col(T).max() - col(T).min()) / lit(1_000_000i64))
            .cast(DataType::Float64)
            .alias(sf::DURATION_S),
        is(EventType::CartAdd).any(true).alias(sf::HAS_CART_ADD),
        is(EventType::Search).any(true).alias(sf::HAS_SEARCH),
        is(EventType::Order)
            .or(is(EventType::OrderLine))
            .any(true)
            .alias(sf::HAS_ORDER),
    ])
    // A fixed session order, so that sums over sessions are bit-for-bit reproducible.
    .sort(
        [ev::CUSTOMER_ID, output::CUTOFF, T, ev::SESSION_ID],
        Default::default(),
    )
}

fn derived_expr(f: &FeatureDef, op: &DeriveOp, inputs: &[String]) -> Expr {
    let a = || col(inputs[0].as_str()).cast(DataType::Float64);
    let e = match op {
        DeriveOp::Ratio => {
            let b = col(inputs[1].as_str());
            when(b.clone().eq(lit(0.0)))
                .then(lit(NULL).cast(DataType::Float64))
                .otherwise(a() / b)
        }
        DeriveOp::Difference => a() - col(inputs[1].as_str()),
        DeriveOp::Log1p => (a() + lit(1.0)).log(lit(std::f64::consts::E)),
        DeriveOp::Clip { min, max } => {
            let mut e = a();
            if let Some(lo) = min {
                e = when(e.clone().lt(lit(*lo))).then(lit(*lo)).otherwise(e);
            }
            if let Some(hi) = max {
                e = when(e.clone().gt(lit(*hi))).then(lit(*hi)).otherwise(e);
            }
            e
        }
        DeriveOp::Bucket { bounds } => bounds
            .iter()
            .map(|b| a().gt_eq(lit(*b)).cast(DataType::Float64))
            .reduce(|x, y| x + y)
            .expect("validated: bounds not empty"),
    };
    e.cast(DataType::Float64).alias(f.name.as_str())
}

/// Computes every feature for every customer in the population at each cutoff, in one
/// lazy plan. Returns `customer_id`, `cutoff` (µs), then one Float64 column per feature in
/// definition order, sorted by cutoff and customer.
pub fn compute(
    events: &DataFrame,
    cutoffs: &[i64],
    set: &FeatureSet,
    population: Population,
) -> Result<LazyFrame> {
    let base = events
        .clone()
        .lazy()
        .select(columns_read(set).into_iter().map(col).collect::<Vec<_>>())
        .with_column(col(ev::TSTAMP).cast(DataType::Int64).alias(T));
    // One plan per cutoff, run one after the other: the rows of one cutoff are freed before
    // the next is cut, so memory holds the events and one cutoff's working set.
    let per_cutoff: Vec<LazyFrame> = cutoffs
        .iter()
        .map(|&t| compute_at(base.clone(), t, set, population))
        .collect();
    let lf = concat(
        per_cutoff,
        UnionArgs {
            parallel: false,
            ..Default::default()
        },
    )
    .ctx("feature snapshots")?;
    Ok(lf.sort([output::CUTOFF, ev::CUSTOMER_ID], Default::default()))
}

/// The event columns `set` reads: keys, time and type, the session of session aggregates,
/// and every field, weight and filter of event aggregates (session aggregates read only
/// sessions, built from those).
fn columns_read(set: &FeatureSet) -> Vec<String> {
    let mut out: Vec<String> = [ev::CUSTOMER_ID, ev::TSTAMP, ev::EVENT_TYPE]
        .map(String::from)
        .to_vec();
    for f in &set.features {
        match &f.kind {
            FeatureKind::Aggregate(a) if a.over == Over::Events => {
                out.extend(a.field.iter().chain(&a.weight).cloned());
                out.extend(a.filters.iter().map(|f| f.field.clone()));
            }
            FeatureKind::Aggregate(_) => out.push(ev::SESSION_ID.into()),
            FeatureKind::Derived { .. } => {}
        }
    }
    let mut seen = std::collections::HashSet::new();
    out.retain(|c| seen.insert(c.clone()));
    out
}

/// The features of every customer seen before cutoff `t` (µs), from `base`: the events with
/// their time in µs as `_t`.
fn compute_at(base: LazyFrame, t: i64, set: &FeatureSet, population: Population) -> LazyFrame {
    // Strictly before the cutoff: the only place where time is cut.
    let mut keep = col(T).lt(lit(t));
    if let Some(days) = set.max_lookback_days() {
        keep = keep.and(col(T).gt_eq(lit(t - days * MICROS_PER_DAY)));
    }
    let rows = base
        .filter(keep)
        .with_column(lit(t).alias(output::CUTOFF))
        .cache();
    let keys = [col(ev::CUSTOMER_ID), col(output::CUTOFF)];

    let mut event_aggs = vec![col(T).max().alias("_last_t")];
    let mut session_aggs = Vec::new();
    let mut branches = Vec::new();
    let mut fills = Vec::new();
    for f in &set.features {
        let FeatureKind::Aggregate(a) = &f.kind else {
            continue;
        };
        match (a.over, a.agg) {
            (_, Agg::TopShare) if a.over == Over::Events => {
                branches.push(top_share(&f.name, a, rows.clone()))
            }
            (Over::Events, _) => event_aggs.push(aggregate_expr(&f.name, a)),
            (Over::Sessions, Agg::TopShare) => {
                branches.push(top_share(&f.name, a, sessions_at_cutoffs(rows.clone())))
            }
            (Over::Sessions, _) => session_aggs.push(aggregate_expr(&f.name, a)),
        }
        let c = col(f.name.as_str());
        fills.push(match a.fill {
            Some(v) => c.fill_null(lit(v)),
            None => c,
        });
    }
    if !session_aggs.is_empty() {
        branches.push(
            sessions_at_cutoffs(rows.clone())
                .group_by(keys.clone())
                .agg(session_aggs),
        );
    }
    let mut lf = rows.group_by(keys.clone()).agg(event_aggs);
    for b in branches {
        lf = lf.join(b, keys.clone(), keys.clone(), JoinArgs::new(JoinType::Left));
    }
    if let Population::ActiveDays(days) = population {
        lf = lf.filter(col("_last_t").gt_eq(col(output::CUTOFF) - lit(days * MICROS_PER_DAY)));
    }
    lf = lf.with_columns(fills);
    // Derived features in definition order: each may use the ones above it.
    for f in &set.features {
        if let FeatureKind::Derived { op, inputs } = &f.kind {
            lf = lf.with_column(derived_expr(f, op, inputs));
        }
    }
    let mut order = vec![col(ev::CUSTOMER_ID), col(output::CUTOFF)];
    order.extend(set.features.iter().map(|f| col(f.name.as_str())));
    lf.select(order)
}

/// The outcome of one feature example.
#[derive(Debug, Clone)]
pub struct ExampleOutcome {
    pub feature: String,
    pub index: usize,
    pub expected: Option<f64>,
    pub got: Option<f64>,
}

impl ExampleOutcome {
    pub fn passed(&self) -> bool {
        match (self.expected, self.got) {
            (None, None) => true,
            (Some(e), Some(g)) => (e - g).abs() <= 1e-9 * e.abs().max(1.0),
            _ => false,
        }
    }
}

/// The canonical columns an example frame carries (missing fields are null).
fn example_frame(ex: &crate::config::Example) -> Result<DataFrame> {
    use crate::config::{EVENT_FIELDS, FieldType};
    let n = ex.events.len();
    let mut columns = vec![
        Column::new(ev::CUSTOMER_ID.into(), vec!["example"; n]),
        Column::new(
            ev::TSTAMP.into(),
            ex.events.iter().map(|e| e.at).collect::<Vec<_>>(),
        )
        .cast(&crate::util::utc())
        .ctx("example times")?,
        Column::new(
            ev::EVENT_TYPE.into(),
            ex.events
                .iter()
                .map(|e| e.event_type.name())
                .collect::<Vec<_>>(),
        ),
    ];
    for (name, t) in EVENT_FIELDS {
        let c = match (name, t) {
            (ev::SESSION_ID, _) => Column::new(
                name.into(),
                ex.events
                    .iter()
                    .map(|e| e.session.clone().or(Some("s1".into())))
                    .collect::<Vec<_>>(),
            ),
            (_, FieldType::Number) => Column::new(
                name.into(),
                ex.events
                    .iter()
                    .map(|e| e.numbers.get(name).copied())
                    .collect::<Vec<_>>(),
            ),
            _ => Column::new(
                name.into(),
                ex.events
                    .iter()
                    .map(|e| e.texts.get(name).cloned())
                    .collect::<Vec<_>>(),
            ),
        };
        columns.push(c);
    }
    DataFrame::new(n, columns).ctx("example events")
}

/// Runs every example of every feature in `set`.
pub fn check_examples(set: &FeatureSet) -> Result<Vec<ExampleOutcome>> {
    let mut out = Vec::new();
    for f in &set.features {
        let sub = set.closure(&f.name);
        for (index, ex) in f.examples.iter().enumerate() {
            let df = example_frame(ex)?;
            let got = compute(&df, &[ex.cutoff], &sub, Population::AllSeen)?
                .collect()
                .ctx(format!("example {index} of {}", f.name))?;
            let value = if got.height() == 0 {
                None
            } else {
                got.column(f.name.as_str())
                    .ctx("feature")?
                    .f64()
                    .ctx("feature")?
                    .get(0)
            };
            out.push(ExampleOutcome {
                feature: f.name.clone(),
                index,
                expected: ex.expect,
                got: value,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Source;
    use crate::util::utc;

    const DAY: i64 = MICROS_PER_DAY;

    /// (customer, event_type, time in µs, line_value, total_results)
    type Row<'a> = (&'a str, &'a str, i64, Option<f64>, Option<f64>);

    fn events(rows: &[Row]) -> DataFrame {
        let n = rows.len();
        DataFrame::new(
            n,
            vec![
                Column::new(
                    ev::CUSTOMER_ID.into(),
                    rows.iter().map(|r| r.0).collect::<Vec<_>>(),
                ),
                Column::new(
                    ev::EVENT_TYPE.into(),
                    rows.iter().map(|r| r.1).collect::<Vec<_>>(),
                ),
                Column::new(
                    ev::TSTAMP.into(),
                    rows.iter().map(|r| r.2).collect::<Vec<_>>(),
                )
                .cast(&utc())
                .unwrap(),
                Column::new(
                    ev::LINE_VALUE.into(),
                    rows.iter().map(|r| r.3).collect::<Vec<_>>(),
                ),
                Column::new(
                    ev::SEARCH_TOTAL_RESULTS.into(),
                    rows.iter().map(|r| r.4).collect::<Vec<_>>(),
                ),
                Column::new(
                    ev::ORDER_ID.into(),
                    rows.iter()
                        .map(|r| (r.1 == "order_line").then(|| format!("o{}", r.2)))
                        .collect::<Vec<_>>(),
                ),
            ],
        )
        .unwrap()
    }

    fn set(text: &str) -> FeatureSet {
        FeatureSet::parse(&Source::embedded("f.toml", text)).unwrap()
    }

    fn value(df: &DataFrame, customer: &str, feature: &str) -> Option<f64> {
        let row = df
            .clone()
            .lazy()
            .filter(col(ev::CUSTOMER_ID).eq(lit(customer)))
            .collect()
            .unwrap();
        row.column(feature).unwrap().f64().unwrap().get(0)
    }

    const DEFS: &str = r#"
[[feature]]
name = "pv_30d"
agg = "count"
events = ["page_view"]
window = "30d"
[[feature]]
name = "pv_all"
agg = "count"
events = ["page_view"]
[[feature]]
name = "spend"
agg = "sum"
field = "line_value"
events = ["order_line"]
[[feature]]
name = "aov"
agg = "mean"
field = "line_value"
events = ["order_line"]
[[feature]]
name = "max_line"
agg = "max"
field = "line_value"
[[feature]]
name = "min_line"
agg = "min"
field = "line_value"
[[feature]]
name = "orders"
agg = "count_distinct"
field = "order_id"
[[feature]]
name = "since_last"
agg = "days_since_last"
[[feature]]
name = "since_first"
agg = "days_since_first"
[[feature]]
name = "since_order"
agg = "days_since_last"
events = ["order_line"]
fill = 365
[[feature]]
name = "days"
agg = "active_days"
[[feature]]
name = "zero_searches"
agg = "count"
events = ["search"]
where = [{ field = "search_total_results", op = "==", value = 0 }]
[[feature]]
name = "spend_per_order"
derive = "ratio"
inputs = ["spend", "orders"]
[[feature]]
name = "log_pv"
derive = "log1p"
inputs = ["pv_all"]
[[feature]]
name = "first_line"
agg = "first"
field = "line_value"
events = ["order_line"]
[[feature]]
name = "spend_clipped"
derive = "clip"
inputs = ["spend"]
min = 5
max = 35
"#;

    #[test]
    fn hand_computed_values_and_window_boundaries() {
        let t = 100 * DAY;
        let df = events(&[
            // a: page view exactly at t - 30d (inside the 30d window), one 1µs earlier (outside),
            // one exactly at t (after the cutoff: never seen).
            ("a", "page_view", t - 30 * DAY, None, None),
            ("a", "page_view", t - 30 * DAY - 1, None, None),
            ("a", "page_view", t, None, None),
            ("a", "order_line", t - 10 * DAY, Some(30.0), None),
            ("a", "order_line", t - 2 * DAY, Some(10.0), None),
            ("a", "search", t - DAY, None, Some(0.0)),
            ("a", "search", t - DAY / 2, None, Some(12.0)),
            // b: a single page view 50 days back.
            ("b", "page_view", t - 50 * DAY, None, None),
        ]);
        let out = compute(&df, &[t], &set(DEFS), Population::AllSeen)
            .unwrap()
            .collect()
            .unwrap();
        assert_eq!(out.height(), 2);
        let v = |c, f| value(&out, c, f);
        assert_eq!(v("a", "pv_30d"), Some(1.0));
        assert_eq!(v("a", "pv_all"), Some(2.0));
        assert_eq!(v("a", "spend"), Some(40.0));
        assert_eq!(v("a", "aov"), Some(20.0));
        assert_eq!(v("a", "max_line"), Some(30.0));
        assert_eq!(v("a", "min_line"), Some(10.0));
        assert_eq!(v("a", "orders"), Some(2.0));
        assert_eq!(v("a", "since_last"), Some(0.5));
        assert!(
            (v("a", "since_first").unwrap() - (30.0 + 1.0 / MICROS_PER_DAY as f64)).abs() < 1e-9
        );
        assert_eq!(v("a", "since_order"), Some(2.0));
        assert_eq!(v("a", "days"), Some(5.0));
        assert_eq!(v("a", "zero_searches"), Some(1.0));
        assert_eq!(v("a", "spend_per_order"), Some(20.0));
        assert_eq!(v("a", "log_pv"), Some(3f64.ln()));
        assert_eq!(v("a", "first_line"), Some(30.0));
        assert_eq!(v("a", "spend_clipped"), Some(35.0));
        assert_eq!(v("b", "spend_clipped"), Some(5.0));
        assert_eq!(v("b", "first_line"), None);
        // Empty windows: counts and sums 0, means missing, recency filled.
        assert_eq!(v("b", "pv_30d"), Some(0.0));
        assert_eq!(v("b", "spend"), Some(0.0));
        assert_eq!(v("b", "aov"), None);
        assert_eq!(v("b", "since_order"), Some(365.0));
        assert_eq!(v("b", "spend_per_order"), None);
    }

    #[test]
    fn events_at_or_after_the_cutoff_never_change_features() {
        let t = 100 * DAY;
        let before = vec![
            ("a", "page_view", t - 3 * DAY, None, None),
            ("a", "order_line", t - 20 * DAY, Some(5.0), None),
            ("b", "search", t - DAY, None, Some(0.0)),
        ];
        let mut after = before.clone();
        // Events exactly at t and later, for known and new customers.
        after.push(("a", "order_line", t, Some(99.0), None));
        after.push(("a", "page_view", t + DAY, None, None));
        after.push(("b", "search", t + 1, None, Some(0.0)));
        after.push(("c", "page_view", t, None, None));
        let f = set(DEFS);
        let x = compute(&events(&before), &[t], &f, Population::AllSeen)
            .unwrap()
            .collect()
            .unwrap();
        let y = compute(&events(&after), &[t], &f, Population::AllSeen)
            .unwrap()
            .collect()
            .unwrap();
        assert!(x.equals_missing(&y), "{x}\n{y}");
    }
}
