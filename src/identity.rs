//! Identity: identifiers are nodes of a graph, events that carry two of them are edges, and
//! each connected component is one customer. A cookie (`domain_userid`) that ever carried a
//! `user_id` joins that user, transitively: cookie A -> user X <- cookie B is one customer.
//! E-mail user ids are normalised (trimmed, lower case) and stored only as SHA-256.
//! The customer id is derived from the component's earliest-seen identifier, so it does not
//! depend on input order and stays the same while that identifier is in the data.

use std::collections::HashMap;

use polars::prelude::*;

use crate::error::{Context, Result};
use crate::schema::{event as ev, output};
use crate::util::sha256_hex;

/// Identifier kinds, as written to `identity.parquet`.
pub mod kind {
    pub const DOMAIN_USERID: &str = "domain_userid";
    pub const NETWORK_USERID: &str = "network_userid";
    pub const USER_ID: &str = "user_id";
    pub const EMAIL_SHA256: &str = "email_sha256";
}

pub const KIND: &str = "kind";
pub const IDENTIFIER: &str = "identifier";
pub const FIRST_SEEN: &str = "first_seen";
pub const LAST_SEEN: &str = "last_seen";
const NODE: &str = "_node";
const USER_NODE: &str = "_user_node";
const COOKIE_NODE: &str = "_cookie_node";

/// Result of identity resolution.
pub struct Resolved {
    /// The events with a `customer_id` column.
    pub events: DataFrame,
    /// kind, identifier, customer_id, first_seen, last_seen: one row per identifier.
    pub identity: DataFrame,
    /// customer_id, user_id (latest non-e-mail user id), email_sha256 (latest e-mail).
    pub customers: DataFrame,
}

/// Normalises an e-mail for hashing: trimmed, lower case.
pub fn normalise_email(raw: &str) -> String {
    raw.trim().to_lowercase()
}

/// The graph node of a raw `user_id`: an e-mail becomes `email_sha256:<hash>`.
fn user_node(raw: &str) -> String {
    let trimmed = raw.trim();
    if trimmed.contains('@') {
        format!(
            "{}:{}",
            kind::EMAIL_SHA256,
            sha256_hex(&normalise_email(trimmed))
        )
    } else {
        format!("{}:{}", kind::USER_ID, trimmed)
    }
}

/// Union-find with path halving and union by size.
struct DisjointSets {
    parent: Vec<usize>,
    size: Vec<usize>,
}

impl DisjointSets {
    fn new(n: usize) -> Self {
        DisjointSets {
            parent: (0..n).collect(),
            size: vec![1; n],
        }
    }

    fn find(&mut self, mut x: usize) -> usize {
        while self.parent[x] != x {
            self.parent[x] = self.parent[self.parent[x]];
            x = self.parent[x];
        }
        x
    }

    fn union(&mut self, a: usize, b: usize) {
        let (mut a, mut b) = (self.find(a), self.find(b));
        if a == b {
            return;
        }
        if self.size[a] < self.size[b] {
            std::mem::swap(&mut a, &mut b);
        }
        self.parent[b] = a;
        self.size[a] += self.size[b];
    }
}

fn strings(df: &DataFrame, name: &str) -> Result<Vec<Option<String>>> {
    Ok(df
        .column(name)
        .ctx(name.to_string())?
        .str()
        .ctx(name.to_string())?
        .iter()
        .map(|v| v.map(str::to_string))
        .collect())
}

fn micros(df: &DataFrame, name: &str) -> Result<Vec<i64>> {
    let s = df
        .column(name)
        .ctx(name.to_string())?
        .as_materialized_series()
        .cast(&DataType::Int64)
        .ctx(name.to_string())?;
    Ok(s.i64()
        .ctx(name.to_string())?
        .iter()
        .map(|v| v.unwrap_or(0))
        .collect())
}

