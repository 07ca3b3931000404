//! The feature report of a run: per feature the null rate, summary statistics, drift against
//! the previous night (population stability index, PSI) and the feature's univariate relation
//! to the label (its AUC alone on the validation snapshot). Each night keeps a profile of its
//! scoring snapshot (the bins of every feature) in the state, so the next night measures
//! drift on the same bins without re-reading anything.

use ndarray::{Array2, ArrayView1};
use polars::prelude::DataFrame;
use serde::{Deserialize, Serialize};

use crate::error::Result;

/// The state file holding a night's feature profiles.
pub const PROFILE_STATE: &str = "feature_profile.json";

/// PSI above which a feature's drift is a warning in the run summary (the usual rule of
/// thumb: below 0.1 stable, 0.1 to 0.25 moderate, above 0.25 a real shift).
pub const PSI_WARNING: f64 = 0.25;
const PSI_MODERATE: f64 = 0.1;
/// Shares are floored so that an empty bin does not make the PSI infinite.
const FLOOR: f64 = 1e-4;

/// The distribution of one feature: bin edges (deciles of the non-null values, repeated
/// ones merged) and the share of customers per bin, the last share being the nulls.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Profile {
    pub name: String,
    pub edges: Vec<f64>,
    pub shares: Vec<f64>,
}

/// One feature's line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct FeatureStat {
    pub name: String,
    pub null_rate: f64,
    pub mean: Option<f64>,
    pub std: Option<f64>,
    pub min: Option<f64>,
    pub median: Option<f64>,
    pub max: Option<f64>,
    /// Against the previous night's profile; None on the first night.
    pub psi: Option<f64>,
    /// "ok", "moderate" or "warning" (see [`PSI_WARNING`]).
    pub drift: &'static str,
    /// AUC of the feature alone against the label on the validation snapshot (0.5 = no
    /// relation; below 0.5: higher values mean less likely to buy).
    pub auc: f64,
}

