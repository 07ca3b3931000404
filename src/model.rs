//! Model: logistic regression (argmin's L-BFGS, `logistic`) on standardised features, or
//! gradient-boosted trees (perpetual), validated out of time on the latest labelled cutoff,
//! which nothing else touches.
//!
//! Selection and calibration use a held-out *calibration cutoff* (the latest training
//! cutoff): models are fitted on the training cutoffs whose label windows end before it,
//! the L2 penalty with the best AUC there wins, and a Platt scaling of the held-out scores
//! makes `score` a probability. The final model is refitted on every training cutoff with
//! the chosen penalty and keeps that calibration.
//!
//! Missing feature values (e.g. a ratio over zero orders) are imputed with the training
//! mean, which is 0 after standardisation; constant features get scale 1 and so cannot
//! dominate. The artifact carries feature names and order, the scaler and the feature-set
//! hash; scoring refuses an artifact whose features differ from the current definitions.

use ndarray::{Array1, Array2, ShapeBuilder};
use polars::prelude::*;
use serde::{Deserialize, Serialize};

use crate::config::ModelDef;
use crate::error::{Context, ModelError, Result};

mod logistic;

/// The one place where a polars frame becomes an ndarray 0.16 matrix (argmin's): polars uses
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

/// One column of `df` as `to_matrix` gives it (null = NaN).
pub fn to_values(df: &DataFrame, column: &str) -> Result<Array1<f64>> {
    let values = df
        .column(column)
        .ctx(column.to_string())?
        .cast(&DataType::Float64)
        .ctx(column.to_string())?;
    Ok(values
        .f64()
        .ctx(column.to_string())?
        .iter()
        .map(|v| v.unwrap_or(f64::NAN))
        .collect())
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

/// The training rows of `snapshots` (those at `cutoffs`, a column `cutoff`) when there are
/// at most `max_rows`; otherwise the rows of a sample of whole customers, about `max_rows` in
/// all. A customer is in the sample when the SHA-256 of its id falls below the sampling rate:
/// the same customers every night, and a customer is in or out at every cutoff together. Only
/// the rows taken are read (at 100M events the training cutoffs' rows take gigabytes, the
/// sample a few hundred megabytes).
pub fn training_rows(snapshots: LazyFrame, cutoffs: &[i64], max_rows: usize) -> Result<DataFrame> {
    let at_cutoffs = snapshots.filter(crate::snapshots::at_cutoffs(cutoffs));
    let rows = at_cutoffs
        .clone()
        .select([len()])
        .collect()
        .ctx("counting training rows")?;
    let rows = rows
        .column("len")
        .ctx("training rows")?
        .get(0)
        .ctx("training rows")?;
    let rows = rows.extract::<usize>().unwrap_or(0);
    if rows <= max_rows {
        return at_cutoffs.collect().ctx("training rows");
    }
    let threshold = (max_rows as f64 / rows as f64 * u64::MAX as f64) as u64;
    let sampled = col(crate::schema::event::CUSTOMER_ID).map(
        move |ids| {
            let sampled: BooleanChunked = ids
                .str()?
                .iter()
                .map(|id| Some(crate::util::customer_hash(id.unwrap_or_default()) < threshold))
                .collect();
            Ok(sampled.into_column())
        },
        |_, field| Ok(Field::new(field.name().clone(), DataType::Boolean)),
    );
    at_cutoffs
        .filter(sampled)
        .collect()
        .ctx("sampling training customers")
}

/// Standardisation with mean imputation, fitted on training rows.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Scaler {
    pub mean: Vec<f64>,
    pub scale: Vec<f64>,
}

impl Scaler {
    /// Each column's mean and standard deviation over its finite values (a column at a time,
    /// on rayon: the sums run in row order, so they are the same bits on any machine).
    pub fn fit(x: &Array2<f64>) -> Scaler {
        use rayon::prelude::*;
        let (mean, scale) = (0..x.ncols())
            .into_par_iter()
            .map(|j| {
                let finite = || x.column(j).into_iter().copied().filter(|v| v.is_finite());
                let n = finite().count().max(1) as f64;
                let m = finite().sum::<f64>() / n;
                let var = finite().map(|v| (v - m).powi(2)).sum::<f64>() / n;
                (m, if var > 1e-12 { var.sqrt() } else { 1.0 })
            })
            .unzip();
        Scaler { mean, scale }
    }

