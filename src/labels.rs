//! Labels: snapshots at cutoffs `t1 < t2 < ... <= as-of`. `label(c, t) = 1` when customer
//! `c` places an order in `[t, t + horizon)`. The validation cutoff is the latest one whose
//! label window is complete (`as-of - horizon`); training cutoffs end a full horizon before
//! it, so no training label window overlaps the validation one (honest out-of-time).

use chrono::{Duration, NaiveDate};
use polars::prelude::*;

use crate::config::{LabelDef, ModelDef};
use crate::error::{Context, ModelError, Result};
use crate::schema::{event as ev, output};
use crate::util::{MICROS_PER_DAY, date_to_micros};

/// The cutoffs of one run.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Cutoffs {
    /// Oldest first.
    pub training: Vec<NaiveDate>,
    pub validation: NaiveDate,
    /// The as-of date: features for scoring, no label.
    pub scoring: NaiveDate,
}

impl Cutoffs {
    /// Plans the cutoffs for events starting on `first_event` and a run as of `as_of`.
    pub fn plan(first_event: NaiveDate, as_of: NaiveDate, def: &ModelDef) -> Result<Cutoffs> {
        let horizon = Duration::days(def.horizon_days);
        let earliest = first_event + Duration::days(def.min_history_days);
        let validation = as_of - horizon;
        let mut training: Vec<NaiveDate> = (0..def.training_cutoffs as i64)
            .map(|k| validation - horizon - Duration::days(k * def.step_days))
            .filter(|t| *t >= earliest)
            .collect();
        training.reverse();
        if training.is_empty() {
            return Err(ModelError::Ineligible {
                what: "training cutoffs",
                found: 0,
                needed: 1,
                hint: format!(
                    "events start {first_event}; a training cutoff needs {} days of history and two horizons \
                     of {} days before the as-of date {as_of}, so the data must start by {}",
                    def.min_history_days,
                    def.horizon_days,
                    validation - horizon - Duration::days(def.min_history_days)
                ),
            }
            .into());
        }
        Ok(Cutoffs {
            training,
            validation,
            scoring: as_of,
        })
    }

    /// Every cutoff, oldest first, as microseconds.
    pub fn all_micros(&self) -> Vec<i64> {
        self.training
            .iter()
            .chain([&self.validation, &self.scoring])
            .map(|d| date_to_micros(*d))
            .collect()
    }

    /// The training cutoffs, as microseconds.
    pub fn training_micros(&self) -> Vec<i64> {
        self.training.iter().map(|d| date_to_micros(*d)).collect()
    }

    /// Cutoffs with a complete label window.
    pub fn labelled_micros(&self) -> Vec<i64> {
        self.training
            .iter()
            .chain([&self.validation])
            .map(|d| date_to_micros(*d))
            .collect()
    }
}

/// Day number (UTC) of a label event, and its daily totals: events, and the fixed-point
/// sum of the `min_sum` field.
pub const DAY: &str = "_d";
const N: &str = "_n";
const SUM: &str = "_s";

/// Per-customer daily totals of the label events of `events` (see [`LabelDef`]):
/// `customer_id`, `_d`, `_n`, `_s`, one row per (customer, day) with a label event, sorted.
/// Labels are windows of whole days, so these totals decide every label exactly, and the
/// totals of two sets of events add up to those of both (`combine_days`).
pub fn label_days(events: &DataFrame, def: &LabelDef) -> Result<DataFrame> {
    let mut cond = crate::features::events_expr(&def.events);
    for f in &def.filters {
        cond = cond.and(crate::features::filter_expr(f));
    }
    let value = match &def.min_sum {
        Some((field, _)) => crate::features::fixed_point(col(field.as_str())).fill_null(lit(0i64)),
        None => lit(0i64),
    };
    events
        .clone()
        .lazy()
        .filter(cond.fill_null(lit(false)))
        .group_by([
            col(ev::CUSTOMER_ID),
            (col(ev::TSTAMP).cast(DataType::Int64) / lit(MICROS_PER_DAY)).alias(DAY),
        ])
        .agg([len().cast(DataType::Int64).alias(N), value.sum().alias(SUM)])
        .sort([ev::CUSTOMER_ID, DAY], Default::default())
        .collect()
        .ctx("label events")
}

/// The daily label totals of all the events of `parts`; `rename` as in
/// `features::Daily::combine`.
pub fn combine_days(parts: Vec<DataFrame>, rename: Option<&DataFrame>) -> Result<DataFrame> {
    let lf = crate::features::all_renamed(parts, rename)?;
    lf.group_by([col(ev::CUSTOMER_ID), col(DAY)])
        .agg([col(N).sum(), col(SUM).sum()])
        .sort([ev::CUSTOMER_ID, DAY], Default::default())
        .collect()
        .ctx("combining label days")
}

