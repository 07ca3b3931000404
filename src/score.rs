//! Score: every customer seen before the as-of date gets a probability of purchase within
//! the horizon, a percentile (share of customers scored lower, 0-100), a decile (1 = top)
//! and reason codes (the features that raise the score most: coefficient x standardised
//! value). Ranking ties are broken by customer id, so outputs are deterministic.

use polars::prelude::*;

use crate::error::{Context, Result};
use crate::model::{Artifact, to_matrix};
use crate::schema::{event as ev, output};

/// Scores the scoring snapshot (one row per customer, the artifact's feature columns).
/// `customers` adds `user_id` and `email_sha256`. Sorted by customer id.
pub fn score(
    snapshot: &DataFrame,
    artifact: &Artifact,
    customers: &DataFrame,
    n_reasons: usize,
) -> Result<DataFrame> {
    let snapshot = snapshot
        .sort([ev::CUSTOMER_ID], Default::default())
        .ctx("sorting snapshot")?;
    let x = to_matrix(&snapshot, &artifact.feature_names)?;
    let p = artifact.predict(&x);
    let contributions = artifact.contributions(&x);
    let n = p.len();
    // Position in the ranking: score descending, ties by customer id (rows are sorted by id).
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| p[b].total_cmp(&p[a]).then(a.cmp(&b)));
    let mut position = vec![0usize; n];
    for (r, &i) in order.iter().enumerate() {
        position[i] = r;
    }
    let mut sorted = p.clone();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let percentile: Vec<f64> = p
        .iter()
        .map(|s| {
            let lower = sorted.partition_point(|v| v < s);
            (10_000.0 * lower as f64 / n as f64).round() / 100.0
        })
        .collect();
    let decile: Vec<i32> = position.iter().map(|&r| (r * 10 / n) as i32 + 1).collect();
    let mut reasons: Vec<Vec<Option<String>>> = vec![Vec::with_capacity(n); n_reasons];
    for row in contributions.rows() {
        let mut idx: Vec<usize> = (0..row.len()).filter(|&j| row[j] > 0.0).collect();
        idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
        for (k, slot) in reasons.iter_mut().enumerate() {
            slot.push(idx.get(k).map(|&j| artifact.feature_names[j].clone()));
        }
    }
    let mut columns = vec![
        snapshot.column(ev::CUSTOMER_ID).ctx("customer_id")?.clone(),
        Column::new(output::SCORE.into(), p),
        Column::new(output::PERCENTILE.into(), percentile),
        Column::new(output::DECILE.into(), decile),
    ];
    for (k, r) in reasons.into_iter().enumerate() {
        columns.push(Column::new(format!("reason_{}", k + 1).into(), r));
    }
    let scored = DataFrame::new(n, columns).ctx("scores")?;
    scored
        .lazy()
        .join(
            customers.clone().lazy(),
            [col(ev::CUSTOMER_ID)],
            [col(ev::CUSTOMER_ID)],
            crate::util::left_join_ordered(),
        )
        .select([
            col(ev::CUSTOMER_ID),
            col(output::USER_ID),
            col(output::EMAIL_SHA256),
            all()
                .exclude_cols([ev::CUSTOMER_ID, output::USER_ID, output::EMAIL_SHA256])
                .as_expr(),
        ])
        .collect()
        .ctx("scores")
}

/// Position-based rank helper for audiences: customers ordered by score, best first.
pub fn ranked(scores: &DataFrame) -> Result<DataFrame> {
    scores
        .clone()
        .lazy()
        .sort_by_exprs(
            [col(output::SCORE), col(ev::CUSTOMER_ID)],
            SortMultipleOptions::default().with_order_descending_multi([true, false]),
        )
        .collect()
        .ctx("ranking scores")
}
