//! Model: logistic regression (linfa-logistic) on standardised features, trained on the
//! training cutoffs and validated out of time on the latest labelled cutoff.
//!
//! Missing feature values (e.g. a ratio over zero orders) are imputed with the training
//! mean, which is 0 after standardisation; constant features get scale 1 and so cannot
//! dominate. The artifact carries feature names and order, the scaler and the feature-set
//! hash; scoring refuses an artifact whose features differ from the current definitions.

use linfa::prelude::*;
use linfa_logistic::LogisticRegression;
use ndarray::{Array1, Array2, ShapeBuilder};
use polars::prelude::*;
use serde::{Deserialize, Serialize};

use crate::config::ModelDef;
use crate::error::{Context, ModelError, Result};

/// The one place where a polars frame becomes a linfa (ndarray 0.16) matrix: polars uses
/// ndarray 0.17, so the column-major buffer is handed over without a copy. Nulls become NaN.
pub fn to_matrix(df: &DataFrame, columns: &[String]) -> Result<Array2<f64>> {
    let n = df.height();
    let k = columns.len();
    let selected = df
        .select(columns.iter().map(|c| c.as_str()))
        .ctx("selecting feature columns")?;
    let arr = selected
        .to_ndarray::<Float64Type>(IndexOrder::Fortran)
        .ctx("feature matrix")?;
    let (vec, offset) = arr.into_raw_vec_and_offset();
    debug_assert!(offset.unwrap_or(0) == 0);
    Ok(Array2::from_shape_vec((n, k).f(), vec).expect("shape matches the buffer"))
}

/// Labels as a boolean vector (null = false).
pub fn to_labels(df: &DataFrame, column: &str) -> Result<Array1<bool>> {
    let c = df
        .column(column)
        .ctx(column.to_string())?
        .bool()
        .ctx(column.to_string())?;
    Ok(c.iter().map(|v| v.unwrap_or(false)).collect())
}

/// Standardisation with mean imputation, fitted on training rows.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Scaler {
    pub mean: Vec<f64>,
    pub scale: Vec<f64>,
}

impl Scaler {
    pub fn fit(x: &Array2<f64>) -> Scaler {
        let (mut mean, mut scale) = (Vec::new(), Vec::new());
        for col in x.columns() {
            let vals: Vec<f64> = col.iter().copied().filter(|v| v.is_finite()).collect();
            let n = vals.len().max(1) as f64;
            let m = vals.iter().sum::<f64>() / n;
            let var = vals.iter().map(|v| (v - m).powi(2)).sum::<f64>() / n;
            mean.push(m);
            scale.push(if var > 1e-12 { var.sqrt() } else { 1.0 });
        }
        Scaler { mean, scale }
    }

    /// Standardises; missing (non-finite) values become 0, the training mean.
    pub fn transform(&self, x: &Array2<f64>) -> Array2<f64> {
        let mut z = x.clone();
        for (j, mut col) in z.columns_mut().into_iter().enumerate() {
            col.mapv_inplace(|v| {
                if v.is_finite() {
                    (v - self.mean[j]) / self.scale[j]
                } else {
                    0.0
                }
            });
        }
        z
    }
}

/// Validation metrics.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Metrics {
    pub auc: f64,
    pub pr_auc: f64,
    pub log_loss: f64,
    pub brier: f64,
    pub lift_top_decile: f64,
    pub positive_rate: f64,
    pub n: usize,
}

/// ROC AUC by the rank-sum (Mann-Whitney) formula, ties counted half.
pub fn auc(scores: &[f64], labels: &[bool]) -> f64 {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let (mut rank_sum, mut i) = (0.0, 0);
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && scores[idx[j + 1]] == scores[idx[i]] {
            j += 1;
        }
        let avg_rank = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            if labels[k] {
                rank_sum += avg_rank;
            }
        }
        i = j + 1;
    }
    let pos = labels.iter().filter(|&&l| l).count() as f64;
    let neg = labels.len() as f64 - pos;
    if pos == 0.0 || neg == 0.0 {
        return f64::NAN;
    }
    (rank_sum - pos * (pos + 1.0) / 2.0) / (pos * neg)
}

/// Average precision (area under the precision-recall curve, step-wise), ties grouped.
pub fn average_precision(scores: &[f64], labels: &[bool]) -> f64 {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let pos = labels.iter().filter(|&&l| l).count() as f64;
    if pos == 0.0 {
        return f64::NAN;
    }
    let (mut tp, mut seen, mut ap, mut i) = (0.0, 0.0, 0.0, 0);
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && scores[idx[j + 1]] == scores[idx[i]] {
            j += 1;
        }
        let new_tp = idx[i..=j].iter().filter(|&&k| labels[k]).count() as f64;
        tp += new_tp;
        seen += (j - i + 1) as f64;
        ap += (new_tp / pos) * (tp / seen);
        i = j + 1;
    }
    ap
}