    /// `transform`, column-major (each feature's values one contiguous slice, as the
    /// logistic fit reads them), a column at a time on rayon.
    pub fn transform_columns(&self, x: &Array2<f64>) -> Array2<f64> {
        use rayon::prelude::*;
        let n = x.nrows();
        let mut z = vec![0.0; n * x.ncols()];
        z.par_chunks_mut(n.max(1)).enumerate().for_each(|(j, out)| {
            for (o, &v) in out.iter_mut().zip(x.column(j)) {
                *o = self.standardised(j, v);
            }
        });
        Array2::from_shape_vec((n, x.ncols()).f(), z).expect("n rows of every column")
    }

    fn standardised(&self, j: usize, v: f64) -> f64 {
        if v.is_finite() {
            (v - self.mean[j]) / self.scale[j]
        } else {
            0.0
        }
    }

    /// Standardises; missing (non-finite) values become 0, the training mean.
    pub fn transform(&self, x: &Array2<f64>) -> Array2<f64> {
        let mut z = x.clone();
        for (j, mut col) in z.columns_mut().into_iter().enumerate() {
            col.mapv_inplace(|v| self.standardised(j, v));
        }
        z
    }
}

/// A metric that cannot be measured (an AUC without positives) is NaN, which JSON writes as
/// null; it reads back as NaN, so an artifact with one stays readable.
fn nan_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// Validation metrics.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Metrics {
    #[serde(deserialize_with = "nan_if_null")]
    pub auc: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub pr_auc: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub log_loss: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub brier: f64,
    /// Expected calibration error over 10 equal-width probability bins.
    #[serde(deserialize_with = "nan_if_null")]
    pub ece: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub lift_top_decile: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub precision_at_5: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub precision_at_10: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub precision_at_20: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub positive_rate: f64,
    pub n: usize,
    /// Per score decile (1 = top): size, positives, rate, lift, cumulative gain.
    pub deciles: Vec<Decile>,
    /// Per probability bin: mean predicted and observed rate (the calibration curve).
    pub calibration_curve: Vec<CalibrationBin>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Decile {
    pub decile: usize,
    pub n: usize,
    pub positives: usize,
    #[serde(deserialize_with = "nan_if_null")]
    pub rate: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub lift: f64,
    /// Share of all positives captured by deciles 1..=this one.
    #[serde(deserialize_with = "nan_if_null")]
    pub cumulative_gain: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CalibrationBin {
    #[serde(deserialize_with = "nan_if_null")]
    pub lower: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub upper: f64,
    pub n: usize,
    #[serde(deserialize_with = "nan_if_null")]
    pub mean_predicted: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub observed_rate: f64,
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

/// Calibration curve over `bins` equal-width probability bins (empty bins left out).
pub fn calibration_curve(p: &[f64], labels: &[bool], bins: usize) -> Vec<CalibrationBin> {
    let mut out = Vec::new();
    for b in 0..bins {
        let (lo, hi) = (b as f64 / bins as f64, (b + 1) as f64 / bins as f64);
        let members: Vec<usize> = (0..p.len())
            .filter(|&i| p[i] >= lo && (p[i] < hi || (b + 1 == bins && p[i] <= hi)))
            .collect();
        if members.is_empty() {
            continue;
        }
        let n = members.len() as f64;
        out.push(CalibrationBin {
            lower: lo,
            upper: hi,
            n: members.len(),
            mean_predicted: members.iter().map(|&i| p[i]).sum::<f64>() / n,
            observed_rate: members.iter().filter(|&&i| labels[i]).count() as f64 / n,
        });
    }
    out
}

/// Expected calibration error: bin-size-weighted |mean predicted - observed rate|.
pub fn ece(p: &[f64], labels: &[bool]) -> f64 {
    if p.is_empty() {
        return f64::NAN;
    }
    calibration_curve(p, labels, 10)
        .iter()
        .map(|b| b.n as f64 * (b.mean_predicted - b.observed_rate).abs())
        .sum::<f64>()
        / p.len() as f64
}

/// Indices by score, best first; ties by input order (stable).
fn ranking(scores: &[f64]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    idx
}

/// Share of positives among the top `percent` % by score.
pub fn precision_at(scores: &[f64], labels: &[bool], percent: f64) -> f64 {
    if scores.is_empty() {
        return f64::NAN;
    }
    let idx = ranking(scores);
    let top = ((scores.len() as f64 * percent / 100.0).ceil() as usize).max(1);
    idx[..top].iter().filter(|&&k| labels[k]).count() as f64 / top as f64
}

/// Positive rate among the top 10% by score, divided by the overall positive rate.
pub fn lift_top_decile(scores: &[f64], labels: &[bool]) -> f64 {
    let base = labels.iter().filter(|&&l| l).count() as f64 / labels.len().max(1) as f64;
    if base == 0.0 {
        f64::NAN
    } else {
        precision_at(scores, labels, 10.0) / base
    }
}

/// Lift and cumulative gain per score decile (decile d holds ranks [d-1, d) * n / 10).
pub fn deciles(scores: &[f64], labels: &[bool]) -> Vec<Decile> {
    let n = scores.len();
    let total_pos = labels.iter().filter(|&&l| l).count();
    if n == 0 || total_pos == 0 {
        return Vec::new();
    }
    let base = total_pos as f64 / n as f64;
    let idx = ranking(scores);
    let mut out = Vec::new();
    let mut cumulative = 0;
    for d in 0..10 {
        let (lo, hi) = (d * n / 10, (d + 1) * n / 10);
        let positives = idx[lo..hi].iter().filter(|&&k| labels[k]).count();
        cumulative += positives;
        let size = hi - lo;
        let rate = if size == 0 {
            f64::NAN
        } else {
            positives as f64 / size as f64
        };
        out.push(Decile {
            decile: d + 1,
            n: size,
            positives,
            rate,
            lift: rate / base,
            cumulative_gain: cumulative as f64 / total_pos as f64,
        });
    }
    out
}

impl Metrics {
    pub fn compute(p: &[f64], labels: &[bool]) -> Metrics {
        let pos = labels.iter().filter(|&&l| l).count();
        Metrics {
            auc: auc(p, labels),
            pr_auc: average_precision(p, labels),
            log_loss: log_loss(p, labels),
            brier: brier(p, labels),
            ece: ece(p, labels),
            lift_top_decile: lift_top_decile(p, labels),
            precision_at_5: precision_at(p, labels, 5.0),
            precision_at_10: precision_at(p, labels, 10.0),
            precision_at_20: precision_at(p, labels, 20.0),
            positive_rate: pos as f64 / labels.len().max(1) as f64,
            n: labels.len(),
            deciles: deciles(p, labels),
            calibration_curve: calibration_curve(p, labels, 10),
        }
    }
}

/// Platt scaling: `p = sigmoid(a * s + b)` of the model's raw logit `s`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Calibration {
    pub a: f64,
    pub b: f64,
}

impl Calibration {
    pub const IDENTITY: Calibration = Calibration { a: 1.0, b: 0.0 };
}

/// How the L2 penalty was chosen.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Selection {
    pub calibration_cutoff: String,
    pub fit_cutoffs: Vec<String>,
    /// Every candidate tried, with its AUC on the calibration cutoff.
    pub tried: Vec<Candidate>,
    pub chosen: Family,
    pub chosen_l2: Option<f64>,
    pub why: String,
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
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
    pub calibration: Calibration,
    pub l2: f64,
    /// The gradient-boosted trees (perpetual's own serialisation), for that family.
    pub booster: Option<serde_json::Value>,
    pub selection: Option<Selection>,
    pub horizon_days: i64,
    pub training_cutoffs: Vec<String>,
    pub validation_cutoff: String,
    pub n_train: usize,
    pub n_train_positive: usize,
    pub validation: Metrics,
}

