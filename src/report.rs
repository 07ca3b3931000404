//! The marketers' report: `report/index.html`, one self-contained file (inline CSS and
//! JavaScript, no network) whose script draws the charts from the run's figures, embedded as
//! JSON. The template is `src/report/index.html`; this module gathers the data.

use std::path::Path;

use serde::Serialize;

use crate::audience::AudienceReport;
use crate::error::{Context, Result};
use crate::model::{Artifact, Metrics};

const TEMPLATE: &str = include_str!("report/index.html");
const PLACEHOLDER: &str = "__PROPEL_REPORT_DATA__";

#[derive(Serialize)]
pub struct Summary {
    pub as_of: String,
    pub propel_version: &'static str,
    pub customers_scored: usize,
    pub horizon_days: i64,
    pub auc: f64,
    pub pr_auc: f64,
    pub base_rate: f64,
    pub ece: f64,
    pub lift_top_decile: f64,
    pub model_kind: String,
    /// Whether the gate promoted the model trained this night; `None` on nights that reuse
    /// the model in production.
    pub promoted: Option<bool>,
    pub gate_reason: Option<String>,
    /// Whether the night trained a model or reused the one in production.
    pub training: String,
    pub validation_cutoff: String,
    pub n_validation: usize,
}

#[derive(Serialize)]
struct Histogram {
    edges: Vec<f64>,
    counts: Vec<usize>,
}

#[derive(Serialize)]
pub struct Driver {
    pub feature: String,
    pub description: String,
    /// Mean absolute contribution to the score's log-odds across scored customers.
    pub importance: f64,
    pub direction: &'static str,
}

#[derive(Serialize)]
struct ReportAudience<'a> {
    name: &'a str,
    description: &'a str,
    size: usize,
    previous_size: Option<usize>,
    added: Option<usize>,
    removed: Option<usize>,
    destinations: Vec<&'static str>,
    delivered: bool,
}

#[derive(Serialize)]
struct Data<'a, F: Serialize> {
    summary: &'a Summary,
    score_histogram: Histogram,
    deciles: &'a [crate::model::Decile],
    calibration_curve: &'a [crate::model::CalibrationBin],
    audiences: Vec<ReportAudience<'a>>,
    drivers: &'a [Driver],
    exclusions: &'a std::collections::BTreeMap<String, usize>,
    warnings: &'a [String],
    features: &'a F,
}

/// The features that move scores most: mean |contribution| over the scored customers, with
/// the sign of the mean contribution as the direction.
pub fn drivers(
    artifact: &Artifact,
    contributions: &crate::score::Contributions,
    describe: impl Fn(&str) -> String,
    top: usize,
) -> Vec<Driver> {
    let n = contributions.customers.max(1) as f64;
    let mut out: Vec<Driver> = artifact
        .feature_names
        .iter()
        .enumerate()
        .map(|(j, name)| Driver {
            feature: name.clone(),
            description: describe(name),
            importance: contributions.abs[j] / n,
            direction: if contributions.sum[j] / n >= 0.0 {
                "up"
            } else {
                "down"
            },
        })
        .filter(|d| d.importance > 0.0)
        .collect();
    out.sort_by(|a, b| {
        b.importance
            .total_cmp(&a.importance)
            .then(a.feature.cmp(&b.feature))
    });
    out.truncate(top);
    out
}

/// Writes `report/index.html` under `dir`.
#[allow(clippy::too_many_arguments)]
pub fn write(
    dir: &Path,
    summary: &Summary,
    scores: &[f64],
    validation: &Metrics,
    audiences: &[AudienceReport],
    drivers: &[Driver],
    exclusions: &std::collections::BTreeMap<String, usize>,
    warnings: &[String],
    features: &impl Serialize,
) -> Result<()> {
    let bins = 20;
    let mut counts = vec![0usize; bins];
    for s in scores {
        counts[((s * bins as f64) as usize).min(bins - 1)] += 1;
    }
    let data = Data {
        summary,
        score_histogram: Histogram {
            edges: (0..=bins).map(|i| i as f64 / bins as f64).collect(),
            counts,
        },
        deciles: &validation.deciles,
        calibration_curve: &validation.calibration_curve,
        audiences: audiences
            .iter()
            .map(|a| {
                let first = a.deliveries.first();
                ReportAudience {
                    name: &a.name,
                    description: &a.description,
                    size: a.size,
                    previous_size: a.previous_size,
                    added: first.and_then(|d| d.added),
                    removed: first.and_then(|d| d.removed),
                    destinations: a.deliveries.iter().map(|d| d.destination).collect(),
                    delivered: a.delivered,
                }
            })
            .collect(),
        drivers,
        exclusions,
        warnings,
        features,
    };
    // `<` never appears raw inside the script element, so no text can close it early.
    let json = serde_json::to_string(&data)
        .expect("report data serialises")
        .replace('<', "\\u003c");
    let html = TEMPLATE.replacen(PLACEHOLDER, &json, 1);
    let out = dir.join("report");
    std::fs::create_dir_all(&out).ctx(format!("creating {}", out.display()))?;
    std::fs::write(out.join("index.html"), html).ctx("writing report/index.html")
}