/// Resolves identities; see the module documentation.
pub fn resolve(events: &DataFrame) -> Result<Resolved> {
    // Raw user id -> node, computed once per distinct value (hashing e-mails).
    let raw_ids = events
        .column(ev::USER_ID)
        .ctx("user_id")?
        .as_materialized_series()
        .unique_stable()
        .ctx("user_id")?
        .drop_nulls();
    let raw_ids: Vec<String> = raw_ids
        .str()
        .ctx("user_id")?
        .iter()
        .flatten()
        .map(str::to_string)
        .collect();
    let nodes: Vec<String> = raw_ids.iter().map(|r| user_node(r)).collect();
    let user_map = DataFrame::new(
        raw_ids.len(),
        vec![
            Column::new(ev::USER_ID.into(), raw_ids),
            Column::new(USER_NODE.into(), nodes),
        ],
    )
    .ctx("user map")?;

    let with_nodes = events
        .clone()
        .lazy()
        .join(
            user_map.lazy(),
            [col(ev::USER_ID)],
            [col(ev::USER_ID)],
            crate::util::left_join_ordered(),
        )
        .with_columns([
            (lit(format!("{}:", kind::DOMAIN_USERID)) + col(ev::DOMAIN_USERID)).alias(COOKIE_NODE),
        ])
        .with_columns([coalesce(&[
            col(COOKIE_NODE),
            col(USER_NODE),
            lit(format!("{}:", kind::NETWORK_USERID)) + col(ev::NETWORK_USERID),
        ])
        .alias(NODE)])
        .collect()
        .ctx("identity nodes")?;

    // Every identifier with its first and last sighting.
    let node_stats = concat(
        [
            with_nodes
                .clone()
                .lazy()
                .select([col(NODE).alias(NODE), col(ev::TSTAMP)]),
            with_nodes
                .clone()
                .lazy()
                .select([col(USER_NODE).alias(NODE), col(ev::TSTAMP)]),
        ],
        UnionArgs::default(),
    )
    .ctx("identity nodes")?
    .filter(col(NODE).is_not_null())
    .group_by([col(NODE)])
    .agg([
        col(ev::TSTAMP).min().alias(FIRST_SEEN),
        col(ev::TSTAMP).max().alias(LAST_SEEN),
    ])
    .sort([NODE], Default::default())
    .collect()
    .ctx("identity nodes")?;
    let edges = with_nodes
        .clone()
        .lazy()
        .filter(
            col(COOKIE_NODE)
                .is_not_null()
                .and(col(USER_NODE).is_not_null()),
        )
        .select([col(COOKIE_NODE), col(USER_NODE)])
        .unique(None, UniqueKeepStrategy::Any)
        .collect()
        .ctx("identity edges")?;

    let names: Vec<String> = strings(&node_stats, NODE)?
        .into_iter()
        .map(Option::unwrap_or_default)
        .collect();
    let first_seen = micros(&node_stats, FIRST_SEEN)?;
    let index: HashMap<&str, usize> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i))
        .collect();
    let mut sets = DisjointSets::new(names.len());
    for (a, b) in strings(&edges, COOKIE_NODE)?
        .into_iter()
        .zip(strings(&edges, USER_NODE)?)
    {
        if let (Some(a), Some(b)) = (a, b) {
            sets.union(index[a.as_str()], index[b.as_str()]);
        }
    }
    // Representative: the earliest-seen identifier of the component (ties: by name).
    let mut rep: HashMap<usize, usize> = HashMap::new();
    for i in 0..names.len() {
        let root = sets.find(i);
        let best = rep.entry(root).or_insert(i);
        if (first_seen[i], &names[i]) < (first_seen[*best], &names[*best]) {
            *best = i;
        }
    }
    let customer_ids: Vec<String> = (0..names.len())
        .map(|i| format!("c_{}", &sha256_hex(&names[rep[&sets.find(i)]])[..16]))
        .collect();
    let (kinds, identifiers): (Vec<String>, Vec<String>) = names
        .iter()
        .map(|n| {
            let (k, v) = n.split_once(':').expect("node is kind:value");
            (k.to_string(), v.to_string())
        })
        .unzip();
    let node_map = DataFrame::new(
        names.len(),
        vec![
            Column::new(NODE.into(), names),
            Column::new(ev::CUSTOMER_ID.into(), customer_ids),
        ],
    )
    .ctx("identity map")?;

    let events_out = with_nodes
        .lazy()
        .join(
            node_map.clone().lazy(),
            [col(NODE)],
            [col(NODE)],
            crate::util::left_join_ordered(),
        )
        .drop(cols([NODE, USER_NODE, COOKIE_NODE]))
        .collect()
        .ctx("assigning customer ids")?;

    let mut identity = node_stats.clone();
    identity
        .with_column(Column::new(KIND.into(), kinds))
        .ctx("identity")?;
    identity
        .with_column(Column::new(IDENTIFIER.into(), identifiers))
        .ctx("identity")?;
    let identity = identity
        .lazy()
        .join(
            node_map.lazy(),
            [col(NODE)],
            [col(NODE)],
            JoinArgs::new(JoinType::Left),
        )
        .select([
            col(KIND),
            col(IDENTIFIER),
            col(ev::CUSTOMER_ID),
            col(FIRST_SEEN),
            col(LAST_SEEN),
        ])
        .sort([ev::CUSTOMER_ID, KIND, IDENTIFIER], Default::default())
        .collect()
        .ctx("identity")?;

    // Latest user id and e-mail hash per customer.
    let latest = |k: &str, alias: &str| {
        identity
            .clone()
            .lazy()
            .filter(col(KIND).eq(lit(k)))
            .sort_by_exprs(
                [col(ev::CUSTOMER_ID), col(LAST_SEEN), col(IDENTIFIER)],
                SortMultipleOptions::default(),
            )
            .group_by([col(ev::CUSTOMER_ID)])
            .agg([col(IDENTIFIER).last().alias(alias)])
    };
    let customers = identity
        .clone()
        .lazy()
        .select([col(ev::CUSTOMER_ID)])
        .unique(None, UniqueKeepStrategy::Any)
        .join(
            latest(kind::USER_ID, output::USER_ID),
            [col(ev::CUSTOMER_ID)],
            [col(ev::CUSTOMER_ID)],
            JoinArgs::new(JoinType::Left),
        )
        .join(
            latest(kind::EMAIL_SHA256, output::EMAIL_SHA256),
            [col(ev::CUSTOMER_ID)],
            [col(ev::CUSTOMER_ID)],
            JoinArgs::new(JoinType::Left),
        )
        .sort([ev::CUSTOMER_ID], Default::default())
        .collect()
        .ctx("customers")?;
    Ok(Resolved {
        events: events_out,
        identity,
        customers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(rows: &[(&str, Option<&str>, Option<&str>, i64)]) -> DataFrame {
        DataFrame::new(
            rows.len(),
            vec![
                Column::new(
                    ev::EVENT_ID.into(),
                    rows.iter().map(|r| r.0).collect::<Vec<_>>(),
                ),
                Column::new(
                    ev::DOMAIN_USERID.into(),
                    rows.iter().map(|r| r.1).collect::<Vec<_>>(),
                ),
                Column::new(
                    ev::USER_ID.into(),
                    rows.iter().map(|r| r.2).collect::<Vec<_>>(),
                ),
                Column::new(
                    ev::NETWORK_USERID.into(),
                    rows.iter().map(|_| None::<&str>).collect::<Vec<_>>(),
                ),
                Column::new(
                    ev::TSTAMP.into(),
                    rows.iter().map(|r| r.3).collect::<Vec<_>>(),
                )
                .cast(&crate::util::utc())
                .unwrap(),
            ],
        )
        .unwrap()
    }

    fn customer_of(r: &Resolved, event_id: &str) -> String {
        let df = r
            .events
            .clone()
            .lazy()
            .filter(col(ev::EVENT_ID).eq(lit(event_id)))
            .collect()
            .unwrap();
        df.column(ev::CUSTOMER_ID)
            .unwrap()
            .str()
            .unwrap()
            .get(0)
            .unwrap()
            .to_string()
    }

    #[test]
    fn cookies_join_through_users_transitively_and_emails_normalise() {
        // cookie A -> user X <- cookie B -> e-mail E (typed two ways) <- cookie C; cookie D alone.
        let r = resolve(&events(&[
            ("1", Some("A"), None, 10),
            ("2", Some("A"), Some("X"), 20),
            ("3", Some("B"), Some("X"), 30),
            ("4", Some("B"), Some("Jane@Example.com "), 40),
            ("5", Some("C"), Some("jane@example.com"), 50),
            ("6", Some("D"), None, 5),
        ]))
        .unwrap();
        let a = customer_of(&r, "1");
        for e in ["2", "3", "4", "5"] {
            assert_eq!(customer_of(&r, e), a, "event {e}");
        }
        assert_ne!(customer_of(&r, "6"), a);
        assert_eq!(r.customers.height(), 2);
        // The e-mail is stored hashed, never raw.
        let ids: Vec<String> = r
            .identity
            .column(IDENTIFIER)
            .unwrap()
            .str()
            .unwrap()
            .iter()
            .flatten()
            .map(str::to_string)
            .collect();
        assert!(ids.contains(&sha256_hex("jane@example.com")));
        assert!(!ids.iter().any(|i| i.contains('@')));
    }

    #[test]
    fn customer_ids_do_not_depend_on_input_order() {
        let rows = [
            ("1", Some("A"), None, 10),
            ("2", Some("A"), Some("X"), 20),
            ("3", Some("B"), Some("X"), 30),
            ("4", Some("C"), None, 40),
        ];
        let mut reversed = rows;
        reversed.reverse();
        let r1 = resolve(&events(&rows)).unwrap();
        let r2 = resolve(&events(&reversed)).unwrap();
        for e in ["1", "2", "3", "4"] {
            assert_eq!(customer_of(&r1, e), customer_of(&r2, e));
        }
        assert!(r1.identity.equals_missing(&r2.identity));
    }
}