impl Artifact {
    /// The model's score in log-odds, before calibration, of each row of the raw features.
    pub fn logits(&self, x: &Array2<f64>) -> Vec<f64> {
        if let Some(b) = self.gbm() {
            return b
                .predict_proba(
                    &gbm::Matrix::new(&gbm::column_major(x), x.nrows(), x.ncols()),
                    true,
                    false,
                )
                .into_iter()
                .map(|p| {
                    let p = p.clamp(1e-9, 1.0 - 1e-9);
                    (p / (1.0 - p)).ln()
                })
                .collect();
        }
        let z = self.scaler.transform(x);
        z.rows()
            .into_iter()
            .map(|row| {
                row.iter()
                    .zip(&self.coefficients)
                    .map(|(v, c)| v * c)
                    .sum::<f64>()
                    + self.intercept
            })
            .collect()
    }

    /// Calibrated probability of a purchase for each row of the raw feature matrix.
    pub fn predict(&self, x: &Array2<f64>) -> Vec<f64> {
        let c = self.calibration;
        self.logits(x)
            .into_iter()
            .map(|s| sigmoid(c.a * s + c.b))
            .collect()
    }

    fn gbm(&self) -> Option<gbm::Booster> {
        self.booster
            .as_ref()
            .map(|v| serde_json::from_value(v.clone()).expect("booster serialised by propel"))
    }

