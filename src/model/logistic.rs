//! The fit of a logistic regression: the L2-penalised log loss, minimised by argmin's L-BFGS
//! with a More-Thuente line search (the loss and the solver linfa-logistic uses).
//!
//! linfa-logistic computes its products as matrix-matrix ones (the parameters as a one-column
//! matrix), which copy the whole training matrix into packed panels at every product, and it
//! computes the margins twice at each point the line search tries (once for the loss, once
//! for the gradient). Here the products are matrix-vector ones on a column-major matrix, and
//! the margins of the last point are kept for its gradient: at 10M events the seven fits of a
//! night took 9.3 s with linfa-logistic.
//!
//! The work is split over rayon in chunks of a fixed number of rows (or by column), and the
//! chunks' partial sums are added in order, so a fit gives the same bits on any number of
//! threads.

use std::sync::Mutex;

use argmin::core::{CostFunction, Executor, Gradient};
use argmin::solver::linesearch::MoreThuenteLineSearch;
use argmin::solver::quasinewton::LBFGS;
use ndarray::{Array1, ArrayView1, ArrayView2, ArrayViewMut1, s};
use rayon::prelude::*;

use crate::error::{ModelError, Result};

/// Rows per chunk of the parallel products and sums.
const ROWS_PER_CHUNK: usize = 1 << 14;

/// Past gradients L-BFGS keeps (linfa-logistic's choice).
const MEMORY: usize = 10;

/// Minimises the penalised log loss of labels `y` on the columns of `x` (standardised,
/// finite), from `init` (coefficients then intercept; zeros when `None`), until the gradient's
/// norm is below `tolerance` or after `max_iterations`. Returns the coefficients and the
/// intercept of P(label = true). The intercept is not penalised.
pub fn fit(
    x: ArrayView2<f64>,
    y: &[bool],
    l2: f64,
    max_iterations: u64,
    tolerance: f64,
    init: Option<Array1<f64>>,
) -> Result<(Vec<f64>, f64)> {
    let p = x.ncols();
    if x.nrows() != y.len() {
        return Err(ModelError::Fit(format!(
            "{} rows of features but {} labels",
            x.nrows(),
            y.len()
        ))
        .into());
    }
    if let Some((i, j)) = x
        .indexed_iter()
        .find_map(|(at, v)| (!v.is_finite()).then_some(at))
    {
        return Err(ModelError::Fit(format!(
            "feature {j} of training row {i} is not a finite number after standardisation"
        ))
        .into());
    }
    let init = init.unwrap_or_else(|| Array1::zeros(p + 1));
    if init.len() != p + 1 {
        return Err(ModelError::Fit(format!(
            "a start of {} parameters for {p} features and an intercept",
            init.len()
        ))
        .into());
    }
    // Column-major, so that each feature's values are one contiguous slice.
    let x = x
        .reversed_axes()
        .as_standard_layout()
        .reversed_axes()
        .to_owned();
    let problem = LogLoss {
        x: x.view(),
        y: y.iter().map(|&l| if l { 1.0 } else { -1.0 }).collect(),
        l2,
        last: Mutex::new(None),
    };
    let solver = LBFGS::new(MoreThuenteLineSearch::new(), MEMORY)
        .with_tolerance_grad(tolerance)
        .map_err(|e| ModelError::Fit(e.to_string()))?;
    let result = Executor::new(problem, solver)
        .configure(|state| state.param(init.clone()).max_iters(max_iterations))
        .timer(false)
        .run()
        .map_err(|e| ModelError::Fit(e.to_string()))?;
    let w = result.state.best_param.unwrap_or(init);
    Ok((w.slice(s![..p]).to_vec(), w[p]))
}

/// The loss of a fit: `-sum(log sigmoid(y (x w + b))) + l2 / 2 |w|^2` with `y` in {-1, 1}.
struct LogLoss<'a> {
    /// Column-major.
    x: ArrayView2<'a, f64>,
    y: Vec<f64>,
    l2: f64,
    /// The parameters last asked for and their signed margins `y (x w + b)`: the line search
    /// asks for the loss at a point and then for its gradient.
    last: Mutex<Option<(Array1<f64>, Vec<f64>)>>,
}

impl LogLoss<'_> {
    /// The signed margins at `w`, kept as the last.
    fn margins(&self, w: &Array1<f64>) -> Vec<f64> {
        let mut last = self.last.lock().expect("no fit panics holding it");
        if let Some((at, m)) = last.as_ref()
            && at == w
        {
            return m.clone();
        }
        let p = self.x.ncols();
        let (coefficients, intercept) = (w.slice(s![..p]), w[p]);
        let mut m = vec![0.0; self.x.nrows()];
        m.par_chunks_mut(ROWS_PER_CHUNK)
            .zip(self.y.par_chunks(ROWS_PER_CHUNK))
            .enumerate()
            .for_each(|(chunk, (out, y))| {
                let rows = chunk * ROWS_PER_CHUNK..chunk * ROWS_PER_CHUNK + out.len();
                let mut out = ArrayViewMut1::from(out);
                out.fill(intercept);
                for (j, &c) in coefficients.iter().enumerate() {
                    out.scaled_add(c, &self.x.slice(s![rows.clone(), j]));
                }
                out *= &ArrayView1::from(y);
            });
        *last = Some((w.clone(), m.clone()));
        m
    }
}

