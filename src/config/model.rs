//! The model definition (`models/*.toml`): label, snapshots, model, eligibility, gate.

use serde::Deserialize;

use super::features::{EVENT_FIELDS, FieldType, Filter, RawFilter, parse_events, parse_filters};
use super::{Problems, Source, parse_toml};
use crate::error::ConfigError;
use crate::schema::EventType;

// ---------------------------------------------------------------------------------------
// Model

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModelFile {
    label: Option<RawLabel>,
    snapshots: Option<RawSnapshots>,
    model: Option<RawModel>,
    eligibility: Option<RawEligibility>,
    gate: Option<RawGate>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLabel {
    horizon_days: Option<i64>,
    events: Option<Vec<String>>,
    #[serde(rename = "where")]
    filters: Option<Vec<RawFilter>>,
    sum_field: Option<String>,
    min_sum: Option<f64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSnapshots {
    step_days: Option<i64>,
    training_cutoffs: Option<usize>,
    min_history_days: Option<i64>,
    population_active_days: Option<i64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawModel {
    l2: Option<f64>,
    l2_grid: Option<Vec<f64>>,
    balance_classes: Option<bool>,
    families: Option<Vec<String>>,
    gbm_budget: Option<f32>,
    max_iterations: Option<u64>,
    max_training_rows: Option<usize>,
    reasons: Option<usize>,
    retrain_every_days: Option<i64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawGate {
    tolerance: Option<f64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawEligibility {
    min_positives: Option<usize>,
    min_negatives: Option<usize>,
}

/// Who is in the population at a cutoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Population {
    /// Every customer with any event before the cutoff. Default.
    #[default]
    AllSeen,
    /// Customers with an event in the `N` days before the cutoff (as GA4 does).
    ActiveDays(i64),
}

/// What the label counts: `label(c, t) = 1` when the customer's events of `events` matching
/// `filters` in `[t, t + horizon)` exist (or, with `min_sum`, their `sum_field` adds up to
/// at least `min_sum`).
#[derive(Debug, Clone, PartialEq)]
pub struct LabelDef {
    /// Default: `order` and `order_line` (a purchase).
    pub events: Vec<EventType>,
    /// Default: none.
    pub filters: Vec<Filter>,
    /// Default: none (any matching event).
    pub min_sum: Option<(String, f64)>,
}

/// A validated model definition.
#[derive(Debug, Clone)]
pub struct ModelDef {
    /// Label window length: `[t, t + horizon_days)`. Default: 30.
    pub horizon_days: i64,
    pub label: LabelDef,
    /// Default: every customer seen before the cutoff.
    pub population: Population,
    /// Days between training cutoffs. Default: 7.
    pub step_days: i64,
    /// Number of training cutoffs before the validation cutoff. Default: 8.
    pub training_cutoffs: usize,
    /// A cutoff needs at least this many days of events before it. Default: 14.
    pub min_history_days: i64,
    /// L2 penalties tried; the one with the best AUC on the held-out calibration cutoff
    /// wins. `l2 = x` in the file fixes it. Default: 0.001, 0.01, 0.1, 1, 10, 100.
    pub l2_grid: Vec<f64>,
    /// Replicate positive training rows to balance the classes (probabilities are then
    /// recalibrated on held-out data). Default: false.
    pub balance_classes: bool,
    /// Model families competing on the held-out cutoff: `logistic_regression`,
    /// `gradient_boosting`. Default: logistic regression only (see EVALUATION.md: the
    /// boosted trees lost on both data sets measured and cost about 3x the time).
    pub families: Vec<crate::model::Family>,
    /// Complexity budget of the gradient-boosted trees (perpetual). Default: 0.5.
    pub gbm_budget: f32,
    /// A new model replaces the previous one unless its validation AUC is lower by more
    /// than this. Default: 0.01.
    pub gate_tolerance: f64,
    /// Maximum solver iterations. Default: 200.
    pub max_iterations: u64,
    /// Above this many training rows, the model learns from a sample of whole customers
    /// (chosen by a hash of their id, so the same customers night after night). Default:
    /// 250000.
    pub max_training_rows: usize,
    /// Reason codes per scored customer. Default: 3.
    pub reasons: usize,
    /// Train a new model every this many days; the nights between score with the model in
    /// production (trained on the same definitions) and measure it on their validation
    /// cutoff. Default: 7 (train weekly, score nightly; 1 trains every night).
    pub retrain_every_days: i64,
    /// Refuse to train below this many positive training rows. Default: 20.
    pub min_positives: usize,
    /// Refuse to train below this many negative training rows. Default: 20.
    pub min_negatives: usize,
}

impl ModelDef {
    /// Digest of what a model trained with this definition depends on: everything but the
    /// retraining cadence and the number of reason codes, which change no model.
    pub fn training_digest(&self) -> String {
        let mut def = self.clone();
        def.retrain_every_days = 1;
        def.reasons = 0;
        crate::util::sha256_hex(&format!("{def:?}"))
    }

    pub fn parse(source: &Source) -> Result<ModelDef, ConfigError> {
        let raw: RawModelFile = parse_toml(&source.text, &source.name)?;
        let mut p = Problems::new(&source.name);
        let label = raw.label.unwrap_or_default();
        let snaps = raw.snapshots.unwrap_or_default();
        let model = raw.model.unwrap_or_default();
        let elig = raw.eligibility.unwrap_or_default();
        let mut positive = |key: &str, v: i64| {
            if v <= 0 {
                p.push(
                    key,
                    format!("expected a positive number of days, found {v}"),
                );
            }
            v
        };
        let horizon_days = positive("label.horizon_days", label.horizon_days.unwrap_or(30));
        let step_days = positive("snapshots.step_days", snaps.step_days.unwrap_or(7));
        let retrain_every_days = positive(
            "model.retrain_every_days",
            model.retrain_every_days.unwrap_or(7),
        );
        let min_history_days = positive(
            "snapshots.min_history_days",
            snaps.min_history_days.unwrap_or(14),
        );
        let population = match snaps.population_active_days {
            None => Population::AllSeen,
            Some(d) => Population::ActiveDays(positive("snapshots.population_active_days", d)),
        };
        let training_cutoffs = snaps.training_cutoffs.unwrap_or(8);
        if training_cutoffs == 0 {
            p.push("snapshots.training_cutoffs", "expected at least 1, found 0");
        }
        let l2_grid = match (model.l2, model.l2_grid) {
            (Some(l2), None) => vec![l2],
            (None, Some(grid)) => grid,
            (None, None) => vec![0.001, 0.01, 0.1, 1.0, 10.0, 100.0],
            (Some(_), Some(grid)) => {
                p.push(
                    "model.l2",
                    "give `l2` (fixed) or `l2_grid` (chosen on held-out data), not both",
                );
                grid
            }
        };
        if l2_grid.is_empty() || l2_grid.iter().any(|l| !(l.is_finite() && *l >= 0.0)) {
            p.push(
                "model.l2_grid",
                format!("expected numbers >= 0, found {l2_grid:?}"),
            );
        }
        let mut families = Vec::new();
        for (i, f) in model
            .families
            .clone()
            .unwrap_or_else(|| vec!["logistic_regression".into()])
            .iter()
            .enumerate()
        {
            match f.as_str() {
                "logistic_regression" => families.push(crate::model::Family::LogisticRegression),
                "gradient_boosting" => families.push(crate::model::Family::GradientBoosting),
                other => p.push(
                    format!("model.families[{i}]"),
                    format!(
                        "unknown model family `{other}`, expected `logistic_regression` or `gradient_boosting`{}",
                        super::did_you_mean(other, ["logistic_regression", "gradient_boosting"])
                    ),
                ),
            }
        }
        if families.is_empty() {
            p.push("model.families", "expected at least one model family");
        }
        let gbm_budget = model.gbm_budget.unwrap_or(0.5);
        if !(gbm_budget > 0.0 && gbm_budget.is_finite()) {
            p.push(
                "model.gbm_budget",
                format!("expected a positive number, found {gbm_budget}"),
            );
        }
        if model.max_training_rows == Some(0) {
            p.push(
                "model.max_training_rows",
                "expected a positive number, found 0",
            );
        }
        if retrain_every_days > 3660 {
            p.push(
                "model.retrain_every_days",
                format!("expected at most 3660 days (ten years), found {retrain_every_days}"),
            );
        }
        let gate_tolerance = raw.gate.and_then(|g| g.tolerance).unwrap_or(0.01);
        if !(0.0..=1.0).contains(&gate_tolerance) {
            p.push(
                "gate.tolerance",
                format!("expected an AUC difference in [0, 1], found {gate_tolerance}"),
            );
        }
        let events = match &label.events {
            Some(raw) => parse_events(raw, "label", &mut p).unwrap_or_default(),
            None => vec![EventType::Order, EventType::OrderLine],
        };
        let filters = parse_filters(
            label.filters.as_deref().unwrap_or(&[]),
            &EVENT_FIELDS,
            "label",
            &mut p,
        )
        .unwrap_or_default();
        let min_sum = match (label.sum_field, label.min_sum) {
            (None, None) => None,
            (Some(f), Some(m)) => {
                match EVENT_FIELDS.iter().find(|(n, _)| *n == f) {
                    Some((_, FieldType::Number)) => {}
                    _ => p.push(
                        "label.sum_field",
                        format!(
                            "expected a numeric event field ({}), found `{f}`",
                            EVENT_FIELDS
                                .iter()
                                .filter(|(_, t)| *t == FieldType::Number)
                                .map(|(n, _)| *n)
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    ),
                }
                Some((f, m))
            }
            _ => {
                p.push("label", "`sum_field` and `min_sum` go together");
                None
            }
        };
        if !p.is_empty() {
            return Err(ConfigError(p.into_vec()));
        }
        Ok(ModelDef {
            horizon_days,
            label: LabelDef {
                events,
                filters,
                min_sum,
            },
            population,
            step_days,
            training_cutoffs,
            min_history_days,
            l2_grid,
            balance_classes: model.balance_classes.unwrap_or(false),
            families,
            gbm_budget,
            gate_tolerance,
            max_iterations: model.max_iterations.unwrap_or(200),
            max_training_rows: model.max_training_rows.unwrap_or(250_000),
            reasons: model.reasons.unwrap_or(3),
            retrain_every_days,
            min_positives: elig.min_positives.unwrap_or(20),
            min_negatives: elig.min_negatives.unwrap_or(20),
        })
    }
}