pub fn log_loss(p: &[f64], labels: &[bool]) -> f64 {
    if p.is_empty() {
        return f64::NAN;
    }
    let eps = 1e-15;
    let s: f64 = p
        .iter()
        .zip(labels)
        .map(|(&p, &y)| {
            let p = p.clamp(eps, 1.0 - eps);
            if y { -p.ln() } else { -(1.0 - p).ln() }
        })
        .sum();
    s / p.len() as f64
}

pub fn brier(p: &[f64], labels: &[bool]) -> f64 {
    if p.is_empty() {
        return f64::NAN;
    }
    p.iter()
        .zip(labels)
        .map(|(&p, &y)| (p - y as u8 as f64).powi(2))
        .sum::<f64>()
        / p.len() as f64
}

/// Positive rate among the top 10% by score, divided by the overall positive rate.
/// Ties at the boundary are broken by input order (stable sort).
pub fn lift_top_decile(scores: &[f64], labels: &[bool]) -> f64 {
    if scores.is_empty() {
        return f64::NAN;
    }
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let top = (scores.len() as f64 / 10.0).ceil().max(1.0) as usize;
    let top_rate = idx[..top].iter().filter(|&&k| labels[k]).count() as f64 / top as f64;
    let base = labels.iter().filter(|&&l| l).count() as f64 / labels.len() as f64;
    if base == 0.0 {
        f64::NAN
    } else {
        top_rate / base
    }
}

impl Metrics {
    pub fn compute(p: &[f64], labels: &[bool]) -> Metrics {
        let pos = labels.iter().filter(|&&l| l).count();
        Metrics {
            auc: auc(p, labels),
            pr_auc: average_precision(p, labels),
            log_loss: log_loss(p, labels),
            brier: brier(p, labels),
            lift_top_decile: lift_top_decile(p, labels),
            positive_rate: pos as f64 / labels.len().max(1) as f64,
            n: labels.len(),
        }
    }
}

/// The model artifact written to `model/model.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Artifact {
    pub propel_version: String,
    pub kind: String,
    pub feature_names: Vec<String>,
    pub feature_set_hash: String,
    pub scaler: Scaler,
    pub coefficients: Vec<f64>,
    pub intercept: f64,
    pub l2: f64,
    pub horizon_days: i64,
    pub training_cutoffs: Vec<String>,
    pub validation_cutoff: String,
    pub n_train: usize,
    pub n_train_positive: usize,
    pub validation: Metrics,
}

impl Artifact {
    /// Probability of a purchase for each row of the raw feature matrix.
    pub fn predict(&self, x: &Array2<f64>) -> Vec<f64> {
        let z = self.scaler.transform(x);
        z.rows()
            .into_iter()
            .map(|row| {
                let s: f64 = row
                    .iter()
                    .zip(&self.coefficients)
                    .map(|(v, c)| v * c)
                    .sum::<f64>()
                    + self.intercept;
                1.0 / (1.0 + (-s).exp())
            })
            .collect()
    }

    /// Per-feature contributions `coefficient x standardised value` for each row.
    pub fn contributions(&self, x: &Array2<f64>) -> Array2<f64> {
        let mut z = self.scaler.transform(x);
        for (j, mut col) in z.columns_mut().into_iter().enumerate() {
            col *= self.coefficients[j];
        }
        z
    }

    /// Fails when the artifact was trained on other features than `names` / `hash`.
    pub fn check_features(
        &self,
        names: &[String],
        hash: &str,
        path: &std::path::Path,
    ) -> Result<()> {
        if self.feature_names != names {
            let missing: Vec<_> = names
                .iter()
                .filter(|n| !self.feature_names.contains(n))
                .collect();
            let extra: Vec<_> = self
                .feature_names
                .iter()
                .filter(|n| !names.contains(n))
                .collect();
            return Err(ModelError::FeatureMismatch {
                path: path.to_path_buf(),
                detail: format!(
                    "expected features {:?} in that order; the artifact has {:?} (not in artifact: {missing:?}; only in artifact: {extra:?})",
                    names, self.feature_names
                ),
            }
            .into());
        }
        if self.feature_set_hash != hash {
            return Err(ModelError::FeatureMismatch {
                path: path.to_path_buf(),
                detail: format!(
                    "same feature names but different definitions: artifact hash {}, current {hash}",
                    self.feature_set_hash
                ),
            }
            .into());
        }
        Ok(())
    }
}