    /// Per-feature contributions to each row's log-odds: `coefficient x standardised value`
    /// for the linear model, exact tree-SHAP values for boosted trees.
    pub fn contributions(&self, x: &Array2<f64>) -> Array2<f64> {
        if let Some(b) = self.gbm() {
            let (n, k) = (x.nrows(), x.ncols());
            let flat = b.predict_contributions(
                &gbm::Matrix::new(&gbm::column_major(x), n, k),
                gbm::ContributionsMethod::Shapley,
                true,
            );
            // One row of k feature contributions and a bias per observation.
            return Array2::from_shape_fn((n, k), |(i, j)| flat[i * (k + 1) + j]);
        }
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

/// Refuses to train below the eligibility minimums.
pub fn check_eligibility(y: &Array1<bool>, def: &ModelDef) -> Result<()> {
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
    Ok(())
}

/// Replicates positive rows so both classes weigh about the same (at most 20 copies).
fn balance(x: &Array2<f64>, y: &Array1<bool>) -> (Array2<f64>, Array1<bool>) {
    let pos = y.iter().filter(|&&l| l).count().max(1);
    let copies = ((y.len() - pos) as f64 / pos as f64)
        .round()
        .clamp(1.0, 20.0) as usize;
    let rows: Vec<usize> = (0..y.len())
        .flat_map(|i| std::iter::repeat_n(i, if y[i] { copies } else { 1 }))
        .collect();
    (
        x.select(ndarray::Axis(0), &rows),
        rows.iter().map(|&i| y[i]).collect(),
    )
}

/// Convergence of the logistic fit: the solver stops when the gradient of the summed log
/// loss is below this many units per training row, i.e. the gradient of the mean loss below
/// 1e-4 (scikit-learn's default criterion). The solver's tolerance is absolute and the loss a
/// sum, so a fixed one would never be met on large data and every fit would run to
/// `max_iterations`.
const GRADIENT_TOLERANCE_PER_ROW: f64 = 1e-4;

/// Training rows made ready for logistic fits once, for every penalty of a path: the scaler
/// fitted on them and their standardised values, column-major. Standardising and laying out
/// the rows again for each penalty was most of what a warm-started fit took (at 10M events,
/// 0.3 s of the 0.36 s of each penalty that the previous one's solution already met).
struct Standardised {
    scaler: Scaler,
    x: Array2<f64>,
    y: Vec<bool>,
}

impl Standardised {
    fn new(x: &Array2<f64>, y: &Array1<bool>) -> Standardised {
        let scaler = Scaler::fit(x);
        Standardised {
            x: scaler.transform_columns(x),
            scaler,
            y: y.to_vec(),
        }
    }

    fn fit(
        &self,
        l2: f64,
        max_iterations: u64,
        warm: Option<(&[f64], f64)>,
    ) -> Result<(Vec<f64>, f64)> {
        let init = warm.map(|(coefficients, intercept)| {
            coefficients.iter().copied().chain([intercept]).collect()
        });
        logistic::fit(
            &format!("the logistic regression with l2 = {l2}"),
            self.x.view(),
            &self.y,
            l2,
            max_iterations,
            GRADIENT_TOLERANCE_PER_ROW * self.y.len().max(1) as f64,
            init,
        )
    }
}

/// The rows a family is fitted on: as given, and standardised for the logistic regression
/// the first time one is fitted (with the positive rows replicated when the model balances
/// its classes).
struct TrainingRows<'a> {
    x: &'a Array2<f64>,
    y: &'a Array1<bool>,
    standardised: std::cell::OnceCell<Standardised>,
}

impl<'a> TrainingRows<'a> {
    fn new(x: &'a Array2<f64>, y: &'a Array1<bool>) -> TrainingRows<'a> {
        TrainingRows {
            x,
            y,
            standardised: std::cell::OnceCell::new(),
        }
    }

