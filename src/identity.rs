//! Identity: a first-party identity graph. Identifiers of several kinds (cookies, user ids,
//! hashed e-mails, mobile client-session user ids, offline loyalty numbers) are nodes; two
//! identifiers carried by one event are an edge; each connected component is one customer.
//! So cookie A -> user X <- cookie B -> e-mail E <- offline id O is one customer, where
//! Snowplow's own models stitch a cookie to its latest user id only.
//!
//! **Persistence.** The graph (nodes and edges) is state kept between runs. A customer keeps
//! its id night after night; when customers merge, the oldest id survives (the customer
//! whose earliest identifier was seen first) and the merge is logged; if a guard later cuts
//! a component in two, the part holding the oldest identifier keeps the id. Ids are derived
//! from the earliest identifier, so one run over all days gives the ids that nightly runs do.
//!
//! **Guards.** A node linked to more distinct identifiers than its kind's limit (a shared
//! computer, a test e-mail, a constant cookie) is *shared*: its edges are ignored, so it
//! cannot glue people together. Shared nodes are reported.
//!
//! **Deletion.** Suppressed customers (listed by customer id or e-mail hash) are removed
//! from the state, from the events and so from every output.
//!
//! E-mails are normalised (trimmed, lower case) and kept only as SHA-256.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::Path;

use polars::prelude::*;

use crate::error::{Context, Result};
use crate::schema::{event as ev, output};
use crate::util::sha256_hex;

/// Identifier kinds, as written to `identity.parquet`.
pub mod kind {
    pub const DOMAIN_USERID: &str = "domain_userid";
    pub const NETWORK_USERID: &str = "network_userid";
    pub const CLIENT_SESSION_USERID: &str = "client_session_userid";
    pub const USER_ID: &str = "user_id";
    pub const EMAIL_SHA256: &str = "email_sha256";
    pub const LOYALTY_ID: &str = "loyalty_id";
    pub const ALL: [&str; 6] = [
        DOMAIN_USERID,
        NETWORK_USERID,
        CLIENT_SESSION_USERID,
        USER_ID,
        EMAIL_SHA256,
        LOYALTY_ID,
    ];
}

pub const KIND: &str = "kind";
pub const IDENTIFIER: &str = "identifier";
pub const FIRST_SEEN: &str = "first_seen";
pub const LAST_SEEN: &str = "last_seen";
pub const NODE: &str = "node";
pub const DEGREE: &str = "degree";
pub const LIMIT: &str = "limit";
/// Hex digits of a new customer id's hash (`c_` and 10 digits: 40 bits, a collision salted
/// away below). Twelve bytes fit inside an Arrow string view, so the per-customer stages,
/// which group, join and sort by customer id, compare ids without reading a string buffer.
const ID_DIGITS: usize = 10;
const EDGE_A: &str = "a";
const EDGE_B: &str = "b";
/// The customer id a node had the night before (`resolve_combinations`).
const PREVIOUS_ID: &str = "_previous_id";

