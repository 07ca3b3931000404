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
/// intercept of P(label = true). The intercept is not penalised. `what` names the fit in
/// errors.
pub fn fit(
    what: &str,
    x: ArrayView2<f64>,
    y: &[bool],
    l2: f64,
    max_iterations: u64,
    tolerance: f64,
    init: Option<Array1<f64>>,
) -> Result<(Vec<f64>, f64)> {
    let failed = |message: String| -> crate::error::Error {
        ModelError::Fit(format!("{what}: {message}")).into()
    };
    let refuse = |message: String| Err(failed(message));
    let p = x.ncols();
    if x.nrows() != y.len() {
        return refuse(format!(
            "expected a label for each of {} rows, found {} labels",
            x.nrows(),
            y.len()
        ));
    }
    let trues = y.iter().filter(|&&l| l).count();
    if trues == 0 || trues == y.len() {
        return refuse(format!(
            "expected rows of both labels, found {trues} true and {} false",
            y.len() - trues
        ));
    }
    if let Some(((i, j), v)) = x.indexed_iter().find(|(_, v)| !v.is_finite()) {
        return refuse(format!(
            "expected finite values, found {v} in column {j} of row {i}"
        ));
    }
    let init = init.unwrap_or_else(|| Array1::zeros(p + 1));
    if init.len() != p + 1 || init.iter().any(|v| !v.is_finite()) {
        return refuse(format!(
            "expected a start of {} finite parameters ({p} coefficients and an intercept), found {init}",
            p + 1
        ));
    }
    // Column-major, so that each feature's values are one contiguous slice (borrowed when
    // they are already).
    let transposed = x.reversed_axes();
    let x = transposed.as_standard_layout().reversed_axes();
    let problem = LogLoss {
        x: x.view(),
        y: y.iter().map(|&l| if l { 1.0 } else { -1.0 }).collect(),
        l2,
        last: Mutex::new(None),
    };
    let solver = LBFGS::new(MoreThuenteLineSearch::new(), MEMORY)
        .with_tolerance_grad(tolerance)
        .map_err(|e| failed(format!("the solver's settings: {e}")))?;
    let result = Executor::new(problem, solver)
        .configure(|state| state.param(init.clone()).max_iters(max_iterations))
        .timer(false)
        .run()
        .map_err(|e| failed(format!("the solver stopped: {e}")))?;
    let w = result.state.best_param.unwrap_or(init);
    Ok((w.slice(s![..p]).to_vec(), w[p]))
}

/// The loss of a fit: `-sum(log sigmoid(y (x w + b))) + l2 / 2 |w|^2` with `y` in {-1, 1}.
struct LogLoss<'a> {
    /// Column-major.
    x: ArrayView2<'a, f64>,
    y: Vec<f64>,
    l2: f64,
    /// The point last asked about: the line search asks for the loss at a point and then for
    /// its gradient, and L-BFGS asks for the gradient at the point the line search chose.
    last: Mutex<Option<Point>>,
}

/// Parameters, their signed margins `y (x w + b)` and, once asked for, their gradient.
struct Point {
    w: Array1<f64>,
    margins: Vec<f64>,
    gradient: Option<Array1<f64>>,
}

impl LogLoss<'_> {
    /// `f` of the point `w`, worked out unless it is the last one asked about.
    fn at<R>(&self, w: &Array1<f64>, f: impl FnOnce(&mut Point) -> R) -> R {
        let mut last = self.last.lock().expect("no fit panics holding it");
        if !matches!(last.as_ref(), Some(point) if point.w == w) {
            *last = Some(Point {
                w: w.clone(),
                margins: self.margins(w),
                gradient: None,
            });
        }
        f(last.as_mut().expect("set above"))
    }

    /// The signed margins `y (x w + b)`.
    fn margins(&self, w: &Array1<f64>) -> Vec<f64> {
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
        m
    }

    /// The gradient at `point`.
    fn gradient_at(&self, point: &Point) -> Array1<f64> {
        let p = self.x.ncols();
        // d loss / d margin of each row, signed back: (sigmoid(y z) - 1) y.
        let mut r = vec![0.0; point.margins.len()];
        r.par_chunks_mut(ROWS_PER_CHUNK)
            .zip(point.margins.par_chunks(ROWS_PER_CHUNK))
            .zip(self.y.par_chunks(ROWS_PER_CHUNK))
            .for_each(|((r, m), y)| {
                for ((r, m), y) in r.iter_mut().zip(m).zip(y) {
                    *r = (sigmoid(*m) - 1.0) * y;
                }
            });
        let r = ArrayView1::from(&r);
        let mut g: Vec<f64> = (0..p)
            .into_par_iter()
            .map(|j| self.x.column(j).dot(&r) + self.l2 * point.w[j])
            .collect();
        g.push(chunked_sum(r.as_slice().expect("contiguous"), |v| v));
        Array1::from(g)
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
        let loss = -self.at(w, |point| chunked_sum(&point.margins, log_sigmoid));
        Ok(loss + 0.5 * self.l2 * coefficients.dot(&coefficients))
    }
}

impl Gradient for LogLoss<'_> {
    type Param = Array1<f64>;
    type Gradient = Array1<f64>;

    fn gradient(&self, w: &Array1<f64>) -> std::result::Result<Array1<f64>, argmin::core::Error> {
        Ok(self.at(w, |point| {
            let g = match point.gradient.take() {
                Some(g) => g,
                None => self.gradient_at(point),
            };
            point.gradient = Some(g.clone());
            g
        }))
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
                .install(|| fit("test", x.view(), &y, 1.0, 200, 1e-8, None).unwrap())
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
    fn a_warm_start_at_the_optimum_stays_there() {
        let (x, y) = data(2000);
        let (coefficients, intercept) = fit("cold", x.view(), &y, 1.0, 200, 1e-6, None).unwrap();
        let start = Array1::from_iter(coefficients.iter().copied().chain([intercept]));
        let (warm, warm_intercept) =
            fit("warm", x.view(), &y, 1.0, 200, 1e-6, Some(start)).unwrap();
        for (a, b) in warm
            .iter()
            .chain([&warm_intercept])
            .zip(coefficients.iter().chain([&intercept]))
        {
            assert!(
                (a - b).abs() < 1e-6,
                "{warm:?} {warm_intercept} against {coefficients:?} {intercept}"
            );
        }
    }

    #[test]
    fn what_cannot_be_fitted_is_refused_with_what_was_found() {
        let (mut x, y) = data(50);
        let refused = |x: &Array2<f64>, y: &[bool], init: Option<Array1<f64>>| {
            fit("the test fit", x.view(), y, 1.0, 10, 1e-4, init)
                .unwrap_err()
                .to_string()
        };
        // One label only: the intercept would run off to infinity.
        let err = refused(&x, &[false; 50], None);
        assert!(
            err.contains("the test fit") && err.contains("found 0 true and 50 false"),
            "{err}"
        );
        let err = refused(&x, &y[..10], None);
        assert!(err.contains("each of 50 rows, found 10 labels"), "{err}");
        let err = refused(&x, &y, Some(Array1::zeros(2)));
        assert!(err.contains("a start of 3 finite parameters"), "{err}");
        x[[7, 1]] = f64::NAN;
        let err = refused(&x, &y, None);
        assert!(err.contains("found NaN in column 1 of row 7"), "{err}");
    }
}