fn values(column: ArrayView1<f64>) -> Vec<f64> {
    let mut v: Vec<f64> = column.iter().copied().filter(|x| !x.is_nan()).collect();
    v.sort_by(f64::total_cmp);
    v
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn shares(column: ArrayView1<f64>, edges: &[f64]) -> Vec<f64> {
    let n = column.len().max(1) as f64;
    let mut counts = vec![0usize; edges.len() + 2];
    for &x in column {
        let bin = if x.is_nan() {
            edges.len() + 1
        } else {
            edges.partition_point(|e| *e < x)
        };
        counts[bin] += 1;
    }
    counts.into_iter().map(|c| c as f64 / n).collect()
}

/// The profile of one feature's values (NaN = null).
pub fn profile(name: &str, column: ArrayView1<f64>) -> Profile {
    let sorted = values(column);
    let mut edges: Vec<f64> = if sorted.is_empty() {
        Vec::new()
    } else {
        (1..10)
            .map(|i| quantile(&sorted, i as f64 / 10.0))
            .collect()
    };
    edges.dedup();
    Profile {
        name: name.to_string(),
        shares: shares(column, &edges),
        edges,
    }
}

/// PSI of `column` against the `previous` profile, on the previous bins.
pub fn psi(previous: &Profile, column: ArrayView1<f64>) -> f64 {
    let now = shares(column, &previous.edges);
    previous
        .shares
        .iter()
        .zip(&now)
        .map(|(&p, &q)| {
            let (p, q) = (p.max(FLOOR), q.max(FLOOR));
            (q - p) * (q / p).ln()
        })
        .sum()
}

/// Each feature's AUC alone on the validation snapshot (`x_validation`, labels
/// `y_validation`); a null counts as the lowest value.
pub fn univariate_aucs(x_validation: &Array2<f64>, y_validation: &[bool]) -> Vec<f64> {
    x_validation
        .columns()
        .into_iter()
        .map(|column| {
            let v: Vec<f64> = column
                .iter()
                .map(|x| if x.is_nan() { f64::NEG_INFINITY } else { *x })
                .collect();
            crate::model::auc(&v, y_validation)
        })
        .collect()
}

/// The report of the features `names` of the scoring snapshot, with their validation AUCs
/// (`univariate_aucs`) and their drift against the `previous` night's profiles.
pub fn report(
    names: &[String],
    scoring: &DataFrame,
    validation_aucs: &[f64],
    previous: Option<&[Profile]>,
) -> Result<(Vec<FeatureStat>, Vec<Profile>)> {
    let mut stats = Vec::new();
    let mut profiles = Vec::new();
    for (j, name) in names.iter().enumerate() {
        // One feature's values at a time, not a matrix of them all.
        let values_now = crate::model::to_values(scoring, name)?;
        let column = values_now.view();
        let sorted = values(column);
        let n = sorted.len() as f64;
        let mean = (!sorted.is_empty()).then(|| sorted.iter().sum::<f64>() / n);
        let std = mean.map(|m| (sorted.iter().map(|v| (v - m).powi(2)).sum::<f64>() / n).sqrt());
        let psi = previous
            .and_then(|p| p.iter().find(|p| p.name == *name))
            .map(|p| psi(p, column));
        stats.push(FeatureStat {
            name: name.clone(),
            null_rate: 1.0 - n / column.len().max(1) as f64,
            mean,
            std,
            min: sorted.first().copied(),
            median: (!sorted.is_empty()).then(|| quantile(&sorted, 0.5)),
            max: sorted.last().copied(),
            psi,
            drift: match psi {
                Some(p) if p > PSI_WARNING => "warning",
                Some(p) if p > PSI_MODERATE => "moderate",
                _ => "ok",
            },
            auc: validation_aucs[j],
        });
        profiles.push(profile(name, column));
    }
    Ok((stats, profiles))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array1;

    #[test]
    fn psi_is_zero_for_the_same_distribution_and_known_for_a_shift() {
        let a = Array1::from_iter((0..1000).map(|i| i as f64));
        let p = profile("x", a.view());
        assert_eq!(p.edges.len(), 9);
        assert!(psi(&p, a.view()).abs() < 1e-12);
        // Everyone moves into the top bin: from about 10% to 100% there, to 0% (floored)
        // elsewhere; the null bin stays empty.
        let top = p.edges.len();
        assert!((p.shares[top] - 0.1).abs() < 0.002 && p.shares[top + 1] == 0.0);
        let shifted = Array1::from_elem(1000, 5000.0);
        let expected: f64 = (0..=top)
            .map(|b| {
                let before = p.shares[b].max(FLOOR);
                let now = if b == top { 1.0 } else { FLOOR };
                (now - before) * (now / before).ln()
            })
            .sum();
        assert!((psi(&p, shifted.view()) - expected).abs() < 1e-12);
        assert!(expected > 2.0, "{expected}");
        // Nulls are a bin of their own: half the values going missing is drift.
        let half_null =
            Array1::from_iter((0..1000).map(|i| if i % 2 == 0 { f64::NAN } else { i as f64 }));
        assert!(psi(&p, half_null.view()) > PSI_WARNING);
    }

    #[test]
    fn the_report_has_null_rates_statistics_drift_and_relation_to_the_label() {
        let x = Array2::from_shape_vec((4, 2), vec![1.0, f64::NAN, 2.0, 5.0, 3.0, 5.0, 4.0, 5.0])
            .unwrap();
        let y = [false, false, true, true];
        let scoring = polars::df!(
            "a" => [1.0, 2.0, 3.0, 4.0],
            "b" => [None, Some(5.0), Some(5.0), Some(5.0)],
        )
        .unwrap();
        let aucs = univariate_aucs(&x, &y);
        let (stats, profiles) = report(&["a".into(), "b".into()], &scoring, &aucs, None).unwrap();
        assert_eq!(stats[0].null_rate, 0.0);
        assert_eq!(stats[1].null_rate, 0.25);
        assert_eq!(
            (stats[0].min, stats[0].max, stats[0].mean),
            (Some(1.0), Some(4.0), Some(2.5))
        );
        assert_eq!(stats[0].auc, 1.0, "a separates the classes");
        assert_eq!(stats[0].psi, None);
        let (again, _) =
            report(&["a".into(), "b".into()], &scoring, &aucs, Some(&profiles)).unwrap();
        assert_eq!(again[0].psi, Some(0.0));
        assert_eq!(again[0].drift, "ok");
    }
}