/// Customers whose label is 1 at each labelled cutoff `t` (midnights, µs), from their daily
/// label totals (`label_days`): columns `customer_id`, `cutoff` (µs), `label` (true).
pub fn positives(
    days: &DataFrame,
    cutoffs: &[i64],
    horizon_days: i64,
    def: &LabelDef,
) -> Result<LazyFrame> {
    let threshold = def.min_sum.as_ref().map(|(_, m)| *m);
    let per_cutoff: Vec<LazyFrame> = cutoffs
        .iter()
        .map(|&t| {
            assert_eq!(t.rem_euclid(MICROS_PER_DAY), 0, "cutoffs are midnights");
            let first = t.div_euclid(MICROS_PER_DAY);
            let in_window = days
                .clone()
                .lazy()
                .filter(
                    col(DAY)
                        .gt_eq(lit(first))
                        .and(col(DAY).lt(lit(first + horizon_days))),
                )
                .group_by([col(ev::CUSTOMER_ID)])
                .agg([col(SUM).sum()]);
            let hit = match threshold {
                Some(m) => in_window.filter(
                    (col(SUM).cast(DataType::Float64) / lit(crate::features::SUM_SCALE))
                        .gt_eq(lit(m)),
                ),
                None => in_window,
            };
            hit.select([col(ev::CUSTOMER_ID)])
                .with_columns([lit(t).alias(output::CUTOFF), lit(true).alias(output::LABEL)])
        })
        .collect();
    concat(per_cutoff, UnionArgs::default()).ctx("labels")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Source;

    fn def(text: &str) -> ModelDef {
        ModelDef::parse(&Source::embedded("m.toml", text)).unwrap()
    }

    #[test]
    fn cutoffs_leave_a_full_horizon_between_training_and_validation() {
        let d = |s: &str| NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap();
        let m = def(
            "[label]\nhorizon_days = 14\n[snapshots]\nstep_days = 7\ntraining_cutoffs = 3\nmin_history_days = 14\n",
        );
        let c = Cutoffs::plan(d("2026-01-01"), d("2026-04-01"), &m).unwrap();
        assert_eq!(c.validation, d("2026-03-18"));
        assert_eq!(
            c.training,
            vec![d("2026-02-18"), d("2026-02-25"), d("2026-03-04")]
        );
        assert_eq!(c.scoring, d("2026-04-01"));
        // Too little history: refused with a hint.
        let err = Cutoffs::plan(d("2026-03-01"), d("2026-04-01"), &m).unwrap_err();
        assert!(err.to_string().contains("training cutoffs"), "{err}");
    }

    #[test]
    fn labels_use_the_half_open_window() {
        let day = MICROS_PER_DAY;
        let events = DataFrame::new(
            4,
            vec![
                Column::new(ev::CUSTOMER_ID.into(), ["a", "b", "c", "d"]),
                Column::new(
                    ev::EVENT_TYPE.into(),
                    ["order", "order_line", "order", "page_view"],
                ),
                // a: exactly at t (in), b: t + 7d - 1µs (in), c: exactly t + 7d (out), d: not an order
                Column::new(
                    ev::TSTAMP.into(),
                    [10 * day, 17 * day - 1, 17 * day, 11 * day],
                )
                .cast(&crate::util::utc())
                .unwrap(),
            ],
        )
        .unwrap();
        let label = def("").label;
        let pos = positives(
            &label_days(&events, &label).unwrap(),
            &[10 * day],
            7,
            &label,
        )
        .unwrap()
        .sort([ev::CUSTOMER_ID], Default::default())
        .collect()
        .unwrap();
        let ids: Vec<&str> = pos
            .column(ev::CUSTOMER_ID)
            .unwrap()
            .str()
            .unwrap()
            .iter()
            .flatten()
            .collect();
        assert_eq!(ids, ["a", "b"]);
    }

    #[test]
    fn labels_are_definitions_category_purchase_and_spend_threshold() {
        let day = MICROS_PER_DAY;
        let events = DataFrame::new(
            5,
            vec![
                Column::new(ev::CUSTOMER_ID.into(), ["a", "a", "b", "c", "c"]),
                Column::new(
                    ev::EVENT_TYPE.into(),
                    [
                        "order_line",
                        "order_line",
                        "order_line",
                        "order_line",
                        "page_view",
                    ],
                ),
                Column::new(
                    ev::CATEGORY.into(),
                    [
                        Some("garden"),
                        Some("toys"),
                        Some("toys"),
                        Some("garden"),
                        None,
                    ],
                ),
                Column::new(
                    ev::LINE_VALUE.into(),
                    [Some(30.0), Some(80.0), Some(120.0), Some(5.0), None],
                ),
                Column::new(ev::TSTAMP.into(), [11 * day; 5])
                    .cast(&crate::util::utc())
                    .unwrap(),
            ],
        )
        .unwrap();
        let held = crate::util::categorical(events.clone()).unwrap();
        let ids = |text: &str| -> Vec<String> {
            let label = def(text).label;
            // The events as ingest holds them (categoricals) give the same label days.
            let days = label_days(&events, &label).unwrap();
            assert!(days.equals_missing(&label_days(&held, &label).unwrap()));
            let pos = positives(&days, &[10 * day], 7, &label)
                .unwrap()
                .sort([ev::CUSTOMER_ID], Default::default())
                .collect()
                .unwrap();
            pos.column(ev::CUSTOMER_ID)
                .unwrap()
                .str()
                .unwrap()
                .iter()
                .flatten()
                .map(str::to_string)
                .collect()
        };
        assert_eq!(
            ids("[label]\nwhere = [{ field = \"category\", op = \"==\", value = \"garden\" }]\n"),
            ["a", "c"]
        );
        // Spend of at least 100 in the window: a (30 + 80) and b (120), not c (5).
        assert_eq!(
            ids("[label]\nsum_field = \"line_value\"\nmin_sum = 100\n"),
            ["a", "b"]
        );
    }
}