/// Fits the logistic regression; refuses below the eligibility minimums.
pub fn fit(x: &Array2<f64>, y: &Array1<bool>, def: &ModelDef) -> Result<(Scaler, Vec<f64>, f64)> {
    let pos = y.iter().filter(|&&l| l).count();
    let neg = y.len() - pos;
    if pos < def.min_positives {
        return Err(ModelError::Ineligible {
            what: "positive training rows",
            found: pos,
            needed: def.min_positives,
            hint: "add history, lengthen the horizon, or lower eligibility.min_positives".into(),
        }
        .into());
    }
    if neg < def.min_negatives {
        return Err(ModelError::Ineligible {
            what: "negative training rows",
            found: neg,
            needed: def.min_negatives,
            hint: "add history, shorten the horizon, or lower eligibility.min_negatives".into(),
        }
        .into());
    }
    let scaler = Scaler::fit(x);
    let z = scaler.transform(x);
    let dataset = Dataset::new(z, y.clone());
    let fitted = LogisticRegression::default()
        .alpha(def.l2)
        .max_iterations(def.max_iterations)
        .fit(&dataset)
        .map_err(|e| ModelError::Fit(e.to_string()))?;
    // linfa's "positive" class is the majority class; express the model as P(label = true).
    let sign = if fitted.labels().pos.class { 1.0 } else { -1.0 };
    let coefficients = fitted.params().iter().map(|c| sign * c).collect();
    Ok((scaler, coefficients, sign * fitted.intercept()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_counts_ties_as_half() {
        // pos scores: 0.8, 0.5; neg: 0.5, 0.2. Pairs: (0.8>0.5)=1, (0.8>0.2)=1, (0.5=0.5)=0.5, (0.5>0.2)=1 -> 3.5/4
        let s = [0.8, 0.5, 0.5, 0.2];
        let y = [true, true, false, false];
        assert!((auc(&s, &y) - 0.875).abs() < 1e-12);
        assert!((auc(&[0.1, 0.9], &[false, true]) - 1.0).abs() < 1e-12);
        assert!((auc(&[0.9, 0.1], &[false, true]) - 0.0).abs() < 1e-12);
    }

    #[test]
    fn average_precision_and_lift_by_hand() {
        // Ranked: T F T F -> AP = (1/2)(1/1) + (1/2)(2/3) = 0.8333
        let s = [0.9, 0.8, 0.7, 0.6];
        let y = [true, false, true, false];
        assert!((average_precision(&s, &y) - (0.5 + 1.0 / 3.0)).abs() < 1e-12);
        // 20 rows, top decile = 2 rows, both positive; base rate 4/20 -> lift 5.
        let s: Vec<f64> = (0..20).map(|i| 1.0 - i as f64 / 20.0).collect();
        let y: Vec<bool> = (0..20).map(|i| i < 2 || i == 10 || i == 15).collect();
        assert!((lift_top_decile(&s, &y) - 5.0).abs() < 1e-12);
        assert!((brier(&[1.0, 0.0], &[true, true]) - 0.5).abs() < 1e-12);
        assert!((log_loss(&[0.5, 0.5], &[true, false]) - 2f64.ln()).abs() < 1e-12);
        // Empty input: undefined, not a panic.
        let empty = Metrics::compute(&[], &[]);
        assert!(empty.auc.is_nan() && empty.lift_top_decile.is_nan() && empty.brier.is_nan());
    }

    #[test]
    fn fit_recovers_the_direction_of_a_planted_signal_and_refuses_small_data() {
        let n = 400;
        let x = Array2::from_shape_fn((n, 2), |(i, j)| {
            if j == 0 {
                (i % 20) as f64
            } else {
                ((i * 7) % 13) as f64
            }
        });
        // Label: feature 0 large -> positive (minority class, 25%).
        let y: Array1<bool> = (0..n).map(|i| (i % 20) >= 15).collect();
        let def = ModelDef::parse(&crate::config::Source::embedded("m", "")).unwrap();
        let (scaler, coef, intercept) = fit(&x, &y, &def).unwrap();
        assert!(coef[0] > 1.0, "{coef:?}");
        let art = Artifact {
            propel_version: "t".into(),
            kind: "logistic".into(),
            feature_names: vec!["a".into(), "b".into()],
            feature_set_hash: "h".into(),
            scaler,
            coefficients: coef,
            intercept,
            l2: 1.0,
            horizon_days: 7,
            training_cutoffs: vec![],
            validation_cutoff: String::new(),
            n_train: n,
            n_train_positive: 100,
            validation: Metrics::compute(&[0.5, 0.5], &[true, false]),
        };
        let p = art.predict(&x);
        assert!(p[19] > 0.5 && p[0] < 0.5, "{} {}", p[19], p[0]);
        assert!(auc(&p, y.as_slice().unwrap()) > 0.95);
        // Mismatched features are refused with a clear message.
        let err = art
            .check_features(
                &["a".into(), "c".into()],
                "h",
                std::path::Path::new("m.json"),
            )
            .unwrap_err();
        assert!(
            err.to_string().contains("only in artifact: [\"b\"]"),
            "{err}"
        );
        // Eligibility.
        let few: Array1<bool> = (0..n).map(|i| i < 5).collect();
        let err = fit(&x, &few, &def).unwrap_err();
        assert!(
            err.to_string()
                .contains("5 positive training rows, need at least 20"),
            "{err}"
        );
        assert_eq!(err.exit_code(), crate::error::exit_code::MODEL_REFUSED);
    }
}