/// `f` of each chunk of `values`, summed chunk by chunk and then in order.
fn chunked_sum(values: &[f64], f: impl Fn(f64) -> f64 + Sync) -> f64 {
    values
        .par_chunks(ROWS_PER_CHUNK)
        .map(|c| c.iter().map(|&v| f(v)).sum::<f64>())
        .collect::<Vec<_>>()
        .into_iter()
        .sum()
}

/// `log(sigmoid(v))`, without overflow either way.
fn log_sigmoid(v: f64) -> f64 {
    if v > 0.0 {
        -(-v).exp().ln_1p()
    } else {
        v - v.exp().ln_1p()
    }
}

fn sigmoid(v: f64) -> f64 {
    1.0 / (1.0 + (-v).exp())
}

impl CostFunction for LogLoss<'_> {
    type Param = Array1<f64>;
    type Output = f64;

    fn cost(&self, w: &Array1<f64>) -> std::result::Result<f64, argmin::core::Error> {
        let p = self.x.ncols();
        let coefficients = w.slice(s![..p]);
        let loss = -chunked_sum(&self.margins(w), log_sigmoid);
        Ok(loss + 0.5 * self.l2 * coefficients.dot(&coefficients))
    }
}

impl Gradient for LogLoss<'_> {
    type Param = Array1<f64>;
    type Gradient = Array1<f64>;

    fn gradient(&self, w: &Array1<f64>) -> std::result::Result<Array1<f64>, argmin::core::Error> {
        let p = self.x.ncols();
        // d loss / d margin of each row, signed back: (sigmoid(y z) - 1) y.
        let mut r = self.margins(w);
        r.par_chunks_mut(ROWS_PER_CHUNK)
            .zip(self.y.par_chunks(ROWS_PER_CHUNK))
            .for_each(|(r, y)| {
                for (r, y) in r.iter_mut().zip(y) {
                    *r = (sigmoid(*r) - 1.0) * y;
                }
            });
        let r = ArrayView1::from(&r);
        let mut g: Vec<f64> = (0..p)
            .into_par_iter()
            .map(|j| self.x.column(j).dot(&r) + self.l2 * w[j])
            .collect();
        g.push(chunked_sum(r.as_slice().expect("contiguous"), |v| v));
        Ok(Array1::from(g))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    /// Rows of two features; the label leans on the first.
    fn data(n: usize) -> (Array2<f64>, Vec<bool>) {
        let x = Array2::from_shape_fn((n, 2), |(i, j)| {
            let v = if j == 0 {
                (i % 17) as f64
            } else {
                ((i * 7) % 13) as f64
            };
            (v - 6.0) / 4.0
        });
        let y = (0..n).map(|i| (i % 17) >= 11 || i % 5 == 0).collect();
        (x, y)
    }

    /// The gradient of the loss, by central differences.
    fn numeric_gradient(loss: &LogLoss, w: &Array1<f64>) -> Vec<f64> {
        (0..w.len())
            .map(|k| {
                let h = 1e-6;
                let (mut up, mut down) = (w.clone(), w.clone());
                up[k] += h;
                down[k] -= h;
                (loss.cost(&up).unwrap() - loss.cost(&down).unwrap()) / (2.0 * h)
            })
            .collect()
    }

    #[test]
    fn the_gradient_is_the_loss_s_slope() {
        // More rows than a chunk, so that the chunked sums are exercised.
        let (x, y) = data(ROWS_PER_CHUNK + 1234);
        let x = x
            .reversed_axes()
            .as_standard_layout()
            .reversed_axes()
            .to_owned();
        let loss = LogLoss {
            x: x.view(),
            y: y.iter().map(|&l| if l { 1.0 } else { -1.0 }).collect(),
            l2: 3.0,
            last: Mutex::new(None),
        };
        let w = Array1::from(vec![0.7, -0.4, 0.2]);
        let g = loss.gradient(&w).unwrap();
        for (a, b) in g.iter().zip(numeric_gradient(&loss, &w)) {
            assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "{g} against {b}");
        }
        // At zero every row's loss is log 2.
        let zero = Array1::zeros(3);
        let n = y.len() as f64;
        assert!((loss.cost(&zero).unwrap() - n * 2f64.ln()).abs() < 1e-6 * n);
    }

    #[test]
    fn the_fit_is_the_minimum_and_the_same_on_any_number_of_threads() {
        let (x, y) = data(3 * ROWS_PER_CHUNK + 77);
        let run = |threads: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| fit(x.view(), &y, 1.0, 200, 1e-8, None).unwrap())
        };
        let (coefficients, intercept) = run(1);
        assert!(coefficients[0] > 0.5, "{coefficients:?}");
        // At the minimum the gradient vanishes (that of the mean loss, to rounding).
        let loss = LogLoss {
            x: x.view(),
            y: y.iter().map(|&l| if l { 1.0 } else { -1.0 }).collect(),
            l2: 1.0,
            last: Mutex::new(None),
        };
        let w = Array1::from_iter(coefficients.iter().copied().chain([intercept]));
        let g = loss.gradient(&w).unwrap();
        assert!(g.iter().all(|v| v.abs() < 1e-9 * y.len() as f64), "{g}");
        // Bit for bit the same on three threads.
        assert_eq!(run(3), (coefficients, intercept));
    }

    #[test]
    fn features_that_are_not_finite_are_refused() {
        let (mut x, y) = data(50);
        x[[7, 1]] = f64::NAN;
        let err = fit(x.view(), &y, 1.0, 10, 1e-4, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("feature 1 of training row 7"), "{err}");
    }
}
