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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Scaler;

    fn artifact() -> Artifact {
        let mut a = Artifact::probe(
            Scaler {
                mean: vec![0.0, 0.0],
                scale: vec![1.0, 1.0],
            },
            vec![1.0, -1.0],
            0.0,
        );
        a.feature_names = vec!["a".into(), "b".into()];
        a
    }

    #[test]
    fn percentiles_deciles_and_reasons_by_hand() {
        // Scores are sigmoid(a - b): c1 = s(2), c2 = s(0), c3 = s(0), c4 = s(-3).
        let snapshot = df!(
            "customer_id" => ["c3", "c1", "c4", "c2"],
            "a" => [0.0, 3.0, 0.0, 1.0],
            "b" => [0.0, 1.0, 3.0, 1.0]
        )
        .unwrap();
        let customers = df!(
            "customer_id" => ["c1", "c2", "c3", "c4"],
            "user_id" => [Some("u1"), None, None, None],
            "email_sha256" => [None, Some("h2"), None, None::<&str>]
        )
        .unwrap();
        let s = score(&snapshot, &artifact(), &customers, 2).unwrap();
        let ids: Vec<&str> = s
            .column("customer_id")
            .unwrap()
            .str()
            .unwrap()
            .iter()
            .flatten()
            .collect();
        assert_eq!(ids, ["c1", "c2", "c3", "c4"]);
        let pct: Vec<f64> = s
            .column("percentile")
            .unwrap()
            .f64()
            .unwrap()
            .iter()
            .flatten()
            .collect();
        // Share of customers scored strictly lower: c1 3/4, c2 and c3 tie at 1/4, c4 0.
        assert_eq!(pct, [75.0, 25.0, 25.0, 0.0]);
        // Deciles by position (ties by customer id): c1 pos 0, c2 pos 1, c3 pos 2, c4 pos 3.
        let dec: Vec<i32> = s
            .column("decile")
            .unwrap()
            .i32()
            .unwrap()
            .iter()
            .flatten()
            .collect();
        assert_eq!(dec, [1, 3, 6, 8]);
        // Reasons: positive contributions only, largest first.
        let r1: Vec<Option<&str>> = s
            .column("reason_1")
            .unwrap()
            .str()
            .unwrap()
            .iter()
            .collect();
        assert_eq!(r1, [Some("a"), Some("a"), None, None]);
        let r2: Vec<Option<&str>> = s
            .column("reason_2")
            .unwrap()
            .str()
            .unwrap()
            .iter()
            .collect();
        assert_eq!(r2, [None, None, None, None]);
        assert_eq!(
            s.column("user_id").unwrap().str().unwrap().get(0),
            Some("u1")
        );
        assert_eq!(
            s.column("email_sha256").unwrap().str().unwrap().get(1),
            Some("h2")
        );
        // Ranked: best first, ties by customer id.
        let ranked = ranked(&s).unwrap();
        let ids: Vec<&str> = ranked
            .column("customer_id")
            .unwrap()
            .str()
            .unwrap()
            .iter()
            .flatten()
            .collect();
        assert_eq!(&ids[..2], ["c1", "c2"]);
    }
}
