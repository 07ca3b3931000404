//! Score: every customer seen before the as-of date gets a probability of purchase within
//! the horizon, a percentile (share of customers scored lower, 0-100), a decile (1 = top)
//! and reason codes (the features that raise the score most: coefficient x standardised
//! value). Ranking ties are broken by customer id, so outputs are deterministic.

use polars::prelude::*;

use crate::error::{Context, Result};
use crate::model::{Artifact, to_matrix};
use crate::schema::{event as ev, output};

/// Rows scored at a time: the feature matrix and contributions of a chunk are held, never
/// those of every customer (at 100M events, 1.1 million customers: 0.7 GB each).
const CHUNK: usize = 1 << 16;

/// Scores and the sum of every feature's contributions over the customers scored.
pub struct Scored {
    /// customer_id, user_id, email_sha256, score, percentile, decile, reason_1...
    pub scores: DataFrame,
    pub contributions: Contributions,
}

/// Each feature's contributions to the scores' log-odds, summed over the customers scored:
/// as they are (the direction) and in absolute value (the importance).
pub struct Contributions {
    pub customers: usize,
    pub sum: Vec<f64>,
    pub abs: Vec<f64>,
}

/// Scores the scoring snapshot (one row per customer, the artifact's feature columns), a
/// chunk of customers at a time. `customers` adds `user_id` and `email_sha256`. Sorted by
/// customer id.
pub fn score(
    snapshot: &DataFrame,
    artifact: &Artifact,
    customers: &DataFrame,
    n_reasons: usize,
) -> Result<Scored> {
    let ids = snapshot
        .column(ev::CUSTOMER_ID)
        .ctx("customer_id")?
        .str()
        .ctx("customer_id")?;
    let in_order = ids.iter().zip(ids.iter().skip(1)).all(|(a, b)| a <= b);
    let snapshot = if in_order {
        std::borrow::Cow::Borrowed(snapshot)
    } else {
        std::borrow::Cow::Owned(
            snapshot
                .sort([ev::CUSTOMER_ID], Default::default())
                .ctx("sorting snapshot")?,
        )
    };
    let n = snapshot.height();
    let k = artifact.feature_names.len();
    let mut p = Vec::with_capacity(n);
    let mut reasons: Vec<Vec<Option<&str>>> = vec![Vec::with_capacity(n); n_reasons];
    let mut totals = Contributions {
        customers: n,
        sum: vec![0.0; k],
        abs: vec![0.0; k],
    };
    for start in (0..n).step_by(CHUNK) {
        let chunk = snapshot.slice(start as i64, CHUNK.min(n - start));
        let x = to_matrix(&chunk, &artifact.feature_names)?;
        p.extend(artifact.predict(&x));
        for row in artifact.contributions(&x).rows() {
            for (j, c) in row.iter().enumerate() {
                totals.sum[j] += c;
                totals.abs[j] += c.abs();
            }
            let mut idx: Vec<usize> = (0..row.len()).filter(|&j| row[j] > 0.0).collect();
            idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
            for (r, slot) in reasons.iter_mut().enumerate() {
                slot.push(idx.get(r).map(|&j| artifact.feature_names[j].as_str()));
            }
        }
    }
    // Position in the ranking: score descending, ties by customer id (rows are sorted by id).
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| p[b].total_cmp(&p[a]).then(a.cmp(&b)));
    let mut position = vec![0usize; n];
    for (r, &i) in order.iter().enumerate() {
        position[i] = r;
    }
    drop(order);
    let mut sorted = p.clone();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let percentile: Vec<f64> = p
        .iter()
        .map(|s| {
            let lower = sorted.partition_point(|v| v < s);
            (10_000.0 * lower as f64 / n as f64).round() / 100.0
        })
        .collect();
    drop(sorted);
    let decile: Vec<i32> = position.iter().map(|&r| (r * 10 / n) as i32 + 1).collect();
    let mut columns = vec![
        snapshot.column(ev::CUSTOMER_ID).ctx("customer_id")?.clone(),
        Column::new(output::SCORE.into(), p),
        Column::new(output::PERCENTILE.into(), percentile),
        Column::new(output::DECILE.into(), decile),
    ];
    for (r, names) in reasons.into_iter().enumerate() {
        columns.push(Column::new(format!("reason_{}", r + 1).into(), names));
    }
    let scored = DataFrame::new(n, columns).ctx("scores")?;
    let scores = scored
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
        .ctx("scores")?;
    Ok(Scored {
        scores,
        contributions: totals,
    })
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
        let scored = score(&snapshot, &artifact(), &customers, 2).unwrap();
        let s = &scored.scores;
        // Contributions a - b over the four customers: a 4, b -5.
        assert_eq!(scored.contributions.sum, [4.0, -5.0]);
        assert_eq!(scored.contributions.abs, [4.0, 5.0]);
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
        let ranked = ranked(s).unwrap();
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

    #[test]
    fn scores_taken_a_chunk_at_a_time_are_those_of_all_rows_at_once() {
        let n = CHUNK * 2 + 123;
        let ids: Vec<String> = (0..n).map(|i| format!("c{i:07}")).collect();
        let a: Vec<f64> = (0..n).map(|i| ((i * 7919) % 1000) as f64 / 100.0).collect();
        let b: Vec<f64> = (0..n)
            .map(|i| ((i * 104_729) % 997) as f64 / 50.0)
            .collect();
        let snapshot = df!("customer_id" => &ids, "a" => &a, "b" => &b).unwrap();
        let customers = df!(
            "customer_id" => &ids,
            "user_id" => vec![None::<&str>; n],
            "email_sha256" => vec![None::<&str>; n],
        )
        .unwrap();
        let mut artifact = artifact();
        artifact.scaler = Scaler {
            mean: vec![5.0, 10.0],
            scale: vec![2.9, 5.7],
        };
        let scored = score(&snapshot, &artifact, &customers, 1).unwrap();
        let x = to_matrix(&snapshot, &artifact.feature_names).unwrap();
        let all_at_once = artifact.predict(&x);
        let chunked: Vec<f64> = scored
            .scores
            .column("score")
            .unwrap()
            .f64()
            .unwrap()
            .into_no_null_iter()
            .collect();
        assert_eq!(chunked, all_at_once);
        let contributions = artifact.contributions(&x);
        for j in 0..2 {
            let sum: f64 = contributions.column(j).iter().sum();
            assert!((scored.contributions.sum[j] - sum).abs() < 1e-6 * n as f64);
        }
    }
}