    fn standardised(&self, def: &ModelDef) -> &Standardised {
        self.standardised.get_or_init(|| {
            if def.balance_classes {
                let (x, y) = balance(self.x, self.y);
                Standardised::new(&x, &y)
            } else {
                Standardised::new(self.x, self.y)
            }
        })
    }
}

/// Platt scaling of held-out logits `s` against labels `y`.
pub fn fit_platt(s: &[f64], y: &[bool]) -> Result<Calibration> {
    let x = Array2::from_shape_vec((s.len(), 1), s.to_vec()).expect("one column");
    let (a, b) = logistic::fit(
        "the calibration (Platt scaling of the held-out scores)",
        x.view(),
        y,
        1e-6,
        200,
        1e-4,
        None,
    )?;
    Ok(Calibration { a: a[0], b })
}

/// Model families propel can train.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    LogisticRegression,
    GradientBoosting,
}

/// Gradient-boosted trees (perpetual: pure Rust, no hyperparameter search; NaN = missing).
mod gbm {
    pub use perpetual::booster::config::ContributionsMethod;
    pub use perpetual::objective::Objective;
    pub use perpetual::{Matrix, PerpetualBooster as Booster};

    /// Column-major copy of a matrix, the layout perpetual reads.
    pub fn column_major(x: &ndarray::Array2<f64>) -> Vec<f64> {
        x.columns().into_iter().flat_map(|c| c.to_vec()).collect()
    }

    pub fn fit(
        x: &ndarray::Array2<f64>,
        y: &ndarray::Array1<bool>,
        budget: f32,
    ) -> crate::error::Result<Booster> {
        let data = column_major(x);
        let labels: Vec<f64> = y.iter().map(|&l| l as u8 as f64).collect();
        let mut b = Booster::default()
            .set_objective(Objective::LogLoss)
            .set_budget(budget);
        b.fit(
            &Matrix::new(&data, x.nrows(), x.ncols()),
            &labels,
            None,
            None,
        )
        .map_err(|e| crate::error::ModelError::Fit(format!("gradient boosting: {e}")))?;
        Ok(b)
    }
}

/// A trained model and what went into it.
pub struct Trained {
    pub family: Family,
    pub scaler: Scaler,
    pub coefficients: Vec<f64>,
    pub intercept: f64,
    pub booster: Option<serde_json::Value>,
    pub calibration: Calibration,
    pub l2: f64,
    pub selection: Option<Selection>,
}

/// Fits one family on `x` / `y`; `l2` applies to the logistic regression, which starts
/// from `warm` (a logistic fit on the same rows) when given.
fn fit_family(
    family: Family,
    rows: &TrainingRows,
    l2: f64,
    warm: Option<&Artifact>,
    def: &ModelDef,
) -> Result<Artifact> {
    Ok(match family {
        Family::LogisticRegression => {
            let rows = rows.standardised(def);
            let warm = warm.map(|a| (a.coefficients.as_slice(), a.intercept));
            let (coefficients, intercept) = rows.fit(l2, def.max_iterations, warm)?;
            Artifact::probe(rows.scaler.clone(), coefficients, intercept)
        }
        Family::GradientBoosting => {
            let booster = gbm::fit(rows.x, rows.y, def.gbm_budget)?;
            let mut a = Artifact::probe(
                Scaler {
                    mean: vec![],
                    scale: vec![],
                },
                vec![],
                0.0,
            );
            a.booster =
                Some(serde_json::to_value(&booster).map_err(|e| ModelError::Fit(e.to_string()))?);
            a
        }
    })
}

