//! Features: the definitions of `features/*.toml` compiled to polars expressions and
//! computed for every customer at every cutoff in one lazy plan. A feature at cutoff `t`
//! sees only events strictly before `t`; windows are `[t - N days, t)`.

use polars::prelude::*;

use crate::config::{
    Agg, DeriveOp, FeatureDef, FeatureKind, FeatureSet, Filter, FilterOp, FilterValue, Window,
};
use crate::error::{Context, Result};
use crate::schema::{event as ev, output};
use crate::util::MICROS_PER_DAY;

const T: &str = "_t";

fn filter_expr(f: &Filter) -> Expr {
    let c = col(f.field.as_str());
    let value = |v: &FilterValue| match v {
        FilterValue::Number(x) => lit(*x),
        FilterValue::Text(s) => lit(s.clone()),
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

/// The aggregation expression of one aggregate feature, evaluated per (customer, cutoff)
/// group over the events before the cutoff.
fn aggregate_expr(
    name: &str,
    agg: Agg,
    field: &Option<String>,
    events: &[crate::schema::EventType],
    window: Window,
    filters: &[Filter],
) -> Expr {
    let mut mask = lit(true);
    if !events.is_empty() {
        let names: Vec<&str> = events.iter().map(|t| t.name()).collect();
        let any = names
            .iter()
            .map(|n| col(ev::EVENT_TYPE).eq(lit(*n)))
            .reduce(|a, b| a.or(b))
            .expect("non-empty");
        mask = mask.and(any);
    }
    if let Window::Days(d) = window {
        mask = mask.and(col(T).gt_eq(col(output::CUTOFF) - lit(d * MICROS_PER_DAY)));
    }
    for f in filters {
        mask = mask.and(filter_expr(f));
    }
    let mask = mask.fill_null(lit(false));
    let field_col =
        || col(field.as_deref().expect("validated: field present")).filter(mask.clone());
    let days = |e: Expr| {
        (col(output::CUTOFF).first() - e).cast(DataType::Float64) / lit(MICROS_PER_DAY as f64)
    };
    let e = match agg {
        Agg::Count => mask.clone().cast(DataType::Float64).sum(),
        Agg::CountDistinct => field_col().drop_nulls().n_unique().cast(DataType::Float64),
        Agg::Sum => field_col().sum().cast(DataType::Float64),
        Agg::Mean => field_col().mean(),
        Agg::Min => field_col().min().cast(DataType::Float64),
        Agg::Max => field_col().max().cast(DataType::Float64),
        Agg::DaysSinceFirst => days(col(T).filter(mask.clone()).min()),
        Agg::DaysSinceLast => days(col(T).filter(mask.clone()).max()),
        Agg::ActiveDays => (col(T) / lit(MICROS_PER_DAY))
            .filter(mask.clone())
            .n_unique()
            .cast(DataType::Float64),
    };
    e.alias(name)
}

fn derived_expr(f: &FeatureDef, op: DeriveOp, inputs: &[String]) -> Expr {
    let a = || col(inputs[0].as_str());
    let e = match op {
        DeriveOp::Ratio => {
            let b = col(inputs[1].as_str());
            when(b.clone().eq(lit(0.0)))
                .then(lit(NULL).cast(DataType::Float64))
                .otherwise(a() / b)
        }
        DeriveOp::Difference => a() - col(inputs[1].as_str()),
        DeriveOp::Log1p => (a() + lit(1.0)).log(lit(std::f64::consts::E)),
    };
    e.cast(DataType::Float64).alias(f.name.as_str())
}

/// Computes every feature for every customer with events before each cutoff.
/// Returns `customer_id`, `cutoff` (µs), then one Float64 column per feature in
/// definition order, sorted by cutoff and customer.
pub fn compute(events: &DataFrame, cutoffs: &[i64], set: &FeatureSet) -> Result<LazyFrame> {
    let lookback = set.max_window_days();
    let base = events
        .clone()
        .lazy()
        .with_column(col(ev::TSTAMP).cast(DataType::Int64).alias(T));
    let per_cutoff: Vec<LazyFrame> = cutoffs
        .iter()
        .map(|&t| {
            // Strictly before the cutoff: the only place where time is cut.
            let mut keep = col(T).lt(lit(t));
            if let Some(days) = lookback {
                keep = keep.and(col(T).gt_eq(lit(t - days * MICROS_PER_DAY)));
            }
            base.clone()
                .filter(keep)
                .with_column(lit(t).alias(output::CUTOFF))
        })
        .collect();
    let mut aggs = Vec::new();
    let mut fills = Vec::new();
    for f in &set.features {
        if let FeatureKind::Aggregate {
            agg,
            field,
            events,
            window,
            filters,
            fill,
        } = &f.kind
        {
            aggs.push(aggregate_expr(
                &f.name, *agg, field, events, *window, filters,
            ));
            let c = col(f.name.as_str());
            fills.push(match fill {
                Some(v) => c.fill_null(lit(*v)),
                None => c,
            });
        }
    }
    let mut lf = concat(per_cutoff, UnionArgs::default())
        .ctx("feature snapshots")?
        .group_by([col(ev::CUSTOMER_ID), col(output::CUTOFF)])
        .agg(aggs)
        .with_columns(fills);
    // Derived features in definition order: each may use the ones above it.
    for f in &set.features {
        if let FeatureKind::Derived { op, inputs } = &f.kind {
            lf = lf.with_column(derived_expr(f, *op, inputs));
        }
    }
    let mut order = vec![col(ev::CUSTOMER_ID), col(output::CUTOFF)];
    order.extend(set.features.iter().map(|f| col(f.name.as_str())));
    Ok(lf
        .select(order)
        .sort([output::CUTOFF, ev::CUSTOMER_ID], Default::default()))
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
        let out = compute(&df, &[t], &set(DEFS)).unwrap().collect().unwrap();
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
        let x = compute(&events(&before), &[t], &f)
            .unwrap()
            .collect()
            .unwrap();
        let y = compute(&events(&after), &[t], &f)
            .unwrap()
            .collect()
            .unwrap();
        assert!(x.equals_missing(&y), "{x}\n{y}");
    }
}