/// Default guard limits: how many distinct identifiers one identifier of a kind may link.
/// A device links few people; a person links many devices over the years.
pub fn default_limits() -> BTreeMap<String, usize> {
    [
        (kind::DOMAIN_USERID, 10),
        (kind::NETWORK_USERID, 10),
        (kind::CLIENT_SESSION_USERID, 10),
        (kind::USER_ID, 100),
        (kind::EMAIL_SHA256, 100),
        (kind::LOYALTY_ID, 100),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// Who must be forgotten: customer ids and e-mail hashes.
#[derive(Debug, Clone, Default)]
pub struct Suppression {
    pub customer_ids: BTreeSet<String>,
    pub email_sha256: BTreeSet<String>,
}

impl Suppression {
    pub fn is_empty(&self) -> bool {
        self.customer_ids.is_empty() && self.email_sha256.is_empty()
    }

    /// Reads a CSV with any of the columns `customer_id`, `email_sha256`, `email` (raw
    /// e-mails are normalised and hashed on reading).
    pub fn load(path: &Path) -> Result<Suppression> {
        let df = CsvReadOptions::default()
            .with_has_header(true)
            .with_infer_schema_length(Some(0))
            .try_into_reader_with_file_path(Some(path.to_path_buf()))
            .and_then(|r| r.finish())
            .ctx(format!("reading suppression list {}", path.display()))?;
        let values = |name: &str| -> Vec<String> {
            df.column(name)
                .ok()
                .and_then(|c| {
                    c.str()
                        .ok()
                        .map(|s| s.iter().flatten().map(|v| v.trim().to_string()).collect())
                })
                .unwrap_or_default()
        };
        let mut s = Suppression {
            customer_ids: values("customer_id")
                .into_iter()
                .filter(|v| !v.is_empty())
                .collect(),
            email_sha256: values("email_sha256")
                .into_iter()
                .map(|v| v.to_lowercase())
                .filter(|v| !v.is_empty())
                .collect(),
        };
        s.email_sha256.extend(
            values("email")
                .iter()
                .filter(|v| !v.is_empty())
                .map(|e| sha256_hex(&normalise_email(e))),
        );
        if !["customer_id", "email_sha256", "email"]
            .iter()
            .any(|c| df.column(c).is_ok())
        {
            return Err(crate::error::ConfigError::one(
                path.display().to_string(),
                format!(
                    "expected a column customer_id, email_sha256 or email; found {:?}",
                    df.get_column_names()
                ),
            )
            .into());
        }
        Ok(s)
    }
}

/// The identity graph kept between runs.
#[derive(Debug, Clone)]
pub struct IdentityState {
    /// node, customer_id, first_seen, last_seen (µs).
    pub nodes: DataFrame,
    /// a, b: node keys, a < b.
    pub edges: DataFrame,
}

impl IdentityState {
    const NODES: &'static str = "identity_nodes.parquet";
    const EDGES: &'static str = "identity_edges.parquet";
    /// The files `write` writes into a directory.
    pub const FILES: [&'static str; 2] = [Self::NODES, Self::EDGES];

    /// Loads the state from `dir`, or None on a first run.
    pub fn load(dir: &Path) -> Result<Option<IdentityState>> {
        let (n, e) = (dir.join(Self::NODES), dir.join(Self::EDGES));
        if !n.exists() {
            return Ok(None);
        }
        let read = |p: &Path| -> Result<DataFrame> {
            let f = std::fs::File::open(p).ctx(format!("opening {}", p.display()))?;
            ParquetReader::new(f)
                .finish()
                .ctx(format!("reading {}", p.display()))
        };
        Ok(Some(IdentityState {
            nodes: read(&n)?,
            edges: read(&e)?,
        }))
    }

    /// Writes the state into a new state generation `dir` (see `state::StateDir`).
    pub fn write(&self, dir: &Path) -> Result<()> {
        for (name, df) in [(Self::NODES, &self.nodes), (Self::EDGES, &self.edges)] {
            crate::util::write_state(df, &dir.join(name))?;
        }
        Ok(())
    }
}

/// Result of identity resolution.
pub struct Resolved {
    /// The customer of each identity key (an event's first identifier: its kind's number and
    /// raw value), which `customer_ids` gives events.
    pub keys: DataFrame,
    /// kind, identifier, customer_id, first_seen, last_seen: one row per identifier.
    pub identity: DataFrame,
    /// customer_id, user_id (latest non-e-mail user id), email_sha256 (latest e-mail).
    pub customers: DataFrame,
    /// Customer ids that this run merged or split: previous_id, customer_id, reason.
    pub changes: DataFrame,
    /// Identifiers whose edges the guards ignore: kind, identifier, degree, limit.
    pub shared: DataFrame,
    /// The state to keep for the next run.
    pub state: IdentityState,
    pub suppressed_customers: usize,
    /// The events of suppressed customers removed (`customer_ids`; 0 from
    /// `resolve_combinations`, whose caller counts them).
    pub suppressed_events: usize,
}

/// Normalises an e-mail for hashing: trimmed, lower case.
pub fn normalise_email(raw: &str) -> String {
    raw.trim().to_lowercase()
}

fn node(kind: &str, value: &str) -> String {
    format!("{kind}:{value}")
}

fn kind_of(node: &str) -> &str {
    node.split_once(':').map(|(k, _)| k).unwrap_or("")
}

/// Identifiers of a person (as opposed to a device or browser).
fn is_person(kind: &str) -> bool {
    matches!(kind, kind::USER_ID | kind::EMAIL_SHA256 | kind::LOYALTY_ID)
}

/// Whether a neighbour of kind `other` counts towards the guard limit of a node of kind
/// `kind`: a device is judged by the people it is seen with (a browser whose network cookie
/// rotates is still one browser); a network cookie also by the browser cookies it spans (a
/// constant network id glues browsers); a person identifier by everything it links.
fn counts_towards(kind: &str, other: &str) -> bool {
    match kind {
        kind::DOMAIN_USERID | kind::CLIENT_SESSION_USERID => is_person(other),
        kind::NETWORK_USERID => is_person(other) || other == kind::DOMAIN_USERID,
        _ => true,
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

/// The node columns of an event, person-level identifiers first: an event is attached to
/// its first non-null node, so that a login on a shared device goes to the person.
const NODE_COLUMNS: [(&str, &str); 6] = [
    ("_n_user", ev::USER_ID),
    ("_n_email", ev::EMAIL),
    ("_n_loyalty", ev::LOYALTY_ID),
    ("_n_client", ev::CLIENT_USERID),
    ("_n_cookie", ev::DOMAIN_USERID),
    ("_n_network", ev::NETWORK_USERID),
];
const PRIMARY: &str = "_node";
/// An event's identity key: which identifier column comes first (`NODE_COLUMNS` order) and
/// its raw value. It names the event's primary node, and so its customer.
const KEY_KIND: &str = "_key_kind";
const KEY_VALUE: &str = "_key_value";

/// The raw identifier columns as the graph reads them: a user id or e-mail that is blank
/// after trimming is no identifier (null).
fn identifier_columns() -> [Expr; 6] {
    let blank_is_null = |c: &str| {
        when(
            col(c)
                .str()
                .strip_chars(lit(NULL))
                .str()
                .len_bytes()
                .gt(lit(0u32)),
        )
        .then(col(c))
        .otherwise(lit(NULL).cast(DataType::String))
        .alias(c)
    };
    NODE_COLUMNS.map(|(_, c)| match c {
        ev::USER_ID | ev::EMAIL => blank_is_null(c),
        _ => col(c),
    })
}

/// The identity key of rows that carry `identifier_columns()`: the first non-null one.
fn key_exprs() -> [Expr; 2] {
    let kind = NODE_COLUMNS.iter().enumerate().rev().fold(
        lit(NULL).cast(DataType::UInt32),
        |rest, (i, (_, c))| {
            when(col(*c).is_not_null())
                .then(lit(i as u32))
                .otherwise(rest)
        },
    );
    [
        kind.alias(KEY_KIND),
        coalesce(&NODE_COLUMNS.map(|(_, c)| col(c))).alias(KEY_VALUE),
    ]
}

/// Maps distinct raw values of `column` to node keys with `f` (e-mail hashing happens once
/// per distinct value, not per event).
fn value_map(
    rows: &DataFrame,
    column: &str,
    alias: &str,
    f: impl Fn(&str) -> String,
) -> Result<LazyFrame> {
    let raw = rows
        .column(column)
        .ctx(column.to_string())?
        .as_materialized_series()
        .unique_stable()
        .ctx(column.to_string())?
        .drop_nulls();
    let raw: Vec<String> = raw
        .str()
        .ctx(column.to_string())?
        .iter()
        .flatten()
        .map(str::to_string)
        .collect();
    let nodes: Vec<String> = raw.iter().map(|r| f(r)).collect();
    Ok(DataFrame::new(
        raw.len(),
        vec![
            Column::new(column.into(), raw),
            Column::new(alias.into(), nodes),
        ],
    )
    .ctx("identity values")?
    .lazy())
}

/// Resolves identities (see the module documentation), and gives the events their
/// `customer_id` (`customer_ids`: suppressed customers' events removed).
pub fn resolve(
    events: &DataFrame,
    previous: Option<&IdentityState>,
    limits: &BTreeMap<String, usize>,
    suppression: &Suppression,
) -> Result<(Resolved, DataFrame)> {
    let mut resolved = resolve_combinations(combinations(events)?, previous, limits, suppression)?;
    let with_customers = customer_ids(events.clone(), &Customers::of(&resolved.keys)?)?;
    resolved.suppressed_events = events.height() - with_customers.height();
    Ok((resolved, with_customers))
}

/// The distinct identifier combinations of `events`, with their first and last sighting: the
/// graph is built from them, never from every event, so its cost grows with identifiers, not
/// events. Their order does not matter, since the graph is built in sorted maps and sets.
pub fn combinations(events: &DataFrame) -> Result<DataFrame> {
    // Text of their own: the events' identifiers are let go once the graph is built.
    Ok(crate::util::compact_text(grouped_combinations(events)?))
}

/// `combinations`, their text still the events'. Grouped on the streaming engine (10M events:
/// the identity stage 4.4 s against 5.2-7.7 s in memory).
fn grouped_combinations(events: &DataFrame) -> Result<DataFrame> {
    let mut laps = crate::util::Laps::start("identity");
    let combinations = events
        .clone()
        .lazy()
        .select(
            identifier_columns()
                .into_iter()
                .chain([col(ev::TSTAMP).cast(DataType::Int64)])
                .collect::<Vec<_>>(),
        )
        .group_by(NODE_COLUMNS.map(|(_, c)| col(c)))
        .agg([
            col(ev::TSTAMP).min().alias(FIRST_SEEN),
            col(ev::TSTAMP).max().alias(LAST_SEEN),
        ])
        .collect_with_engine(Engine::Streaming)
        .ctx("identity combinations")?
        .unwrap_single();
    laps.lap("combinations");
    Ok(combinations)
}

/// The `combinations` of a night's events read a part at a time (`add`), as those of all of
/// them (`finish`). Parts cut by event id each hold most of the night's combinations (100M
/// events in 100 parts: 0.9 of 2.6 million each), so each distinct combination's identifiers
/// are kept once, as the key of a hash map, and a part's sightings only widen its first and
/// last: regrouping the parts' frames held the combinations so far, the new ones and their
/// union at once (100M events: the run's peak, 4 GiB).
#[derive(Default)]
pub struct CombinationSet {
    /// Each combination's identifiers (`encode_identifier`, in `NODE_COLUMNS` order), to its
    /// place in `seen`.
    index: polars_utils::aliases::PlHashMap<Vec<u8>, u32>,
    /// First and last sighting (µs) of each combination, in the order first added.
    seen: Vec<(Option<i64>, Option<i64>)>,
}

impl CombinationSet {
    /// Adds the combinations of `events`.
    pub fn add(&mut self, events: &DataFrame) -> Result<()> {
        let part = grouped_combinations(events)?;
        let text = |c: &str| -> Result<&StringChunked> {
            part.column(c)
                .ctx("identity combinations")?
                .str()
                .ctx("identity combinations")
        };
        let times = |c: &str| -> Result<&Int64Chunked> {
            part.column(c)
                .ctx("identity combinations")?
                .i64()
                .ctx("identity combinations")
        };
        let mut identifiers = NODE_COLUMNS
            .iter()
            .map(|(_, c)| text(c).map(|ca| ca.iter()))
            .collect::<Result<Vec<_>>>()?;
        let mut key = Vec::new();
        for (first, last) in times(FIRST_SEEN)?.iter().zip(times(LAST_SEEN)?.iter()) {
            key.clear();
            for values in &mut identifiers {
                encode_identifier(values.next().expect("columns of one frame"), &mut key);
            }
            let next = u32::try_from(self.seen.len()).expect("fewer than 4 billion combinations");
            let at = *self.index.entry_ref(key.as_slice()).or_insert(next);
            if at == next {
                self.seen.push((first, last));
            } else {
                let seen = &mut self.seen[at as usize];
                seen.0 = earliest(seen.0, first);
                seen.1 = latest(seen.1, last);
            }
        }
        Ok(())
    }

    /// The distinct combinations added, as `combinations` gives them.
    pub fn finish(self) -> Result<DataFrame> {
        let mut keys: Vec<Vec<u8>> = vec![Vec::new(); self.seen.len()];
        for (key, at) in self.index {
            keys[at as usize] = key;
        }
        let mut fields: Vec<Vec<Option<&str>>> =
            vec![Vec::with_capacity(keys.len()); NODE_COLUMNS.len()];
        for key in &keys {
            let mut rest: &[u8] = key;
            for values in &mut fields {
                values.push(decode_identifier(&mut rest));
            }
        }
        let height = keys.len();
        let columns = NODE_COLUMNS
            .iter()
            .zip(fields)
            .map(|((_, c), values)| Column::new((*c).into(), values))
            .chain([
                Column::new(
                    FIRST_SEEN.into(),
                    self.seen.iter().map(|s| s.0).collect::<Vec<_>>(),
                ),
                Column::new(
                    LAST_SEEN.into(),
                    self.seen.iter().map(|s| s.1).collect::<Vec<_>>(),
                ),
            ])
            .collect();
        DataFrame::new(height, columns).ctx("identity combinations")
    }
}

/// The earlier of two sightings, either of which may be missing.
fn earliest(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    a.into_iter().chain(b).min()
}

/// The later of two sightings, either of which may be missing.
fn latest(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    a.into_iter().chain(b).max()
}

/// Appends an identifier to a combination's key: a byte saying whether it is there, then its
/// length and bytes, so that no two combinations share a key.
fn encode_identifier(value: Option<&str>, key: &mut Vec<u8>) {
    match value {
        None => key.push(0),
        Some(value) => {
            key.push(1);
            let len = u32::try_from(value.len()).expect("identifiers under 4 GiB");
            key.extend_from_slice(&len.to_le_bytes());
            key.extend_from_slice(value.as_bytes());
        }
    }
}

/// The identifier at the start of `key` (`encode_identifier`), which is moved past it.
fn decode_identifier<'a>(key: &mut &'a [u8]) -> Option<&'a str> {
    let (present, rest) = key.split_first().expect("an encoded identifier");
    if *present == 0 {
        *key = rest;
        return None;
    }
    let (len, rest) = rest.split_at(4);
    let len = u32::from_le_bytes(len.try_into().expect("four bytes")) as usize;
    let (value, rest) = rest.split_at(len);
    *key = rest;
    Some(std::str::from_utf8(value).expect("encoded from text"))
}

/// Resolves identities from the identifier `combinations` of a night's events
/// (`combinations`): everything `resolve` gives but the events, which `customer_ids` then
/// gives their customer from `Resolved::keys`.
pub fn resolve_combinations(
    combinations: DataFrame,
    previous: Option<&IdentityState>,
    limits: &BTreeMap<String, usize>,
    suppression: &Suppression,
) -> Result<Resolved> {
    let user = |raw: &str| {
        if raw.contains('@') {
            node(kind::EMAIL_SHA256, &sha256_hex(&normalise_email(raw)))
        } else {
            node(kind::USER_ID, raw.trim())
        }
    };
    let email = |raw: &str| node(kind::EMAIL_SHA256, &sha256_hex(&normalise_email(raw)));
    let mut laps = crate::util::Laps::start("identity");
    tracing::debug!(count = combinations.height(), "identifier combinations");
    let mut lf = combinations
        .clone()
        .lazy()
        .join(
            value_map(&combinations, ev::USER_ID, "_n_user", user)?,
            [col(ev::USER_ID)],
            [col(ev::USER_ID)],
            crate::util::left_join_ordered(),
        )
        .join(
            value_map(&combinations, ev::EMAIL, "_n_email", email)?,
            [col(ev::EMAIL)],
            [col(ev::EMAIL)],
            crate::util::left_join_ordered(),
        );
    for (alias, column, k) in [
        ("_n_loyalty", ev::LOYALTY_ID, kind::LOYALTY_ID),
        ("_n_client", ev::CLIENT_USERID, kind::CLIENT_SESSION_USERID),
        ("_n_cookie", ev::DOMAIN_USERID, kind::DOMAIN_USERID),
        ("_n_network", ev::NETWORK_USERID, kind::NETWORK_USERID),
    ] {
        lf = lf.with_column((lit(format!("{k}:")) + col(column)).alias(alias));
    }
    let with_nodes = lf
        .with_column(coalesce(&NODE_COLUMNS.map(|(a, _)| col(a))).alias(PRIMARY))
        .with_columns(key_exprs())
        .collect()
        .ctx("identity nodes")?;

    // Nodes seen now, with first and last sighting.
    let sightings: Vec<LazyFrame> = NODE_COLUMNS
        .iter()
        .map(|(a, _)| {
            with_nodes
                .clone()
                .lazy()
                .select([col(*a).alias(NODE), col(FIRST_SEEN), col(LAST_SEEN)])
        })
        .collect();
    let nodes_now = concat(sightings, UnionArgs::default())
        .ctx("identity nodes")?
        .filter(col(NODE).is_not_null())
        .group_by([col(NODE)])
        .agg([col(FIRST_SEEN).min(), col(LAST_SEEN).max()])
        .collect()
        .ctx("identity nodes")?;
    // Edges seen now: every pair of identifiers on one event.
    let mut pair_frames = Vec::new();
    for (i, (a, _)) in NODE_COLUMNS.iter().enumerate() {
        for (b, _) in &NODE_COLUMNS[i + 1..] {
            let (a, b) = (*a, *b);
            pair_frames.push(
                with_nodes
                    .clone()
                    .lazy()
                    .filter(col(a).is_not_null().and(col(b).is_not_null()))
                    .select([col(a).alias(EDGE_A), col(b).alias(EDGE_B)]),
            );
        }
    }
    let edges_now = concat(pair_frames, UnionArgs::default())
        .ctx("identity edges")?
        .unique(None, UniqueKeepStrategy::Any)
        .collect()
        .ctx("identity edges")?;
    // The customer each event's identity key names is looked up once the graph is solved: of
    // the combinations only the keys are kept until then.
    let primaries = with_nodes
        .lazy()
        .filter(col(PRIMARY).is_not_null())
        .select([col(KEY_KIND), col(KEY_VALUE), col(PRIMARY)])
        .unique(None, UniqueKeepStrategy::Any)
        .collect()
        .ctx("identity keys")?;

    // Every node, seen before or now, with its first and last sighting and the customer it
    // belonged to before; sorted by name, a node's position is its index in the graph, which
    // is built on indices, never on the names themselves (100M events: 3.6 million nodes).
    let micros_of = |c: &str| col(c).cast(DataType::Int64).fill_null(lit(0i64));
    let mut sightings = vec![nodes_now.lazy().select([
        col(NODE),
        micros_of(FIRST_SEEN),
        micros_of(LAST_SEEN),
        lit(NULL).cast(DataType::String).alias(PREVIOUS_ID),
    ])];
    if let Some(prev) = previous {
        sightings.push(
            prev.nodes
                .clone()
                .lazy()
                .filter(
                    col(NODE)
                        .is_not_null()
                        .and(col(ev::CUSTOMER_ID).is_not_null()),
                )
                .select([
                    col(NODE).cast(DataType::String),
                    micros_of(FIRST_SEEN),
                    micros_of(LAST_SEEN),
                    col(ev::CUSTOMER_ID)
                        .cast(DataType::String)
                        .alias(PREVIOUS_ID),
                ]),
        );
    }
    let nodes = concat(sightings, UnionArgs::default())
        .ctx("identity nodes")?
        .group_by([col(NODE)])
        .agg([
            col(FIRST_SEEN).min(),
            col(LAST_SEEN).max(),
            col(PREVIOUS_ID).drop_nulls().first(),
        ])
        .sort([NODE], Default::default())
        .collect()
        .ctx("identity nodes")?;
    let names: Vec<&str> = nodes
        .column(NODE)
        .ctx("identity nodes")?
        .str()
        .ctx("identity nodes")?
        .iter()
        .map(|n| n.expect("grouped nodes are not null"))
        .collect();
    let kinds: Vec<&str> = names.iter().map(|n| kind_of(n)).collect();
    let seen: Vec<(i64, i64)> = micros(&nodes, FIRST_SEEN)?
        .into_iter()
        .zip(micros(&nodes, LAST_SEEN)?)
        .collect();
    let previous_id: Vec<Option<&str>> = nodes
        .column(PREVIOUS_ID)
        .ctx("identity nodes")?
        .str()
        .ctx("identity nodes")?
        .iter()
        .collect();

    // Every edge, before or now, by node index (the smaller first), sorted.
    let index = nodes
        .select([NODE])
        .ctx("identity nodes")?
        .lazy()
        .with_row_index("_i", None);
    let index_of = |end: &str, alias: &str| {
        index
            .clone()
            .select([col(NODE).alias(end), col("_i").alias(alias)])
    };
    let mut edges = vec![edges_now.lazy()];
    if let Some(prev) = previous {
        edges.push(prev.edges.clone().lazy().select([
            col(EDGE_A).cast(DataType::String),
            col(EDGE_B).cast(DataType::String),
        ]));
    }
    let inner = || JoinArgs::new(JoinType::Inner);
    let edges = concat(edges, UnionArgs::default())
        .ctx("identity edges")?
        .filter(col(EDGE_A).neq(col(EDGE_B)))
        .join(
            index_of(EDGE_A, "_a"),
            [col(EDGE_A)],
            [col(EDGE_A)],
            inner(),
        )
        .join(
            index_of(EDGE_B, "_b"),
            [col(EDGE_B)],
            [col(EDGE_B)],
            inner(),
        )
        .select([
            when(col("_a").lt(col("_b")))
                .then(col("_a"))
                .otherwise(col("_b"))
                .alias(EDGE_A),
            when(col("_a").lt(col("_b")))
                .then(col("_b"))
                .otherwise(col("_a"))
                .alias(EDGE_B),
        ])
        .unique(None, UniqueKeepStrategy::Any)
        .sort([EDGE_A, EDGE_B], Default::default())
        .collect()
        .ctx("identity edges")?;
    let end = |name: &str| -> Result<Vec<usize>> {
        Ok(edges
            .column(name)
            .ctx("identity edges")?
            .idx()
            .ctx("identity edges")?
            .into_no_null_iter()
            .map(|i| i as usize)
            .collect())
    };
    let edge_idx: Vec<(usize, usize)> = end(EDGE_A)?.into_iter().zip(end(EDGE_B)?).collect();
    drop(edges);

    // Guards on the cumulative graph: a node's degree counts the neighbours of the kinds
    // that count towards its limit (each edge is one neighbour: the edges are distinct).
    let mut degree = vec![0usize; names.len()];
    for &(a, b) in &edge_idx {
        if counts_towards(kinds[a], kinds[b]) {
            degree[a] += 1;
        }
        if counts_towards(kinds[b], kinds[a]) {
            degree[b] += 1;
        }
    }
    let shared: Vec<bool> = (0..names.len())
        .map(|i| limits.get(kinds[i]).is_some_and(|&l| degree[i] > l))
        .collect();
    let mut sets = DisjointSets::new(names.len());
    for &(ia, ib) in &edge_idx {
        if !shared[ia] && !shared[ib] {
            sets.union(ia, ib);
        }
    }
    // The components in order of their oldest identifier, each its nodes from the oldest:
    // the nodes sorted by their component's first node, then by their own rank.
    let rank = |i: usize| (seen[i].0, names[i]);
    let root: Vec<usize> = (0..names.len()).map(|i| sets.find(i)).collect();
    let mut first_of = vec![usize::MAX; names.len()];
    for (i, &r) in root.iter().enumerate() {
        if first_of[r] == usize::MAX || rank(i) < rank(first_of[r]) {
            first_of[r] = i;
        }
    }
    let mut order: Vec<usize> = (0..names.len()).collect();
    order.sort_by(|&a, &b| {
        rank(first_of[root[a]])
            .cmp(&rank(first_of[root[b]]))
            .then(rank(a).cmp(&rank(b)))
    });
    let components = order.chunk_by(|&a, &b| root[a] == root[b]);

    // Previous ids ranked by their oldest identifier: the older id survives a merge.
    let mut id_rank: HashMap<&str, (i64, &str)> = HashMap::new();
    for (i, id) in previous_id.iter().enumerate() {
        if let Some(id) = id {
            let r = rank(i);
            id_rank
                .entry(id)
                .and_modify(|x| *x = (*x).min(r))
                .or_insert(r);
        }
    }
    // Each component's customer id, and each node's component.
    let mut ids: Vec<String> = Vec::new();
    let mut taken: HashSet<String> = HashSet::new();
    let mut component_of = vec![0usize; names.len()];
    let mut changes: Vec<(String, String, &'static str)> = Vec::new();
    for c in components {
        let mut claimed: Vec<&str> = c.iter().filter_map(|&i| previous_id[i]).collect();
        claimed.sort_by(|a, b| id_rank[a].cmp(&id_rank[b]).then(a.cmp(b)));
        claimed.dedup();
        let id = match claimed.iter().find(|p| !taken.contains(**p)) {
            Some(p) => p.to_string(),
            None => {
                let mut salt = 0;
                loop {
                    let seed = if salt == 0 {
                        names[c[0]].to_string()
                    } else {
                        format!("{}#{salt}", names[c[0]])
                    };
                    let id = format!("c_{}", &sha256_hex(&seed)[..ID_DIGITS]);
                    // Never reuse an id that is taken or that another component may claim.
                    if !taken.contains(&id) && !id_rank.contains_key(id.as_str()) {
                        break id;
                    }
                    salt += 1;
                }
            }
        };
        for p in &claimed {
            if *p != id {
                let reason = if taken.contains(*p) {
                    "split"
                } else {
                    "merged"
                };
                changes.push((p.to_string(), id.clone(), reason));
            }
        }
        taken.insert(id.clone());
        for &i in c {
            component_of[i] = ids.len();
        }
        ids.push(id);
    }
    drop(taken);
    // Suppression: customers named by id, or owning a suppressed e-mail, are forgotten.
    let mut suppressed: Vec<bool> = ids
        .iter()
        .map(|id| suppression.customer_ids.contains(id))
        .collect();
    for (i, name) in names.iter().enumerate() {
        if kinds[i] == kind::EMAIL_SHA256
            && suppression
                .email_sha256
                .contains(&name[kind::EMAIL_SHA256.len() + 1..])
        {
            suppressed[component_of[i]] = true;
        }
    }
    let suppressed_customers = suppressed.iter().filter(|&&s| s).count();
    let keep: Vec<bool> = component_of.iter().map(|&c| !suppressed[c]).collect();

    let idx: Vec<usize> = (0..names.len()).filter(|&i| keep[i]).collect();
    let mut node_df = nodes
        .select([NODE, FIRST_SEEN, LAST_SEEN])
        .ctx("identity state")?;
    node_df
        .insert_column(
            1,
            Column::new(
                ev::CUSTOMER_ID.into(),
                component_of
                    .iter()
                    .map(|&c| ids[c].as_str())
                    .collect::<Vec<_>>(),
            ),
        )
        .ctx("identity state")?;
    let node_df = if idx.len() == names.len() {
        node_df
    } else {
        node_df
            .filter(&keep.iter().copied().collect::<BooleanChunked>())
            .ctx("identity state")?
    };
    let kept_edges: Vec<(usize, usize)> = edge_idx
        .iter()
        .copied()
        .filter(|&(ia, ib)| keep[ia] && keep[ib])
        .collect();
    let edge_df = DataFrame::new(
        kept_edges.len(),
        vec![
            Column::new(
                EDGE_A.into(),
                kept_edges.iter().map(|e| names[e.0]).collect::<Vec<_>>(),
            ),
            Column::new(
                EDGE_B.into(),
                kept_edges.iter().map(|e| names[e.1]).collect::<Vec<_>>(),
            ),
        ],
    )
    .ctx("identity state")?;
    let shared_idx: Vec<usize> = (0..names.len()).filter(|&i| shared[i] && keep[i]).collect();
    let shared_df = DataFrame::new(
        shared_idx.len(),
        vec![
            Column::new(
                KIND.into(),
                shared_idx.iter().map(|&i| kinds[i]).collect::<Vec<_>>(),
            ),
            Column::new(
                IDENTIFIER.into(),
                shared_idx
                    .iter()
                    .map(|&i| &names[i][kinds[i].len() + 1..])
                    .collect::<Vec<_>>(),
            ),
            Column::new(
                DEGREE.into(),
                shared_idx
                    .iter()
                    .map(|&i| degree[i] as u64)
                    .collect::<Vec<_>>(),
            ),
            Column::new(
                LIMIT.into(),
                shared_idx
                    .iter()
                    .map(|&i| limits[kinds[i]] as u64)
                    .collect::<Vec<_>>(),
            ),
        ],
    )
    .ctx("shared identifiers")?;
    let changes_df = DataFrame::new(
        changes.len(),
        vec![
            Column::new(
                "previous_id".into(),
                changes.iter().map(|c| c.0.clone()).collect::<Vec<_>>(),
            ),
            Column::new(
                ev::CUSTOMER_ID.into(),
                changes.iter().map(|c| c.1.clone()).collect::<Vec<_>>(),
            ),
            Column::new(
                "reason".into(),
                changes.iter().map(|c| c.2).collect::<Vec<_>>(),
            ),
        ],
    )
    .ctx("identity changes")?;
    // The customer of each event, in event order, through its identity key.
    let primary_customer = node_df
        .clone()
        .lazy()
        .select([col(NODE).alias(PRIMARY), col(ev::CUSTOMER_ID)]);
    let key_customer = primaries
        .lazy()
        .join(
            primary_customer,
            [col(PRIMARY)],
            [col(PRIMARY)],
            JoinArgs::new(JoinType::Inner),
        )
        .select([col(KEY_KIND), col(KEY_VALUE), col(ev::CUSTOMER_ID)]);
    let keys = key_customer.collect().ctx("identity keys")?;
    laps.lap("graph");
    let identity = node_df
        .clone()
        .lazy()
        .with_columns([
            lit(Series::new(
                KIND.into(),
                idx.iter().map(|&i| kinds[i]).collect::<Vec<_>>(),
            ))
            .alias(KIND),
            lit(Series::new(
                IDENTIFIER.into(),
                idx.iter()
                    .map(|&i| &names[i][kinds[i].len() + 1..])
                    .collect::<Vec<_>>(),
            ))
            .alias(IDENTIFIER),
            col(FIRST_SEEN).cast(crate::util::utc()),
            col(LAST_SEEN).cast(crate::util::utc()),
        ])
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
    let on = || [col(ev::CUSTOMER_ID)];
    let customers = identity
        .clone()
        .lazy()
        .select([col(ev::CUSTOMER_ID)])
        .unique(None, UniqueKeepStrategy::Any)
        .join(
            latest(kind::USER_ID, output::USER_ID),
            on(),
            on(),
            JoinArgs::new(JoinType::Left),
        )
        .join(
            latest(kind::EMAIL_SHA256, output::EMAIL_SHA256),
            on(),
            on(),
            JoinArgs::new(JoinType::Left),
        )
        .sort([ev::CUSTOMER_ID], Default::default())
        .collect()
        .ctx("customers")?;
    Ok(Resolved {
        keys,
        identity,
        customers,
        changes: changes_df,
        shared: shared_df,
        state: IdentityState {
            nodes: node_df,
            edges: edge_df,
        },
        suppressed_customers,
        suppressed_events: 0,
    })
}

/// The customers of the identity keys (`Resolved::keys`), in a table by key, built once for
/// every bucket of a night's events (`customer_ids`).
pub struct Customers<'a> {
    table: PlHashMap<(u32, &'a str), IdxSize>,
    customers: &'a Column,
}

impl<'a> Customers<'a> {
    pub fn of(keys: &'a DataFrame) -> Result<Customers<'a>> {
        let kinds = keys
            .column(KEY_KIND)
            .ctx("identity keys")?
            .u32()
            .ctx("identity keys")?;
        let values = keys
            .column(KEY_VALUE)
            .ctx("identity keys")?
            .str()
            .ctx("identity keys")?;
        let mut table = PlHashMap::with_capacity(keys.height());
        for (row, (kind, value)) in kinds.iter().zip(values.iter()).enumerate() {
            if let (Some(kind), Some(value)) = (kind, value) {
                table.insert((kind, value), row as IdxSize);
            }
        }
        Ok(Customers {
            table,
            customers: keys.column(ev::CUSTOMER_ID).ctx("identity keys")?,
        })
    }
}

/// Each event's customer: that of its identity key (`key_exprs` of `identifier_columns`),
/// null for a key without one (a suppressed customer's). Looked up row by row over the
/// identifier columns, stretches of rows side by side: the keys worked out as columns and
/// joined made a string column of every event's key and a join table of them (10M events:
/// 0.8 s against 2.0 s).
fn customers_of_keys(events: &DataFrame, customers: &Customers) -> Result<Column> {
    let table = &customers.table;
    let columns = NODE_COLUMNS
        .iter()
        .map(|(_, c)| {
            let column = events
                .column(c)
                .ctx(c.to_string())?
                .str()
                .ctx(c.to_string())?;
            // A blank user id or e-mail is no identifier (`identifier_columns`).
            Ok((column, matches!(*c, ev::USER_ID | ev::EMAIL)))
        })
        .collect::<Result<Vec<_>>>()?;
    // Stretches of rows side by side (a bucket of 1M events in four).
    const STRETCH: usize = 1 << 18;
    let lookup = |offset: usize| -> Vec<Option<IdxSize>> {
        let len = STRETCH.min(events.height() - offset);
        let stretch: Vec<_> = columns
            .iter()
            .map(|(c, blank_is_none)| (c.slice(offset as i64, len), *blank_is_none))
            .collect();
        let mut values: Vec<_> = stretch.iter().map(|(c, _)| c.iter()).collect();
        (0..len)
            .map(|_| {
                // Every column's iterator moves on a row; the first identifier is the key.
                let mut found = None;
                for (kind, (value, (_, blank_is_none))) in
                    values.iter_mut().zip(&stretch).enumerate()
                {
                    if let Some(value) = value.next().flatten()
                        && found.is_none()
                        && !(*blank_is_none && value.trim().is_empty())
                    {
                        found = Some(table.get(&(kind as u32, value)).copied());
                    }
                }
                found.flatten()
            })
            .collect()
    };
    use rayon::prelude::*;
    let rows: Vec<Option<IdxSize>> = (0..events.height())
        .into_par_iter()
        .step_by(STRETCH)
        .flat_map_iter(lookup)
        .collect();
    let rows = IdxCa::from_iter(rows);
    customers
        .customers
        .take(&rows)
        .ctx("assigning customer ids")
}

/// `events` with the `customer_id` of their identity key (`Customers` of `Resolved::keys`);
/// the events of suppressed customers go.
pub fn customer_ids(events: DataFrame, customers: &Customers) -> Result<DataFrame> {
    let mut laps = crate::util::Laps::start("identity");
    let before = events.height();
    let customer = customers_of_keys(&events, customers)?;
    laps.lap("keys looked up");
    debug_assert_eq!(customer.len(), before, "one customer per event");
    let mut events = events;
    events.with_column(customer).ctx("assigning customer ids")?;
    // Rows of suppressed customers go; when there are none, the rows are not copied.
    let events = if events
        .column(ev::CUSTOMER_ID)
        .ctx("customer ids")?
        .null_count()
        == 0
    {
        events
    } else {
        events
            .lazy()
            .filter(col(ev::CUSTOMER_ID).is_not_null())
            .collect()
            .ctx("assigning customer ids")?
    };
    laps.lap("customer ids");
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::strings;

    /// (event_id, cookie, user_id, loyalty_id, time)
    type Row<'a> = (
        &'a str,
        Option<&'a str>,
        Option<&'a str>,
        Option<&'a str>,
        i64,
    );

    fn events(rows: &[Row]) -> DataFrame {
        let none = || rows.iter().map(|_| None::<&str>).collect::<Vec<_>>();
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
                    ev::LOYALTY_ID.into(),
                    rows.iter().map(|r| r.3).collect::<Vec<_>>(),
                ),
                Column::new(ev::NETWORK_USERID.into(), none()),
                Column::new(ev::CLIENT_USERID.into(), none()),
                Column::new(ev::EMAIL.into(), none()),
                Column::new(
                    ev::TSTAMP.into(),
                    rows.iter().map(|r| r.4).collect::<Vec<_>>(),
                )
                .cast(&crate::util::utc())
                .unwrap(),
            ],
        )
        .unwrap()
    }

    /// What `resolve` gives: the resolution, and the events with their customer.
    struct Run {
        resolved: Resolved,
        events: DataFrame,
    }

    impl std::ops::Deref for Run {
        type Target = Resolved;
        fn deref(&self) -> &Resolved {
            &self.resolved
        }
    }

    fn resolved(rows: &[Row], prev: Option<&IdentityState>, suppression: &Suppression) -> Run {
        let (resolved, events) =
            resolve(&events(rows), prev, &default_limits(), suppression).unwrap();
        Run { resolved, events }
    }

    fn run(rows: &[Row], prev: Option<&IdentityState>) -> Run {
        resolved(rows, prev, &Suppression::default())
    }

    /// The combinations of events read a part at a time are those of all of them: a
    /// combination seen in several parts is one, from its first sighting to its last, and
    /// identifiers that would read the same run together ("ab" + "c", "a" + "bc"), or a blank
    /// cookie and none, stay apart.
    #[test]
    fn combinations_gathered_by_part_are_those_of_all_events() {
        let rows: &[Row] = &[
            ("e1", Some("c1"), Some("u1"), None, 5),
            ("e2", Some("c1"), Some("u1"), None, 2),
            ("e3", Some("ab"), Some("c"), None, 3),
            ("e4", Some("a"), Some("bc"), None, 4),
            ("e5", Some(""), None, Some("l1"), 6),
            ("e6", None, None, Some("l1"), 7),
            ("e7", Some("c1"), Some("u1"), None, 9),
            ("e8", Some("c2"), Some("  "), None, 1),
            ("e9", Some("c2"), None, None, 8),
        ];
        let sorted = |df: DataFrame| {
            let by: Vec<&str> = NODE_COLUMNS.iter().map(|(_, c)| *c).collect();
            df.sort(by, SortMultipleOptions::default().with_nulls_last(true))
                .unwrap()
        };
        let whole = sorted(combinations(&events(rows)).unwrap());
        let mut set = CombinationSet::default();
        for part in [&rows[..3], &rows[3..7], &rows[7..]] {
            set.add(&events(part)).unwrap();
        }
        let gathered = sorted(set.finish().unwrap());
        assert_eq!(gathered.height(), 6, "{gathered}");
        assert!(gathered.equals_missing(&whole), "{gathered}\n{whole}");
        let c1 = gathered
            .clone()
            .lazy()
            .filter(col(ev::DOMAIN_USERID).eq(lit("c1")))
            .collect()
            .unwrap();
        let seen = |c: &str| c1.column(c).unwrap().i64().unwrap().get(0);
        assert_eq!((seen(FIRST_SEEN), seen(LAST_SEEN)), (Some(2), Some(9)));
    }

    fn customer_of(r: &Run, event_id: &str) -> String {
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

    /// identifier -> customer id
    fn mapping(r: &Resolved) -> BTreeMap<String, String> {
        let n = strings(&r.state.nodes, NODE).unwrap();
        let c = strings(&r.state.nodes, ev::CUSTOMER_ID).unwrap();
        n.into_iter()
            .zip(c)
            .map(|(a, b)| (a.unwrap(), b.unwrap()))
            .collect()
    }

    const STORY: [Row<'static>; 7] = [
        // cookie A -> user X <- cookie B -> e-mail E (typed two ways) <- offline id O
        ("1", Some("A"), None, None, 10),
        ("2", Some("A"), Some("X"), None, 20),
        ("3", Some("B"), Some("X"), None, 30),
        ("4", Some("B"), Some("Jane@Example.com "), None, 40),
        ("5", None, Some("jane@example.com"), Some("O-77"), 50),
        ("6", None, None, Some("O-77"), 60),
        ("7", Some("D"), None, None, 5),
    ];

    #[test]
    fn identities_join_transitively_across_on_and_offline() {
        let r = run(&STORY, None);
        let a = customer_of(&r, "1");
        for e in ["2", "3", "4", "5", "6"] {
            assert_eq!(customer_of(&r, e), a, "event {e}");
        }
        assert_ne!(customer_of(&r, "7"), a);
        assert_eq!(r.customers.height(), 2);
        // The id comes from the earliest identifier (cookie D at t=5 for the other one).
        assert_eq!(
            a,
            format!("c_{}", &sha256_hex("domain_userid:A")[..ID_DIGITS])
        );
        // E-mails are stored hashed only.
        let ids: Vec<String> = strings(&r.identity, IDENTIFIER)
            .unwrap()
            .into_iter()
            .flatten()
            .collect();
        assert!(ids.contains(&sha256_hex("jane@example.com")));
        assert!(!ids.iter().any(|i| i.contains('@')));
        assert!(ids.contains(&"O-77".to_string()));
    }

    #[test]
    fn the_result_does_not_depend_on_input_order() {
        let mut reversed = STORY;
        reversed.reverse();
        let (r1, r2) = (run(&STORY, None), run(&reversed, None));
        assert_eq!(mapping(&r1), mapping(&r2));
        assert!(r1.identity.equals_missing(&r2.identity));
    }

    #[test]
    fn nightly_runs_with_state_equal_one_run_over_all_days() {
        let full = run(&STORY, None);
        let mut state: Option<IdentityState> = None;
        let mut last = None;
        // One "night" per event, in time order.
        let mut nights = STORY;
        nights.sort_by_key(|r| r.4);
        for row in nights {
            let r = run(&[row], state.as_ref());
            state = Some(r.state.clone());
            last = Some(r);
        }
        let last = last.unwrap();
        assert_eq!(mapping(&full), mapping(&last));
        // Merges happened along the way and were logged; none in the full run.
        assert_eq!(full.changes.height(), 0);
    }

    #[test]
    fn ids_are_stable_merges_keep_the_older_id_and_a_quiet_night_changes_nothing() {
        let day1 = run(
            &[
                ("1", Some("A"), Some("X"), None, 10),
                ("2", Some("B"), Some("Y"), None, 20),
            ],
            None,
        );
        let (a, b) = (
            mapping(&day1)["user_id:X"].clone(),
            mapping(&day1)["user_id:Y"].clone(),
        );
        assert_ne!(a, b);
        // Night 2: cookie B logs in as X -> the customers merge; A's id (older) survives.
        let day2 = run(&[("3", Some("B"), Some("X"), None, 30)], Some(&day1.state));
        assert_eq!(mapping(&day2)["user_id:Y"], a);
        let changes = day2.changes.clone();
        assert_eq!(strings(&changes, "previous_id").unwrap(), [Some(b.clone())]);
        assert_eq!(
            strings(&changes, "reason").unwrap(),
            [Some("merged".to_string())]
        );
        // Night 3 adds nothing new: the state is unchanged.
        let day3 = run(&[("4", Some("A"), None, None, 40)], Some(&day2.state));
        assert_eq!(mapping(&day3), mapping(&day2));
        assert!(day3.state.edges.equals_missing(&day2.state.edges));
        assert_eq!(day3.changes.height(), 0);
    }

    #[test]
    fn blank_user_ids_link_nobody_and_padded_ones_are_the_same_person() {
        let r = run(
            &[
                // Blank user ids on two cookies: no identifier, so no link between them.
                ("1", Some("A"), Some("   "), None, 10),
                ("2", Some("B"), Some(""), None, 20),
                // " X " and "X" are one user id; the cookies they were seen on join them.
                ("3", Some("C"), Some(" X "), None, 30),
                ("4", Some("D"), Some("X"), None, 40),
                ("5", Some("A"), None, None, 50),
            ],
            None,
        );
        assert_eq!(customer_of(&r, "1"), customer_of(&r, "5"));
        assert_ne!(customer_of(&r, "1"), customer_of(&r, "2"));
        assert_eq!(customer_of(&r, "3"), customer_of(&r, "4"));
        assert_eq!(r.events.height(), 5, "every event keeps its customer");
        let nodes = mapping(&r);
        assert!(nodes.contains_key("user_id:X"), "{nodes:?}");
        assert!(
            !nodes
                .keys()
                .any(|n| n.starts_with("user_id:") && n != "user_id:X"),
            "{nodes:?}"
        );
    }

    #[test]
    fn a_cookie_shared_by_500_user_ids_does_not_merge_them() {
        let ids: Vec<String> = (0..500).map(|i| format!("user{i}")).collect();
        let eids: Vec<String> = (0..500).map(|i| format!("e{i}")).collect();
        let mut rows: Vec<Row> = (0..500)
            .map(|i| {
                (
                    eids[i].as_str(),
                    Some("KIOSK"),
                    Some(ids[i].as_str()),
                    None,
                    i as i64,
                )
            })
            .collect();
        // And one genuine person: cookie P with user P1.
        rows.push(("p", Some("P"), Some("P1"), None, 1));
        rows.push(("q", Some("P"), None, None, 2));
        let r = run(&rows, None);
        let customers: BTreeSet<String> = mapping(&r).into_values().collect();
        // 500 users + the kiosk cookie alone + the genuine person.
        assert_eq!(customers.len(), 502);
        assert_eq!(customer_of(&r, "p"), customer_of(&r, "q"));
        assert_ne!(customer_of(&r, "e1"), customer_of(&r, "e2"));
        // The offending identifier is reported with its degree.
        assert_eq!(
            strings(&r.shared, IDENTIFIER).unwrap(),
            [Some("KIOSK".to_string())]
        );
        assert_eq!(
            r.shared.column(DEGREE).unwrap().u64().unwrap().get(0),
            Some(500)
        );
    }

    #[test]
    fn suppressed_people_vanish_from_state_and_events() {
        let first = run(&STORY, None);
        let jane = mapping(&first)["user_id:X"].clone();
        let s = Suppression {
            customer_ids: BTreeSet::new(),
            email_sha256: [sha256_hex("jane@example.com")].into(),
        };
        let r = resolved(&STORY, Some(&first.state), &s);
        assert_eq!(r.suppressed_customers, 1);
        assert_eq!(r.suppressed_events, 6);
        assert_eq!(r.events.height(), 1);
        assert!(!mapping(&r).values().any(|c| *c == jane));
        assert!(
            !strings(&r.identity, ev::CUSTOMER_ID)
                .unwrap()
                .contains(&Some(jane.clone()))
        );
        assert_eq!(r.state.edges.height(), 0);
        // By customer id too.
        let s = Suppression {
            customer_ids: [jane.clone()].into(),
            email_sha256: BTreeSet::new(),
        };
        let r = resolved(&STORY, None, &s);
        assert_eq!(r.customers.height(), 1);
    }
}