/// Trains on the rows of `x` / `y` whose cutoffs are `cutoffs` (µs). When a training
/// cutoff lies a full horizon before the latest one, the latest is held out: each family
/// (and each L2 penalty of the logistic regression) is fitted on the earlier cutoffs, the
/// best AUC on the held-out cutoff wins, and a Platt scaling is fitted on its held-out
/// scores. The winner is then refitted on every training cutoff.
pub fn train(
    x: &Array2<f64>,
    y: &Array1<bool>,
    cutoffs: &[i64],
    horizon_micros: i64,
    def: &ModelDef,
) -> Result<Trained> {
    check_eligibility(y, def)?;
    let latest = *cutoffs.iter().max().expect("training rows");
    let held: Vec<usize> = (0..cutoffs.len())
        .filter(|&i| cutoffs[i] == latest)
        .collect();
    let fit_rows: Vec<usize> = (0..cutoffs.len())
        .filter(|&i| cutoffs[i] + horizon_micros <= latest)
        .collect();
    let y_fit: Array1<bool> = fit_rows.iter().map(|&i| y[i]).collect();
    let y_held: Vec<bool> = held.iter().map(|&i| y[i]).collect();
    let both = |v: &mut dyn Iterator<Item = bool>| {
        let v: Vec<bool> = v.collect();
        v.iter().any(|&l| l) && v.iter().any(|&l| !l)
    };
    let can_hold_out = !fit_rows.is_empty()
        && both(&mut y_fit.iter().copied())
        && both(&mut y_held.iter().copied());
    let day = |t: i64| {
        chrono::DateTime::from_timestamp_micros(t)
            .expect("valid")
            .date_naive()
            .to_string()
    };
    let (family, l2, calibration, selection, warm) = if can_hold_out {
        let x_fit = x.select(ndarray::Axis(0), &fit_rows);
        let x_held = x.select(ndarray::Axis(0), &held);
        let mut candidates: Vec<(Family, f64)> = Vec::new();
        // Larger penalties first: on a tie the simpler model wins.
        let mut grid = def.l2_grid.clone();
        grid.sort_by(|a, b| b.total_cmp(a));
        for family in &def.families {
            match family {
                Family::LogisticRegression => candidates.extend(grid.iter().map(|&l| (*family, l))),
                Family::GradientBoosting => candidates.push((*family, f64::NAN)),
            }
        }
        let mut tried = Vec::new();
        let mut best: Option<(Family, f64, f64, Artifact)> = None;
        // The penalties form a path: each logistic fit starts from the previous solution.
        let mut path: Option<Artifact> = None;
        let rows = TrainingRows::new(&x_fit, &y_fit);
        for (family, l2) in candidates {
            let started = std::time::Instant::now();
            let fitted = fit_family(family, &rows, l2, path.as_ref(), def)?;
            tracing::debug!(
                ?family,
                l2,
                ms = started.elapsed().as_millis() as u64,
                "candidate fitted"
            );
            let s = fitted.logits(&x_held);
            let a = auc(&s, &y_held);
            tried.push(Candidate {
                family,
                l2: (!l2.is_nan()).then_some(l2),
                auc: a,
            });
            if best.as_ref().is_none_or(|b| a > b.2 + 1e-9) {
                best = Some((family, l2, a, fitted.clone()));
            }
            if family == Family::LogisticRegression {
                path = Some(fitted);
            }
        }
        let (family, l2, best_auc, chosen) = best.expect("at least one candidate");
        let calibration = fit_platt(&chosen.logits(&x_held), &y_held)?;
        let fit_cutoffs: std::collections::BTreeSet<i64> =
            fit_rows.iter().map(|&i| cutoffs[i]).collect();
        let selection = Selection {
            calibration_cutoff: day(latest),
            fit_cutoffs: fit_cutoffs.into_iter().map(day).collect(),
            tried,
            chosen: family,
            chosen_l2: (!l2.is_nan()).then_some(l2),
            why: format!(
                "best AUC {best_auc:.4} on the held-out calibration cutoff {}",
                day(latest)
            ),
        };
        (family, l2, calibration, Some(selection), Some(chosen))
    } else {
        tracing::warn!(
            "too few training cutoffs to hold one out: no model selection, scores not calibrated"
        );
        // The first family of the file; a fixed penalty if the file gives one, else 1.
        let l2 = if def.l2_grid.len() == 1 {
            def.l2_grid[0]
        } else {
            1.0
        };
        (def.families[0], l2, Calibration::IDENTITY, None, None)
    };
    // The refit on every training cutoff starts from the chosen fit on the earlier ones.
    let started = std::time::Instant::now();
    let fitted = fit_family(family, &TrainingRows::new(x, y), l2, warm.as_ref(), def)?;
    tracing::debug!(
        ?family,
        l2,
        ms = started.elapsed().as_millis() as u64,
        "refitted on every training cutoff"
    );
    Ok(Trained {
        family,
        scaler: fitted.scaler,
        coefficients: fitted.coefficients,
        intercept: fitted.intercept,
        booster: fitted.booster,
        calibration,
        l2: if l2.is_nan() { 0.0 } else { l2 },
        selection,
    })
}

