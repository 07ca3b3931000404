//! Features: the definitions of `features/*.toml` compiled to polars expressions and
//! computed for every customer at every cutoff from per-customer daily aggregates of the
//! events (`Daily`). A feature at cutoff `t` sees only events strictly before `t`; windows
//! are `[t - N days, t)`.

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
pub(crate) const SUM_SCALE: f64 = 1e6;

pub(crate) fn fixed_point(e: Expr) -> Expr {
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

/// The rows of a group an aggregate looks at (`expr`, never null), and whether that is every
/// row (`expr` is then the literal `true`).
#[derive(Clone)]
struct Mask {
    expr: Expr,
    every_row: bool,
}

impl Mask {
    /// The number of rows where the mask holds (Int64). Every row is `len()`: a literal is one
    /// value per group, not one per row, and summed in a group-by it gave one or the group's
    /// length depending on how polars planned the rest of the query.
    fn count(&self) -> Expr {
        if self.every_row {
            len().cast(DataType::Int64)
        } else {
            self.expr.clone().cast(DataType::Int64).sum()
        }
    }
}

/// The rows an aggregate looks at: its event types, then its window (with_window: false for
/// the daily aggregates, which a cutoff's window cuts later) and its `where` (with_filters:
/// false for the denominator of `share`).
fn mask(a: &Aggregate, with_window: bool, with_filters: bool) -> Mask {
    let mut m = events_expr(&a.events);
    if with_window {
        m = m.and(window_expr(a.window));
    }
    if with_filters {
        for f in &a.filters {
            m = m.and(filter_expr(f));
        }
    }
    Mask {
        expr: m.fill_null(lit(false)),
        every_row: a.events.is_empty()
            && (!with_window || a.window == Window::All)
            && (!with_filters || a.filters.is_empty()),
    }
}

/// The aggregation expression of one aggregate feature over one (customer, cutoff) group.
fn aggregate_expr(name: &str, a: &Aggregate) -> Expr {
    let rows = mask(a, true, true);
    let m = rows.expr.clone();
    let name_of_field = || a.field.as_deref().expect("validated: field present");
    // Filtered where the aggregation counts nulls (distinct values, a first or last by time);
    // else null outside the mask (`kept`).
    let field = || col(name_of_field()).filter(m.clone());
    let kept_field = || kept(col(name_of_field()), m.clone());
    let days = |e: Expr| {
        (col(output::CUTOFF).first() - e).cast(DataType::Float64) / lit(MICROS_PER_DAY as f64)
    };
    let by_time = |e: Expr| e.sort_by([col(T).filter(m.clone())], SortMultipleOptions::default());
    let f64t = DataType::Float64;
    let e = match a.agg {
        Agg::Count => rows.count().cast(f64t),
        Agg::CountDistinct => field().drop_nulls().n_unique().cast(f64t),
        Agg::Sum => exact_sum(kept_field()),
        Agg::Mean => exact_mean(kept_field()),
        Agg::Min => kept_field().min().cast(f64t),
        Agg::Max => kept_field().max().cast(f64t),
        Agg::First => by_time(field()).first().cast(f64t),
        Agg::Last => by_time(field()).last().cast(f64t),
        Agg::DaysSinceFirst => days(kept(col(T), m.clone()).min()),
        Agg::DaysSinceLast => days(kept(col(T), m.clone()).max()),
        Agg::ActiveDays => (col(T) / lit(MICROS_PER_DAY))
            .filter(m.clone())
            .n_unique()
            .cast(f64t),
        Agg::Share => {
            let all = mask(a, true, false);
            let (num, den) = match &a.field {
                Some(f) => (
                    exact_sum(kept(col(f.as_str()), m.clone())),
                    exact_sum(kept(col(f.as_str()), all.expr)),
                ),
                None => (rows.count().cast(f64t.clone()), all.count().cast(f64t)),
            };
            when(den.clone().eq(lit(0.0)))
                .then(lit(NULL).cast(DataType::Float64))
                .otherwise(num / den)
        }
        Agg::TopShare => unreachable!("computed in its own branch"),
    };
    e.alias(name)
}

/// A `top_share` value's weight in a group: its rows' `weight` (fixed point, missing as 0),
/// or its number of rows without one (`len()`, not a literal one summed: see `Mask::count`).
fn total_weight(a: &Aggregate) -> Expr {
    match &a.weight {
        Some(w) => fixed_point(col(w.as_str())).fill_null(lit(0i64)).sum(),
        None => len().cast(DataType::Int64),
    }
}

/// `top_share`: per (customer, value of `field`) weights, then the largest share (`rows` are
/// of one cutoff).
fn top_share(name: &str, a: &Aggregate, rows: LazyFrame) -> LazyFrame {
    let field = a.field.as_deref().expect("validated");
    let weights = rows
        .filter(mask(a, true, true).expr.and(col(field).is_not_null()))
        .group_by([col(ev::CUSTOMER_ID), col(field)])
        .agg([total_weight(a).alias(WEIGHT)]);
    largest_share(name, weights, field)
}

/// The largest share one value takes of a customer's weights at one cutoff: `weights` has one
/// row per (customer, `value`) with its integer weight `_w`.
fn largest_share(name: &str, weights: LazyFrame, value: &str) -> LazyFrame {
    weights
        // A fixed order, so that identical inputs give identical bits whatever order the
        // group-by emitted.
        .sort([ev::CUSTOMER_ID, value], Default::default())
        .group_by([col(ev::CUSTOMER_ID)])
        .agg([(col(WEIGHT).max().cast(DataType::Float64)
            / col(WEIGHT).sum().cast(DataType::Float64))
        .alias(name)])
        .with_column(
            when(col(name).is_nan())
                .then(lit(NULL).cast(DataType::Float64))
                .otherwise(col(name))
                .alias(name),
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

/// The last steps of a cutoff's features, whichever way the aggregates were computed: the
/// population rule (on `_last_t`), the `fill` values, the derived features in definition
/// order (each may use the ones above it), then the output columns.
fn finish(
    mut lf: LazyFrame,
    set: &FeatureSet,
    population: Population,
    fills: Vec<Expr>,
) -> LazyFrame {
    if let Population::ActiveDays(days) = population {
        lf = lf.filter(col("_last_t").gt_eq(col(output::CUTOFF) - lit(days * MICROS_PER_DAY)));
    }
    lf = lf.with_columns(fills);
    for f in &set.features {
        if let FeatureKind::Derived { op, inputs } = &f.kind {
            lf = lf.with_column(derived_expr(f, op, inputs));
        }
    }
    let mut order = vec![col(ev::CUSTOMER_ID), col(output::CUTOFF)];
    order.extend(set.features.iter().map(|f| col(f.name.as_str())));
    lf.select(order)
}

/// Day number (UTC) of an event: features are cut at midnights, so a day's events are all
/// before a cutoff or all at or after it.
const D: &str = "_d";

/// Computes every feature for every customer in the population at each cutoff (µs, each a
/// UTC midnight). The events are first reduced to per-customer daily aggregates (see
/// `Daily`); each cutoff's features then combine the days before it. Returns
/// `customer_id`, `cutoff` (µs), then one Float64 column per feature in definition order,
/// sorted by cutoff and customer.
pub fn compute(
    events: &DataFrame,
    cutoffs: &[i64],
    set: &FeatureSet,
    population: Population,
) -> Result<LazyFrame> {
    compute_from(&Daily::build(events, set)?, cutoffs, set, population)
}

/// [`compute`] from daily aggregates built (or combined) for `set`.
pub fn compute_from(
    daily: &Daily,
    cutoffs: &[i64],
    set: &FeatureSet,
    population: Population,
) -> Result<LazyFrame> {
    // Each cutoff's rows come in customer order (`Daily::at`): in order of cutoff, one after
    // the other, they are sorted without sorting the wide rows again.
    let mut cutoffs = cutoffs.to_vec();
    cutoffs.sort_unstable();
    cutoffs.dedup();
    let per_cutoff: Vec<LazyFrame> = cutoffs
        .iter()
        .map(|&t| daily.at(t, set, population))
        .collect();
    concat(
        per_cutoff,
        UnionArgs {
            parallel: false,
            ..Default::default()
        },
    )
    .ctx("feature snapshots")
}

/// Column `name` of the events, as text where the events hold it as a categorical
/// (`event::CATEGORICAL`).
fn text(name: &str) -> Expr {
    if ev::CATEGORICAL.contains(&name) {
        col(name).cast(DataType::String)
    } else {
        col(name)
    }
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
                if matches!(a.agg, Agg::First | Agg::Last) {
                    out.push(ev::EVENT_ID.into());
                }
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

/// `e` where `m` holds, null elsewhere. Sums, means, minima and maxima over it skip the other
/// rows as they would over `e.filter(m)`, but a filter inside a group-by regroups the rows of
/// every group, and masking does not (the features at every cutoff of the 10M run: 8 s
/// against 12 s).
fn kept(e: Expr, m: Expr) -> Expr {
    when(m).then(e).otherwise(lit(NULL))
}

/// `kept` by a window: all rows for `Window::All`.
fn kept_where(e: Expr, window: Window, in_window: Expr) -> Expr {
    match window {
        Window::All => e,
        Window::Range { .. } => kept(e, in_window),
    }
}

/// The column of partial aggregate `part` of the event feature at `index`.
fn partial(index: usize, part: &str) -> String {
    format!("_p{index}{part}")
}

/// Columns of the map `Daily::combine` renames customers by.
pub const RENAME_FROM: &str = "previous_id";
pub const RENAME_TO: &str = "customer_id";

/// `rows` with each `customer_id` that `rename` (`previous_id`, `customer_id`) lists as a
/// previous id replaced by its new one; the other rows as they are.
pub fn renamed(rows: LazyFrame, rename: Option<&DataFrame>) -> LazyFrame {
    match rename {
        Some(map) if map.height() > 0 => rows
            .join(
                map.clone().lazy().select([
                    col(RENAME_FROM).alias(ev::CUSTOMER_ID),
                    col(RENAME_TO).alias("_to"),
                ]),
                [col(ev::CUSTOMER_ID)],
                [col(ev::CUSTOMER_ID)],
                crate::util::left_join_ordered(),
            )
            .with_column(coalesce(&[col("_to"), col(ev::CUSTOMER_ID)]).alias(ev::CUSTOMER_ID))
            .drop(cols(["_to"])),
        _ => rows,
    }
}

/// The rows of every frame of `parts`, `renamed`.
pub fn all_renamed(parts: Vec<DataFrame>, rename: Option<&DataFrame>) -> Result<LazyFrame> {
    concat(
        parts
            .into_iter()
            .map(|df| renamed(df.lazy(), rename))
            .collect::<Vec<_>>(),
        UnionArgs::default(),
    )
    .ctx("combining per-customer aggregates")
}

/// How the partials of several rows of one (customer, day) combine into what `Daily::build`
/// gives for their events together: counts and fixed-point sums add up, minima and maxima
/// of minima and maxima, first and last values go with the earliest or latest (time, event
/// id).
fn partial_combiners(set: &FeatureSet) -> Vec<Expr> {
    let mut aggs = vec![col("_last_t").max()];
    for (i, f) in set.features.iter().enumerate() {
        let FeatureKind::Aggregate(a) = &f.kind else {
            continue;
        };
        if a.over == Over::Sessions {
            continue;
        }
        let p = |part: &str| col(partial(i, part));
        let named = |e: Expr, part: &str| e.alias(partial(i, part));
        // The value and event id of the row holding the earliest (latest) time, ties going to
        // the smaller (larger) event id.
        let timed = |part: &str, last: bool| {
            let at = p("t")
                .eq(if last { p("t").max() } else { p("t").min() })
                .fill_null(lit(false));
            let e = p(part)
                .filter(at.clone())
                .sort_by([p("k").filter(at)], SortMultipleOptions::default());
            named(if last { e.last() } else { e.first() }, part)
        };
        match a.agg {
            Agg::Count | Agg::ActiveDays => aggs.push(named(p("n").sum(), "n")),
            Agg::Sum => aggs.push(named(p("s").sum(), "s")),
            Agg::Mean => aggs.extend([named(p("s").sum(), "s"), named(p("c").sum(), "c")]),
            Agg::Share => aggs.extend([named(p("n").sum(), "n"), named(p("a").sum(), "a")]),
            Agg::Min => aggs.push(named(p("v").min(), "v")),
            Agg::Max => aggs.push(named(p("v").max(), "v")),
            Agg::DaysSinceFirst => aggs.push(named(p("t").min(), "t")),
            Agg::DaysSinceLast => aggs.push(named(p("t").max(), "t")),
            Agg::First => aggs.extend([
                named(p("t").min(), "t"),
                timed("v", false),
                timed("k", false),
            ]),
            Agg::Last => {
                aggs.extend([named(p("t").max(), "t"), timed("v", true), timed("k", true)])
            }
            Agg::CountDistinct | Agg::TopShare => {}
        }
    }
    aggs
}

/// Each event's place in (time, event id) order, in `Daily::build`.
const IN_TIME: &str = "_in_time";
const ROW: &str = "_row";

/// `daily` with the place in time (`IN_TIME`) that `Daily::build` aggregated under the names
/// of each first or last value and its event id replaced by the value and the id of the
/// event at that place: `in_time` lists the rows of `rows` in (time, event id) order.
fn with_values_in_time(
    mut daily: DataFrame,
    set: &FeatureSet,
    in_time: &IdxCa,
    rows: &DataFrame,
) -> Result<DataFrame> {
    for (i, f) in set.features.iter().enumerate() {
        let FeatureKind::Aggregate(a) = &f.kind else {
            continue;
        };
        if a.over != Over::Events || !matches!(a.agg, Agg::First | Agg::Last) {
            continue;
        }
        let field = a.field.as_deref().expect("validated: field present");
        for (part, source) in [("v", field), ("k", ev::EVENT_ID)] {
            let name = partial(i, part);
            let places = daily
                .column(&name)
                .ctx("daily aggregates")?
                .idx()
                .ctx("places in time")?;
            let at = in_time.take(places).ctx("places in time")?;
            let mut values = rows
                .column(source)
                .ctx("daily aggregates")?
                .take(&at)
                .ctx("values in time")?;
            if ev::CATEGORICAL.contains(&source) {
                values = values.cast(&DataType::String).ctx("values in time")?;
            }
            daily
                .with_column(values.with_name(name.into()))
                .ctx("values in time")?;
        }
    }
    Ok(daily)
}

/// Column of the distinct values (count_distinct) or value weights (top_share) of a feature.
const VALUE: &str = "_v";
const WEIGHT: &str = "_w";

/// Per-customer daily aggregates of the events, from which the features at any midnight are
/// combined exactly: counts and fixed-point sums add up, minima and maxima of minima and
/// maxima, first and last values travel with their times, distinct values and value weights
/// are kept per day, and sessions per (session, day). Days are never split by a cutoff, so a
/// feature combined from the days before `t` equals one computed from the events before `t`.
///
/// Daily aggregates of two sets of events combine into those of both (`combine`), which is
/// what lets a night add its events to the days kept from the nights before.
#[derive(Clone)]
pub struct Daily {
    /// One row per (customer, day): `_last_t` and the partials of every event aggregate.
    events: DataFrame,
    /// Per count_distinct or top_share event aggregate (by feature index): (customer, day,
    /// value[, weight]) rows.
    values: std::collections::BTreeMap<usize, DataFrame>,
    /// One row per (customer, session, day), when a feature is over sessions.
    sessions: Option<DataFrame>,
}

/// The file the one row per (customer, day) of `Daily` is kept in (`Daily::frames`).
pub const DAILY_EVENTS: &str = "daily_events.parquet";

impl Daily {
    /// The daily aggregates of `events` (canonical events with `customer_id` and, for
    /// features over sessions, `session_id`), sorted by their keys.
    pub fn build(events: &DataFrame, set: &FeatureSet) -> Result<Daily> {
        let read = events
            .clone()
            .lazy()
            .select(columns_read(set).into_iter().map(col).collect::<Vec<_>>())
            .with_column(col(ev::TSTAMP).cast(DataType::Int64).alias(T))
            .with_column((col(T) / lit(MICROS_PER_DAY)).alias(D));
        // A first or last value is the value of the row with the least or greatest (time,
        // event id) among its group's masked rows: each row's place in that order (`IN_TIME`)
        // is aggregated like any number, and the winners' values are gathered after the
        // group-by, instead of sorting each group's rows inside it (10M events: 2.6 s of the
        // daily aggregates' 4.4 s).
        let timed = set.features.iter().any(|f| {
            matches!(&f.kind, FeatureKind::Aggregate(a)
                if a.over == Over::Events && matches!(a.agg, Agg::First | Agg::Last))
        });
        let (base, in_time) = if timed {
            let mut rows = read.collect().ctx("daily aggregates")?;
            let in_time = rows
                .select([T, ev::EVENT_ID])
                .ctx("daily aggregates")?
                .with_row_index(ROW.into(), None)
                .ctx("daily aggregates")?
                .sort([T, ev::EVENT_ID], SortMultipleOptions::default())
                .ctx("ordering events in time")?
                .column(ROW)
                .ctx("ordering events in time")?
                .idx()
                .ctx("ordering events in time")?
                .rechunk()
                .into_owned();
            let mut place = vec![0 as IdxSize; rows.height()];
            for (k, row) in in_time.into_no_null_iter().enumerate() {
                place[row as usize] = k as IdxSize;
            }
            rows.with_column(IdxCa::from_vec(IN_TIME.into(), place).into_column())
                .ctx("ordering events in time")?;
            (rows.clone().lazy(), Some((in_time, rows)))
        } else {
            (read, None)
        };
        let base = base.cache();
        let keys = [col(ev::CUSTOMER_ID), col(D)];
        let mut aggs = vec![col(T).max().alias("_last_t")];
        let mut value_plans = Vec::new();
        let mut over_sessions = false;
        for (i, f) in set.features.iter().enumerate() {
            let FeatureKind::Aggregate(a) = &f.kind else {
                continue;
            };
            if a.over == Over::Sessions {
                over_sessions = true;
                continue;
            }
            let rows = mask(a, false, true);
            let m = rows.expr.clone();
            let field = || col(a.field.as_deref().expect("validated: field present"));
            // A field's values as the daily aggregates keep them: text, also where the events
            // hold a categorical.
            let value = || text(a.field.as_deref().expect("validated: field present"));
            let p = |part: &str| partial(i, part);
            // The place in time of the first (last) event, ties going to the smaller (larger)
            // event id whichever order the rows came in, under the names of its value and
            // id, which replace it after the group-by (`with_values_in_time`); the winner's
            // id travels with its value, so that days combine exactly (`combine`).
            let in_time = |last: bool| {
                let place = kept(col(IN_TIME), m.clone());
                if last { place.max() } else { place.min() }
            };
            match a.agg {
                Agg::Count | Agg::ActiveDays => aggs.push(rows.count().alias(p("n"))),
                Agg::Sum => aggs.push(kept(fixed_point(field()), m.clone()).sum().alias(p("s"))),
                Agg::Mean => aggs.extend([
                    kept(fixed_point(field()), m.clone()).sum().alias(p("s")),
                    kept(field(), m.clone()).count().alias(p("c")),
                ]),
                Agg::Min => aggs.push(kept(field(), m.clone()).min().alias(p("v"))),
                Agg::Max => aggs.push(kept(field(), m.clone()).max().alias(p("v"))),
                Agg::First | Agg::DaysSinceFirst => {
                    aggs.push(kept(col(T), m.clone()).min().alias(p("t")));
                    if a.agg == Agg::First {
                        aggs.push(in_time(false).alias(p("v")));
                        aggs.push(in_time(false).alias(p("k")));
                    }
                }
                Agg::Last | Agg::DaysSinceLast => {
                    aggs.push(kept(col(T), m.clone()).max().alias(p("t")));
                    if a.agg == Agg::Last {
                        aggs.push(in_time(true).alias(p("v")));
                        aggs.push(in_time(true).alias(p("k")));
                    }
                }
                Agg::Share => {
                    let all = mask(a, false, false);
                    match &a.field {
                        Some(f) => aggs.extend([
                            kept(fixed_point(col(f.as_str())), m.clone())
                                .sum()
                                .alias(p("n")),
                            kept(fixed_point(col(f.as_str())), all.expr)
                                .sum()
                                .alias(p("a")),
                        ]),
                        None => {
                            aggs.extend([rows.count().alias(p("n")), all.count().alias(p("a"))])
                        }
                    }
                }
                Agg::CountDistinct => value_plans.push((
                    i,
                    base.clone()
                        .filter(m.and(field().is_not_null()))
                        .select([col(ev::CUSTOMER_ID), col(D), value().alias(VALUE)])
                        .unique(None, UniqueKeepStrategy::Any),
                )),
                Agg::TopShare => value_plans.push((
                    i,
                    base.clone()
                        .filter(m.and(field().is_not_null()))
                        .group_by([col(ev::CUSTOMER_ID), col(D), value().alias(VALUE)])
                        .agg([total_weight(a).alias(WEIGHT)]),
                )),
            }
        }
        let mut laps = crate::util::Laps::start("daily aggregates");
        let mut events = base
            .clone()
            .group_by(keys)
            .agg(aggs)
            .collect()
            .ctx("daily aggregates")?;
        if let Some((in_time, rows)) = &in_time {
            events = with_values_in_time(events, set, in_time, rows)?;
        }
        laps.lap("by customer and day");
        let values = value_plans
            .into_iter()
            .map(|(i, lf)| Ok((i, lf.collect().ctx("daily distinct values")?)))
            .collect::<Result<_>>()?;
        laps.lap("distinct values");
        let sessions = if over_sessions {
            let is = |t: EventType| col(ev::EVENT_TYPE).eq(lit(t.name()));
            let n = |t: EventType| is(t).cast(DataType::Int64).sum();
            Some(
                base.group_by([col(ev::CUSTOMER_ID), col(ev::SESSION_ID), col(D)])
                    .agg([
                        col(T).min().alias("_first_t"),
                        col(T).max().alias("_last_t"),
                        len().cast(DataType::Int64).alias(sf::EVENTS),
                        n(EventType::PageView).alias(sf::PAGE_VIEWS),
                        n(EventType::Search).alias(sf::SEARCHES),
                        n(EventType::CartAdd).alias(sf::CART_ADDS),
                        is(EventType::CartAdd).any(true).alias(sf::HAS_CART_ADD),
                        is(EventType::Search).any(true).alias(sf::HAS_SEARCH),
                        is(EventType::Order)
                            .or(is(EventType::OrderLine))
                            .any(true)
                            .alias(sf::HAS_ORDER),
                    ])
                    .collect()
                    .ctx("daily sessions")?,
            )
        } else {
            None
        };
        laps.lap("sessions");
        let daily = Daily {
            events,
            values,
            sessions,
        }
        .sorted();
        laps.lap("sorted");
        daily
    }

    /// The keys each frame is sorted by (one row a key): the daily events', the values', the
    /// sessions'.
    const EVENT_KEYS: [&'static str; 2] = [ev::CUSTOMER_ID, D];
    const VALUE_KEYS: [&'static str; 3] = [ev::CUSTOMER_ID, D, VALUE];
    const SESSION_KEYS: [&'static str; 3] = [ev::CUSTOMER_ID, ev::SESSION_ID, D];

    /// Every frame sorted by its keys: one set of events gives one set of bytes.
    fn sorted(self) -> Result<Daily> {
        let sort = |df: DataFrame, keys: &[&str]| -> Result<DataFrame> {
            df.lazy()
                .sort(keys.to_vec(), Default::default())
                .collect()
                .ctx("sorting daily aggregates")
        };
        Ok(Daily {
            events: sort(self.events, &Self::EVENT_KEYS)?,
            values: self
                .values
                .into_iter()
                .map(|(i, df)| Ok((i, sort(df, &Self::VALUE_KEYS)?)))
                .collect::<Result<_>>()?,
            sessions: self
                .sessions
                .map(|df| sort(df, &Self::SESSION_KEYS))
                .transpose()?,
        })
    }

    /// The rows of `self` (those marked `util::KEEP`, as `split` leaves them) and of `other`,
    /// both sorted (`sorted`) and with no key in both, in key order: what `append` gives,
    /// merged without sorting again.
    pub fn merge(self, mut other: Daily) -> Result<Daily> {
        let merge = crate::util::merge_sorted;
        Ok(Daily {
            events: merge(self.events, other.events, &Self::EVENT_KEYS)?,
            values: self
                .values
                .into_iter()
                .map(|(i, df)| {
                    let theirs = other.values.remove(&i).expect("both built for one set");
                    Ok((i, merge(df, theirs, &Self::VALUE_KEYS)?))
                })
                .collect::<Result<_>>()?,
            sessions: match (self.sessions, other.sessions) {
                (Some(a), Some(b)) => Some(merge(a, b, &Self::SESSION_KEYS)?),
                (a, b) => a.or(b),
            },
        })
    }

    /// The daily aggregates of all the events of `parts` (each built for `set`): what
    /// `build` gives for their events together. With `rename` (`previous_id`,
    /// `customer_id`), the rows of a previous id become its new id's first (customers that
    /// identity merged).
    pub fn combine(
        parts: Vec<Daily>,
        set: &FeatureSet,
        rename: Option<&DataFrame>,
    ) -> Result<Daily> {
        let all = |frames: Vec<DataFrame>| all_renamed(frames, rename);
        let (events, values, sessions) = Daily::frames_of(parts);
        let events = all(events)?
            .group_by([col(ev::CUSTOMER_ID), col(D)])
            .agg(partial_combiners(set))
            .collect()
            .ctx("combining daily aggregates")?;
        let values = values
            .into_iter()
            .map(|(i, frames)| {
                let rows = all(frames)?;
                let FeatureKind::Aggregate(a) = &set.features[i].kind else {
                    unreachable!("values are kept for aggregates only")
                };
                let rows = if a.agg == Agg::TopShare {
                    rows.group_by([col(ev::CUSTOMER_ID), col(D), col(VALUE)])
                        .agg([col(WEIGHT).sum()])
                } else {
                    rows.unique(None, UniqueKeepStrategy::Any)
                };
                Ok((i, rows.collect().ctx("combining daily values")?))
            })
            .collect::<Result<_>>()?;
        let sessions = if sessions.is_empty() {
            None
        } else {
            let total = |c: &str| col(c).sum();
            Some(
                all(sessions)?
                    .group_by([col(ev::CUSTOMER_ID), col(ev::SESSION_ID), col(D)])
                    .agg([
                        col("_first_t").min(),
                        col("_last_t").max(),
                        total(sf::EVENTS),
                        total(sf::PAGE_VIEWS),
                        total(sf::SEARCHES),
                        total(sf::CART_ADDS),
                        col(sf::HAS_CART_ADD).any(true),
                        col(sf::HAS_SEARCH).any(true),
                        col(sf::HAS_ORDER).any(true),
                    ])
                    .collect()
                    .ctx("combining daily sessions")?,
            )
        };
        Daily {
            events,
            values,
            sessions,
        }
        .sorted()
    }

    /// Every frame through `f`, which keeps its columns and its order (a filter).
    pub fn map(self, f: impl Fn(DataFrame) -> Result<DataFrame>) -> Result<Daily> {
        Ok(Daily {
            events: f(self.events)?,
            values: self
                .values
                .into_iter()
                .map(|(i, df)| Ok((i, f(df)?)))
                .collect::<Result<_>>()?,
            sessions: self.sessions.map(&f).transpose()?,
        })
    }

    /// The (customer, day) pairs here: every event's, one row each.
    pub fn days(&self) -> Result<DataFrame> {
        self.events
            .select([ev::CUSTOMER_ID, D])
            .ctx("daily customers")
    }

    /// (the rows of the (customer, day) pairs in `days` (a `days()` frame) and of every day
    /// of the customers in `customers`, all rows with the others marked `util::KEEP`), each in
    /// the order of `self`: `merge` puts rows combined from the first back into the second.
    pub fn split(self, days: &DataFrame, customers: &Series) -> Result<(Daily, Daily)> {
        let split = |df: DataFrame| -> Result<(DataFrame, DataFrame)> {
            let taken = Self::taken(&df, days, customers)?;
            crate::util::split_marked(df, &taken)
        };
        let (events_in, events_out) = split(self.events)?;
        let mut values_in = std::collections::BTreeMap::new();
        let mut values_out = std::collections::BTreeMap::new();
        for (i, df) in self.values {
            let (a, b) = split(df)?;
            values_in.insert(i, a);
            values_out.insert(i, b);
        }
        let (sessions_in, sessions_out) = match self.sessions.map(split).transpose()? {
            Some((a, b)) => (Some(a), Some(b)),
            None => (None, None),
        };
        Ok((
            Daily {
                events: events_in,
                values: values_in,
                sessions: sessions_in,
            },
            Daily {
                events: events_out,
                values: values_out,
                sessions: sessions_out,
            },
        ))
    }

    /// The rows of `self` but those `split` would take for `days` and `customers`.
    pub fn without(self, days: &DataFrame, customers: &Series) -> Result<Daily> {
        self.map(|df| {
            let taken = Self::taken(&df, days, customers)?;
            df.filter(&!&taken).ctx("daily aggregates")
        })
    }

    /// True on the rows of `df` (a daily frame) of the (customer, day) pairs in `days` and of
    /// the customers in `customers`.
    fn taken(df: &DataFrame, days: &DataFrame, customers: &Series) -> Result<BooleanChunked> {
        const AGAIN: &str = "_again";
        let marked = df
            .select([ev::CUSTOMER_ID, D])
            .ctx("splitting daily aggregates")?
            .lazy()
            .join(
                days.clone().lazy().with_column(lit(true).alias(AGAIN)),
                [col(ev::CUSTOMER_ID), col(D)],
                [col(ev::CUSTOMER_ID), col(D)],
                crate::util::left_join_ordered(),
            )
            .select([col(AGAIN)
                .is_not_null()
                .or(col(ev::CUSTOMER_ID).is_in(lit(customers.clone()).implode(false), false))])
            .collect()
            .ctx("splitting daily aggregates")?;
        Ok(marked
            .column(AGAIN)
            .ctx("splitting daily aggregates")?
            .bool()
            .ctx("splitting daily aggregates")?
            .rechunk()
            .into_owned())
    }

    /// The number of (customer, day) rows.
    pub fn days_count(&self) -> usize {
        self.events.height()
    }

    /// The customers with days here (every event has a day in `events`).
    pub fn customer_ids(&self) -> Result<Series> {
        self.events
            .column(ev::CUSTOMER_ID)
            .ctx("daily customers")?
            .as_materialized_series()
            .unique()
            .ctx("daily customers")
    }

    /// The frames of `parts`, frame by frame: the daily events, the values by feature, the
    /// sessions.
    fn frames_of(
        parts: Vec<Daily>,
    ) -> (
        Vec<DataFrame>,
        std::collections::BTreeMap<usize, Vec<DataFrame>>,
        Vec<DataFrame>,
    ) {
        let mut events = Vec::new();
        let mut values: std::collections::BTreeMap<usize, Vec<DataFrame>> = Default::default();
        let mut sessions = Vec::new();
        for part in parts {
            events.push(part.events);
            for (i, df) in part.values {
                values.entry(i).or_default().push(df);
            }
            sessions.extend(part.sessions);
        }
        (events, values, sessions)
    }

    /// The rows of all `parts`, whose customers are distinct, sorted.
    pub fn append(parts: Vec<Daily>) -> Result<Daily> {
        let stack = |frames: Vec<DataFrame>| -> Result<DataFrame> {
            concat(
                frames.into_iter().map(|f| f.lazy()).collect::<Vec<_>>(),
                UnionArgs::default(),
            )
            .ctx("appending daily aggregates")?
            .collect()
            .ctx("appending daily aggregates")
        };
        let (events, values, sessions) = Daily::frames_of(parts);
        Daily {
            events: stack(events)?,
            values: values
                .into_iter()
                .map(|(i, frames)| Ok((i, stack(frames)?)))
                .collect::<Result<_>>()?,
            sessions: if sessions.is_empty() {
                None
            } else {
                Some(stack(sessions)?)
            },
        }
        .sorted()
    }

    /// The first day (UTC) with an event.
    pub fn first_day(&self) -> Result<Option<chrono::NaiveDate>> {
        let day = self
            .events
            .column(D)
            .ctx("daily days")?
            .as_materialized_series()
            .min::<i64>()
            .ctx("daily days")?;
        Ok(day.map(|d| {
            chrono::DateTime::from_timestamp_micros(d * MICROS_PER_DAY)
                .expect("a day in range")
                .date_naive()
        }))
    }

    /// The frames, each with the file name it is kept under.
    pub fn frames(&self) -> Vec<(String, &DataFrame)> {
        let mut out = vec![(DAILY_EVENTS.to_string(), &self.events)];
        out.extend(
            self.values
                .iter()
                .map(|(i, df)| (format!("daily_values_{i}.parquet"), df)),
        );
        out.extend(
            self.sessions
                .iter()
                .map(|df| ("daily_sessions.parquet".to_string(), df)),
        );
        out
    }

    /// Reads the frames `frames` wrote into `dir`, for `set`.
    pub fn read(dir: &std::path::Path, set: &FeatureSet) -> Result<Daily> {
        Daily::read_with(set, |name| crate::util::read_parquet(&dir.join(name)))
    }

    /// The frames of `set` (by the file names `frames` gives them), each from `read`.
    pub fn read_with(
        set: &FeatureSet,
        mut read: impl FnMut(String) -> Result<DataFrame>,
    ) -> Result<Daily> {
        let mut values = std::collections::BTreeMap::new();
        let mut over_sessions = false;
        for (i, f) in set.features.iter().enumerate() {
            if let FeatureKind::Aggregate(a) = &f.kind {
                over_sessions |= a.over == Over::Sessions;
                if a.over == Over::Events && matches!(a.agg, Agg::CountDistinct | Agg::TopShare) {
                    values.insert(i, read(format!("daily_values_{i}.parquet"))?);
                }
            }
        }
        Ok(Daily {
            events: read(DAILY_EVENTS.into())?,
            values,
            sessions: if over_sessions {
                Some(read("daily_sessions.parquet".into())?)
            } else {
                None
            },
        })
    }

    /// The features at cutoff `t` (a UTC midnight, µs) from the days before it, one row per
    /// customer with days before it, in customer order.
    fn at(&self, t: i64, set: &FeatureSet, population: Population) -> LazyFrame {
        assert_eq!(t.rem_euclid(MICROS_PER_DAY), 0, "cutoffs are midnights");
        let today = t.div_euclid(MICROS_PER_DAY);
        // Strictly before the cutoff: the only place where time is cut.
        let mut keep = col(D).lt(lit(today));
        if let Some(days) = set.max_lookback_days() {
            keep = keep.and(col(D).gt_eq(lit(today - days)));
        }
        let in_window = |w: Window| match w {
            Window::All => lit(true),
            Window::Range { from_days, to_days } => col(D)
                .gt_eq(lit(today - from_days))
                .and(col(D).lt(lit(today - to_days))),
        };
        // One cutoff: its rows are grouped by customer alone (one key hashes and compares
        // faster than two), and the cutoff joins the result at the end.
        let keys = [col(ev::CUSTOMER_ID)];
        let days_rows = |df: &DataFrame| {
            df.clone()
                .lazy()
                .filter(keep.clone())
                .with_column(lit(t).alias(output::CUTOFF))
        };

        let mut event_aggs = vec![col("_last_t").max()];
        let mut branches = Vec::new();
        let mut session_aggs = Vec::new();
        let mut fills = Vec::new();
        let mut none_is_zero = Vec::new();
        // Sessions at this cutoff, rebuilt once for every feature over sessions.
        let sessions = self
            .sessions
            .as_ref()
            .map(|s| Self::sessions_at(s, &days_rows).cache());
        for (i, f) in set.features.iter().enumerate() {
            let FeatureKind::Aggregate(a) = &f.kind else {
                continue;
            };
            let name = f.name.as_str();
            let c = col(name);
            fills.push(match a.fill {
                Some(v) => c.fill_null(lit(v)),
                None => c,
            });
            if a.over == Over::Sessions {
                match a.agg {
                    Agg::TopShare => branches.push(top_share(
                        name,
                        a,
                        sessions
                            .clone()
                            .expect("built when a feature is over sessions"),
                    )),
                    _ => session_aggs.push(aggregate_expr(name, a)),
                }
                continue;
            }
            let w = in_window(a.window);
            let p = |part: &str| kept_where(col(partial(i, part)), a.window, w.clone());
            let f64t = DataType::Float64;
            let sum = |part: &str| p(part).sum().cast(f64t.clone());
            let exact = |part: &str| sum(part) / lit(SUM_SCALE);
            let days = |e: Expr| {
                (col(output::CUTOFF).first() - e).cast(DataType::Float64)
                    / lit(MICROS_PER_DAY as f64)
            };
            let null_if_zero = |n: Expr, v: Expr| {
                when(n.clone().eq(lit(0.0)))
                    .then(lit(NULL).cast(DataType::Float64))
                    .otherwise(v)
            };
            // The value of the first (last) day in the window with one: a customer's rows are
            // in day order, and so is the day's time. The days without are filtered out before
            // the group-by, not inside it, where a filter regroups every group's rows (10M
            // events: 1.3 s of the features at every cutoff).
            let timed = |last: bool| {
                let known = w.clone().and(col(partial(i, "t")).is_not_null());
                let v = col(partial(i, "v"));
                days_rows(&self.events)
                    .filter(known)
                    .group_by_stable(keys.clone())
                    .agg([if last { v.last() } else { v.first() }
                        .cast(DataType::Float64)
                        .alias(name)])
            };
            let e = match a.agg {
                Agg::Count => sum("n"),
                Agg::ActiveDays => p("n").gt(lit(0)).sum().cast(f64t),
                Agg::Sum => exact("s"),
                Agg::Mean => null_if_zero(sum("c"), exact("s") / sum("c")),
                Agg::Min => p("v").min().cast(f64t),
                Agg::Max => p("v").max().cast(f64t),
                Agg::First | Agg::Last => {
                    branches.push(timed(a.agg == Agg::Last));
                    continue;
                }
                Agg::DaysSinceFirst => days(p("t").min()),
                Agg::DaysSinceLast => days(p("t").max()),
                Agg::Share => {
                    let (num, den) = if a.field.is_some() {
                        (exact("n"), exact("a"))
                    } else {
                        (sum("n"), sum("a"))
                    };
                    null_if_zero(den.clone(), num / den)
                }
                Agg::CountDistinct | Agg::TopShare => {
                    let values = &self.values[&i];
                    let rows = days_rows(values).filter(w.clone());
                    branches.push(if a.agg == Agg::CountDistinct {
                        // A seen customer without any value in the window has none distinct.
                        none_is_zero.push(col(name).fill_null(lit(0.0)));
                        rows.group_by(keys.clone())
                            .agg([col(VALUE).n_unique().cast(DataType::Float64).alias(name)])
                    } else {
                        largest_share(
                            name,
                            rows.group_by([col(ev::CUSTOMER_ID), col(VALUE)])
                                .agg([col(WEIGHT).sum()]),
                            VALUE,
                        )
                    });
                    continue;
                }
            };
            event_aggs.push(e.alias(name));
        }
        if !session_aggs.is_empty() {
            branches.push(
                sessions
                    .expect("built when a feature is over sessions")
                    .group_by(keys.clone())
                    .agg(session_aggs),
            );
        }
        // In customer order: the daily rows are sorted by customer, a stable group-by keeps
        // their order, and so do the joins.
        let mut lf = days_rows(&self.events)
            .group_by_stable(keys.clone())
            .agg(event_aggs);
        for b in branches {
            lf = lf.join(
                b,
                keys.clone(),
                keys.clone(),
                crate::util::left_join_ordered(),
            );
        }
        if !none_is_zero.is_empty() {
            lf = lf.with_columns(none_is_zero);
        }
        finish(
            lf.with_column(lit(t).alias(output::CUTOFF)),
            set,
            population,
            fills,
        )
    }

    /// The sessions at a cutoff rebuilt from their days before it (`days_rows` keeps those
    /// of the daily `sessions`): a session running over the cutoff counts its events before
    /// it, as one rebuilt from those events would.
    fn sessions_at(sessions: &DataFrame, days_rows: &dyn Fn(&DataFrame) -> LazyFrame) -> LazyFrame {
        let total = |c: &str| col(c).sum().cast(DataType::Float64);
        let duration = |first: Expr, last: Expr| {
            ((last - first) / lit(1_000_000i64))
                .cast(DataType::Float64)
                .alias(sf::DURATION_S)
        };
        // Almost every session has one day before the cutoff: those rows are the session as
        // they stand, and only the others are grouped (the rows are sorted by customer,
        // session and day, so one session's days are neighbours).
        let rows = days_rows(sessions).cache();
        let same = |offset: i64| {
            col(ev::CUSTOMER_ID)
                .eq(col(ev::CUSTOMER_ID).shift(lit(offset)))
                .and(col(ev::SESSION_ID).eq(col(ev::SESSION_ID).shift(lit(offset))))
                .fill_null(lit(false))
        };
        const SPREAD: &str = "_spread";
        let rows = rows.with_column(same(1).or(same(-1)).alias(SPREAD)).cache();
        let single = rows.clone().filter(col(SPREAD).not()).select([
            col(ev::CUSTOMER_ID),
            col(ev::SESSION_ID),
            col(output::CUTOFF),
            col("_first_t").alias(T),
            col(sf::EVENTS).cast(DataType::Float64),
            col(sf::PAGE_VIEWS).cast(DataType::Float64),
            col(sf::SEARCHES).cast(DataType::Float64),
            col(sf::CART_ADDS).cast(DataType::Float64),
            duration(col("_first_t"), col("_last_t")),
            col(sf::HAS_CART_ADD).fill_null(lit(false)),
            col(sf::HAS_SEARCH).fill_null(lit(false)),
            col(sf::HAS_ORDER).fill_null(lit(false)),
        ]);
        // One cutoff: grouped without it (two keys hash and compare faster than three).
        let spread = rows
            .filter(col(SPREAD))
            .group_by([col(ev::CUSTOMER_ID), col(ev::SESSION_ID)])
            .agg([
                col(output::CUTOFF).first(),
                col("_first_t").min().alias(T),
                total(sf::EVENTS).alias(sf::EVENTS),
                total(sf::PAGE_VIEWS).alias(sf::PAGE_VIEWS),
                total(sf::SEARCHES).alias(sf::SEARCHES),
                total(sf::CART_ADDS).alias(sf::CART_ADDS),
                duration(col("_first_t").min(), col("_last_t").max()),
                col(sf::HAS_CART_ADD).any(true),
                col(sf::HAS_SEARCH).any(true),
                col(sf::HAS_ORDER).any(true),
            ]);
        concat([single, spread], UnionArgs::default())
            .expect("frames of the same columns")
            // A fixed session order, so that sums over sessions are bit-for-bit reproducible.
            .sort([ev::CUSTOMER_ID, T, ev::SESSION_ID], Default::default())
    }
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

/// The first engine, kept as the reference the daily aggregates are checked against: every
/// feature computed straight from the events before each cutoff (one copy of the events per
/// cutoff; simple and slow).
#[cfg(test)]
pub(crate) mod reference {
    use super::*;

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
        let per_cutoff: Vec<LazyFrame> = cutoffs
            .iter()
            .map(|&t| compute_at(base.clone(), t, set, population))
            .collect();
        Ok(concat(per_cutoff, UnionArgs::default())
            .ctx("feature snapshots")?
            .sort([output::CUTOFF, ev::CUSTOMER_ID], Default::default()))
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
        let keys = [col(ev::CUSTOMER_ID)];

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
        finish(
            lf.with_column(lit(t).alias(output::CUTOFF)),
            set,
            population,
            fills,
        )
    }
}

#[cfg(test)]
pub(crate) mod tests {
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
                    ev::EVENT_ID.into(),
                    (0..n).map(|i| format!("e{i}")).collect::<Vec<_>>(),
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
[[feature]]
name = "every_event"
agg = "count"
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
        // A count with no event type, window or `where` counts every row of a group (the
        // literal `true` summed in a group-by would be one).
        assert_eq!(v("a", "every_event"), Some(6.0));
        assert_eq!(v("b", "every_event"), Some(1.0));
        assert_eq!(v("b", "first_line"), None);
        // Empty windows: counts and sums 0, means missing, recency filled.
        assert_eq!(v("b", "pv_30d"), Some(0.0));
        assert_eq!(v("b", "spend"), Some(0.0));
        assert_eq!(v("b", "aov"), None);
        assert_eq!(v("b", "since_order"), Some(365.0));
        assert_eq!(v("b", "spend_per_order"), None);
    }

    #[test]
    fn a_top_share_without_a_weight_weighs_each_value_by_its_events() {
        let t = 100 * DAY;
        let rows: Vec<Row> = [0.0, 0.0, 12.0, 0.0]
            .iter()
            .enumerate()
            .map(|(k, &n)| ("c", "search", t - DAY - k as i64, None, Some(n)))
            .collect();
        let features = set(
            "[[feature]]\nname = \"top_results\"\nagg = \"top_share\"\nfield = \"search_total_results\"\nwindow = \"30d\"\n",
        );
        let out = compute(&events(&rows), &[t], &features, Population::AllSeen)
            .unwrap()
            .collect()
            .unwrap();
        // Three of the four searches found nothing.
        assert_eq!(value(&out, "c", "top_results"), Some(0.75));
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

    /// Random events over 70 days: 40 customers, every event type, fields with nulls,
    /// sessions that run over midnight, distinct times (first/last are then unambiguous).
    pub(crate) fn random_events(seed: u64) -> DataFrame {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let types: Vec<&str> = EventType::ALL.iter().map(|t| t.name()).collect();
        let n = 4000;
        let mut times: Vec<i64> = (0..n)
            .map(|_| rng.random_range(0..70 * DAY) + 1000 * DAY)
            .collect();
        times.sort();
        times.dedup();
        let n = times.len();
        let customer: Vec<String> = (0..n)
            .map(|_| format!("c{}", rng.random_range(0..40)))
            .collect();
        let session: Vec<String> = (0..n)
            .map(|i| {
                format!(
                    "{}-s{}",
                    customer[i],
                    times[i] / (DAY / 3) + rng.random_range(0..2)
                )
            })
            .collect();
        let kind: Vec<&str> = (0..n)
            .map(|_| types[rng.random_range(0..types.len())])
            .collect();
        let maybe =
            |rng: &mut rand_chacha::ChaCha8Rng, p: f64, v: f64| rng.random_bool(p).then_some(v);
        let line: Vec<Option<f64>> = (0..n)
            .map(|_| {
                let v = (rng.random_range(1..10_000) as f64) / 100.0;
                maybe(&mut rng, 0.7, v)
            })
            .collect();
        let results: Vec<Option<f64>> = (0..n)
            .map(|_| {
                let v = rng.random_range(0..3) as f64;
                maybe(&mut rng, 0.6, v)
            })
            .collect();
        let order: Vec<Option<String>> = (0..n)
            .map(|i| {
                rng.random_bool(0.5)
                    .then(|| format!("o{}", times[i] / DAY % 7))
            })
            .collect();
        let category: Vec<Option<String>> = (0..n)
            .map(|_| {
                rng.random_bool(0.8)
                    .then(|| format!("k{}", rng.random_range(0..4)))
            })
            .collect();
        let mut df = DataFrame::new(
            n,
            vec![
                Column::new(ev::CUSTOMER_ID.into(), customer),
                Column::new(ev::EVENT_TYPE.into(), kind),
                Column::new(ev::TSTAMP.into(), times).cast(&utc()).unwrap(),
                Column::new(ev::SESSION_ID.into(), session),
                Column::new(ev::LINE_VALUE.into(), line.clone()),
                Column::new(ev::ORDER_TOTAL.into(), line),
                Column::new(ev::SEARCH_TOTAL_RESULTS.into(), results),
                Column::new(ev::ORDER_ID.into(), order),
                Column::new(ev::CATEGORY.into(), category),
            ],
        )
        .unwrap();
        // Every other canonical field, null: the default feature set reads some of them.
        for (name, t) in crate::config::EVENT_FIELDS {
            if df.column(name).is_err() {
                let dt = match t {
                    crate::config::FieldType::Number => DataType::Float64,
                    _ => DataType::String,
                };
                df.with_column(Column::full_null(name.into(), n, &dt))
                    .unwrap();
            }
        }
        df
    }

    #[test]
    fn daily_aggregates_give_the_features_of_the_events_themselves() {
        // The default features and a count of every event (its mask is the literal `true`).
        let default_set = FeatureSet::parse(&Source::embedded(
            "default.toml",
            &format!(
                "{}\n[[feature]]\nname = \"every_event\"\nagg = \"count\"\n",
                include_str!("../features/default.toml")
            ),
        ))
        .unwrap();
        let extra = set(&format!(
            "{DEFS}{}",
            r#"
[[feature]]
name = "top_category"
agg = "top_share"
field = "category"
weight = "line_value"
window = "30d"
[[feature]]
name = "last_line"
agg = "last"
field = "line_value"
window = "7d"
[[feature]]
name = "line_share"
agg = "share"
field = "line_value"
events = ["order_line", "cart_add"]
where = [{ field = "line_value", op = ">", value = 20 }]
[[feature]]
name = "search_share"
agg = "share"
events = ["search"]
where = [{ field = "search_total_results", op = "==", value = 0 }]
window = "60d..30d"
[[feature]]
name = "categories"
agg = "count_distinct"
field = "category"
window = "14d"
[[feature]]
name = "long_sessions"
agg = "count"
over = "sessions"
where = [{ field = "duration_s", op = ">", value = 3600 }]
[[feature]]
name = "session_top"
agg = "top_share"
over = "sessions"
field = "has_search"
[[feature]]
name = "k1_lines"
agg = "count"
where = [{ field = "category", op = "==", value = "k1" }, { field = "category", op = "!=", value = "k9" }]
"#
        ));
        let cutoffs: Vec<i64> = [1010, 1031, 1032, 1055, 1070, 1075]
            .iter()
            .map(|d| d * DAY)
            .collect();
        for seed in [1, 2, 3] {
            let events = random_events(seed);
            for (name, features) in [("default", &default_set), ("extra", &extra)] {
                for population in [Population::AllSeen, Population::ActiveDays(20)] {
                    let daily = compute(&events, &cutoffs, features, population)
                        .unwrap()
                        .collect()
                        .unwrap();
                    let direct = reference::compute(&events, &cutoffs, features, population)
                        .unwrap()
                        .collect()
                        .unwrap();
                    assert!(daily.height() > 100, "{name}: {}", daily.height());
                    assert!(
                        daily.equals_missing(&direct),
                        "seed {seed}, {name}, {population:?}:\n{daily}\n{direct}"
                    );
                    // The same from the events as ingest holds them (categoricals), and
                    // daily aggregates that keep text, as the history kept by earlier
                    // versions does.
                    let held = crate::util::categorical(events.clone()).unwrap();
                    assert!(held.column(ev::CATEGORY).unwrap().dtype().is_categorical());
                    for values in Daily::build(&held, features).unwrap().values.values() {
                        assert_eq!(values.column(VALUE).unwrap().dtype(), &DataType::String);
                    }
                    let from_held = compute(&held, &cutoffs, features, population)
                        .unwrap()
                        .collect()
                        .unwrap();
                    assert!(
                        from_held.equals_missing(&daily),
                        "seed {seed}, {name}, {population:?}, categoricals:\n{from_held}\n{daily}"
                    );
                }
            }
        }
    }
}