/// One candidate of the model selection and its held-out AUC.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Candidate {
    pub family: Family,
    pub l2: Option<f64>,
    pub auc: f64,
}

impl Artifact {
    /// A bare linear model (no names, hash or metrics): for selection and tests.
    pub fn probe(scaler: Scaler, coefficients: Vec<f64>, intercept: f64) -> Artifact {
        Artifact {
            propel_version: String::new(),
            kind: String::new(),
            feature_names: Vec::new(),
            feature_set_hash: String::new(),
            scaler,
            coefficients,
            intercept,
            calibration: Calibration::IDENTITY,
            l2: 0.0,
            booster: None,
            selection: None,
            horizon_days: 0,
            training_cutoffs: Vec::new(),
            validation_cutoff: String::new(),
            n_train: 0,
            n_train_positive: 0,
            validation: Metrics::compute(&[], &[]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_that_cannot_be_measured_survive_a_round_trip_through_json() {
        // No positive: AUC, PR-AUC and lift are NaN, written as null.
        let m = Metrics::compute(&[0.1, 0.4, 0.7], &[false, false, false]);
        assert!(m.auc.is_nan());
        let text = serde_json::to_string(&m).unwrap();
        assert!(text.contains("\"auc\":null"), "{text}");
        let back: Metrics = serde_json::from_str(&text).unwrap();
        assert!(back.auc.is_nan());
        assert_eq!(back.n, 3);
        assert_eq!(serde_json::to_string(&back).unwrap(), text);
    }

    #[test]
    fn the_fit_s_column_major_rows_are_the_scoring_rows_and_the_scaler_by_hand() {
        // Missing values (NaN, infinite) are left out of the moments and become the mean.
        let x = ndarray::array![
            [1.0, 5.0, 7.0],
            [3.0, f64::NAN, 7.0],
            [f64::INFINITY, 9.0, 7.0],
            [5.0, 7.0, 7.0]
        ];
        let scaler = Scaler::fit(&x);
        assert_eq!(scaler.mean, vec![3.0, 7.0, 7.0]);
        let sd = (8.0f64 / 3.0).sqrt();
        assert_eq!(scaler.scale, vec![sd, sd, 1.0]);
        let rows = scaler.transform(&x);
        let columns = scaler.transform_columns(&x);
        assert_eq!(columns, rows);
        assert_eq!(columns[[1, 1]], 0.0);
        assert_eq!(columns[[2, 0]], 0.0);
        // Each column one contiguous slice, as the solver reads it without a copy.
        assert!(columns.t().is_standard_layout());
        assert!(!rows.t().is_standard_layout());
    }

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
    fn platt_scaling_recovers_a_known_calibration() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        // True probability sigmoid(2 s - 1) for logits s in [-3, 3].
        let s: Vec<f64> = (0..20_000).map(|_| rng.random_range(-3.0..3.0)).collect();
        let y: Vec<bool> = s
            .iter()
            .map(|&s| rng.random::<f64>() < sigmoid(2.0 * s - 1.0))
            .collect();
        let c = fit_platt(&s, &y).unwrap();
        assert!((c.a - 2.0).abs() < 0.1 && (c.b + 1.0).abs() < 0.1, "{c:?}");
        // Calibrated scores then have a small ECE; the raw logits squashed as-is do not.
        let calibrated: Vec<f64> = s.iter().map(|&v| sigmoid(c.a * v + c.b)).collect();
        let raw: Vec<f64> = s.iter().map(|&v| sigmoid(v)).collect();
        assert!(ece(&calibrated, &y) < 0.02, "{}", ece(&calibrated, &y));
        assert!(ece(&raw, &y) > 0.05, "{}", ece(&raw, &y));
    }

    #[test]
    fn ece_deciles_and_precision_by_hand() {
        // All at 0.9 but none positive: ECE 0.9. Half positive at 0.5: 0.
        assert!((ece(&[0.9; 4], &[false; 4]) - 0.9).abs() < 1e-12);
        assert!(ece(&[0.5; 4], &[true, false, true, false]).abs() < 1e-12);
        // 20 rows ranked by score; positives at ranks 0, 1, 10, 15.
        let s: Vec<f64> = (0..20).map(|i| 1.0 - i as f64 / 20.0).collect();
        let y: Vec<bool> = (0..20).map(|i| i < 2 || i == 10 || i == 15).collect();
        let d = deciles(&s, &y);
        assert_eq!(d.len(), 10);
        assert_eq!((d[0].n, d[0].positives), (2, 2));
        assert!((d[0].lift - 5.0).abs() < 1e-12);
        assert!((d[0].cumulative_gain - 0.5).abs() < 1e-12);
        assert!((d[5].cumulative_gain - 0.75).abs() < 1e-12);
        assert!((d[9].cumulative_gain - 1.0).abs() < 1e-12);
        assert!((precision_at(&s, &y, 5.0) - 1.0).abs() < 1e-12);
        assert!((precision_at(&s, &y, 20.0) - 0.5).abs() < 1e-12);
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
        let rows = Standardised::new(&x, &y);
        let (coef, intercept) = rows.fit(1.0, 200, None).unwrap();
        let scaler = rows.scaler;
        assert!(coef[0] > 1.0, "{coef:?}");
        let art = Artifact {
            propel_version: "t".into(),
            kind: "logistic".into(),
            feature_names: vec!["a".into(), "b".into()],
            feature_set_hash: "h".into(),
            scaler,
            coefficients: coef,
            intercept,
            calibration: Calibration::IDENTITY,
            l2: 1.0,
            booster: None,
            selection: None,
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
        let err = check_eligibility(&few, &def).unwrap_err();
        assert!(
            err.to_string()
                .contains("5 positive training rows, need at least 20"),
            "{err}"
        );
        assert_eq!(err.exit_code(), crate::error::exit_code::MODEL_REFUSED);
    }

    #[test]
    fn training_rows_are_sampled_by_whole_customers_the_same_way_every_time() {
        let customers: Vec<String> = (0..2000).map(|i| format!("c_{i:016x}")).collect();
        let ids: Vec<&str> = customers
            .iter()
            .flat_map(|c| std::iter::repeat_n(c.as_str(), 3))
            .collect();
        let cutoffs: Vec<i64> = (0..ids.len()).map(|i| (i % 3) as i64).collect();
        let df = df!(
            crate::schema::event::CUSTOMER_ID => &ids,
            crate::schema::output::CUTOFF => &cutoffs,
        )
        .unwrap();
        // Small enough: every row at the cutoffs asked for.
        assert_eq!(
            training_rows(df.clone().lazy(), &[0, 1, 2], 6000)
                .unwrap()
                .height(),
            6000
        );
        assert_eq!(
            training_rows(df.clone().lazy(), &[0, 2], 6000)
                .unwrap()
                .height(),
            4000
        );
        let a = training_rows(df.clone().lazy(), &[0, 1, 2], 1500).unwrap();
        let b = training_rows(df.clone().lazy(), &[0, 1, 2], 1500).unwrap();
        assert!(a.equals(&b), "deterministic");
        // About the asked size (a binomial draw of 2000 customers at rate 1/4)...
        assert!((1200..=1800).contains(&a.height()), "{}", a.height());
        // ...and every sampled customer keeps all three of its cutoffs.
        let per_customer = a
            .column(crate::schema::event::CUSTOMER_ID)
            .unwrap()
            .as_materialized_series()
            .value_counts(false, false, "n".into(), false)
            .unwrap();
        let counts = per_customer.column("n").unwrap().u32().unwrap();
        assert!(counts.iter().all(|n| n == Some(3)));
    }
}
