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

use polars_utils::aliases::{PlHashMap, PlIndexSet};
use rayon::slice::ParallelSliceMut;
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
        Ok(Some(IdentityState {
            nodes: crate::util::read_parquet(&n)?,
            edges: crate::util::read_parquet(&e)?,
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

/// The node columns of an event, person-level identifiers first: an event is attached to
/// its first non-null node, so that a login on a shared device goes to the person.
const NODE_COLUMNS: [&str; 6] = [
    ev::USER_ID,
    ev::EMAIL,
    ev::LOYALTY_ID,
    ev::CLIENT_USERID,
    ev::DOMAIN_USERID,
    ev::NETWORK_USERID,
];
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
    NODE_COLUMNS.map(|c| match c {
        ev::USER_ID | ev::EMAIL => blank_is_null(c),
        _ => col(c),
    })
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
        .group_by(NODE_COLUMNS.map(col))
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

/// The event columns `combinations` reads: the identifiers and the time.
pub const COMBINATION_COLUMNS: [&str; 7] = [
    NODE_COLUMNS[0],
    NODE_COLUMNS[1],
    NODE_COLUMNS[2],
    NODE_COLUMNS[3],
    NODE_COLUMNS[4],
    NODE_COLUMNS[5],
    ev::TSTAMP,
];

/// The `combinations` of a night's events read a part at a time (`add`), as those of all of
/// them (`finish`). Parts cut by event id each hold most of the night's combinations (100M
/// events in 100 parts: 0.9 of 2.6 million each), so each distinct combination's identifiers
/// are kept once, as the key of a hash map, and a part's sightings only widen its first and
/// last: regrouping the parts' frames held the combinations so far, the new ones and their
/// union at once (100M events: the run's peak, 4 GiB). The map is cut in shards by a hash of
/// the key, each filled on a thread of its own.
pub struct CombinationSet {
    shards: Vec<CombinationShard>,
}

/// The combinations whose keys hash to one shard of a `CombinationSet`.
#[derive(Default)]
struct CombinationShard {
    /// Each combination's identifiers (`encode_identifier`, in `NODE_COLUMNS` order), to its
    /// place in `seen`.
    index: PlHashMap<Vec<u8>, u32>,
    /// First and last sighting (µs) of each combination, in the order first added.
    seen: Vec<(Option<i64>, Option<i64>)>,
}

impl Default for CombinationSet {
    fn default() -> Self {
        CombinationSet {
            shards: (0..COMBINATION_SHARDS)
                .map(|_| Default::default())
                .collect(),
        }
    }
}

/// Shards of a `CombinationSet`: a few for each core, so that uneven ones even out.
const COMBINATION_SHARDS: usize = 16;

/// A stretch of a part's rows: their keys one after the other, and each row's key's end and
/// shard.
struct KeyedRows {
    keys: Vec<u8>,
    rows: Vec<(usize, u8)>,
}

impl CombinationSet {
    /// Adds the combinations of `events`.
    pub fn add(&mut self, events: &DataFrame) -> Result<()> {
        use rayon::prelude::*;
        let ctx = "identity combinations";
        let identifiers = NODE_COLUMNS
            .iter()
            .map(|c| {
                events
                    .column(c)
                    .and_then(|c| c.cast(&DataType::String))
                    .ctx(ctx)
            })
            .collect::<Result<Vec<_>>>()?;
        let times = events
            .column(ev::TSTAMP)
            .and_then(|c| c.cast(&DataType::Int64))
            .ctx(ctx)?;
        let times: Vec<Option<i64>> = times.i64().ctx(ctx)?.iter().collect();
        // Each row's key and shard, stretches of rows side by side.
        const STRETCH: usize = 1 << 16;
        let height = events.height();
        let stretches = (0..height)
            .step_by(STRETCH)
            .collect::<Vec<_>>()
            .into_par_iter()
            .map(|offset| {
                let len = STRETCH.min(height - offset);
                let columns = identifiers
                    .iter()
                    .map(|c| Ok(c.str()?.slice(offset as i64, len)))
                    .collect::<PolarsResult<Vec<_>>>()?;
                let mut values: Vec<_> = columns.iter().map(|c| c.iter()).collect();
                let mut keyed = KeyedRows {
                    keys: Vec::new(),
                    rows: Vec::with_capacity(len),
                };
                for _ in 0..len {
                    let start = keyed.keys.len();
                    for (column, values) in NODE_COLUMNS.iter().zip(&mut values) {
                        let value = values.next().expect("columns of one frame");
                        // A blank user id or e-mail is no identifier (`identifier_columns`).
                        let value = value.filter(|v| {
                            !matches!(*column, ev::USER_ID | ev::EMAIL) || !v.trim().is_empty()
                        });
                        encode_identifier(value, &mut keyed.keys);
                    }
                    let hash = xxhash_rust::xxh3::xxh3_64(&keyed.keys[start..]);
                    let shard = (hash % COMBINATION_SHARDS as u64) as u8;
                    keyed.rows.push((keyed.keys.len(), shard));
                }
                Ok(keyed)
            })
            .collect::<PolarsResult<Vec<_>>>()
            .ctx(ctx)?;
        // Each shard takes its rows, in order.
        self.shards
            .par_iter_mut()
            .enumerate()
            .for_each(|(number, shard)| {
                let mut row = 0;
                for stretch in &stretches {
                    let mut start = 0;
                    for &(end, of) in &stretch.rows {
                        if usize::from(of) == number {
                            shard.widen(&stretch.keys[start..end], times[row]);
                        }
                        (start, row) = (end, row + 1);
                    }
                }
            });
        Ok(())
    }

    /// The distinct combinations added, as `combinations` gives them.
    pub fn finish(self) -> Result<DataFrame> {
        let count = self.shards.iter().map(|s| s.seen.len()).sum();
        let mut fields: Vec<Vec<Option<&str>>> =
            vec![Vec::with_capacity(count); NODE_COLUMNS.len()];
        let mut keys: Vec<Vec<Vec<u8>>> = Vec::with_capacity(self.shards.len());
        let mut seen = Vec::with_capacity(count);
        for shard in self.shards {
            let mut shard_keys: Vec<Vec<u8>> = vec![Vec::new(); shard.seen.len()];
            for (key, at) in shard.index {
                shard_keys[at as usize] = key;
            }
            keys.push(shard_keys);
            seen.extend(shard.seen);
        }
        for key in keys.iter().flatten() {
            let mut rest: &[u8] = key;
            for values in &mut fields {
                values.push(decode_identifier(&mut rest));
            }
        }
        let columns = NODE_COLUMNS
            .iter()
            .zip(fields)
            .map(|(c, values)| Column::new((*c).into(), values))
            .chain([
                Column::new(
                    FIRST_SEEN.into(),
                    seen.iter().map(|s| s.0).collect::<Vec<_>>(),
                ),
                Column::new(
                    LAST_SEEN.into(),
                    seen.iter().map(|s| s.1).collect::<Vec<_>>(),
                ),
            ])
            .collect();
        DataFrame::new(count, columns).ctx("identity combinations")
    }
}

impl CombinationShard {
    /// Adds a sighting (`at`) of the combination `key`.
    fn widen(&mut self, key: &[u8], at: Option<i64>) {
        let next = u32::try_from(self.seen.len()).expect("fewer than 4 billion combinations");
        let place = *self.index.entry_ref(key).or_insert(next);
        if place == next {
            self.seen.push((at, at));
        } else {
            let seen = &mut self.seen[place as usize];
            seen.0 = earliest(seen.0, at);
            seen.1 = latest(seen.1, at);
        }
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
    let mut laps = crate::util::Laps::start("identity");
    tracing::debug!(count = combinations.height(), "identifier combinations");
    let previous = previous.map(PreviousGraph::of).transpose()?;
    let Graph {
        names,
        seen,
        previous_id,
        edges,
        keys,
    } = Graph::of(combinations, previous.as_ref())?;
    // The names as one text column, which the state's nodes and edges take theirs from:
    // an edge's ends are views of its nodes' names, not copies (100M events: 3.5 million
    // edges).
    let node_names =
        StringChunked::from_iter_values(NODE.into(), names.iter().map(|n| &**n)).into_series();
    drop(names);
    let names: Vec<&str> = node_names
        .str()
        .ctx("identity nodes")?
        .iter()
        .map(|n| n.expect("every node has a name"))
        .collect();
    laps.lap("nodes");
    let kinds: Vec<&str> = names.iter().map(|n| kind_of(n)).collect();

    // Guards on the cumulative graph: a node's degree counts the neighbours of the kinds
    // that count towards its limit (each edge is one neighbour: the edges are distinct).
    let mut degree = vec![0usize; names.len()];
    for &(a, b) in &edges {
        let (a, b) = (a as usize, b as usize);
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
    for &(a, b) in &edges {
        let (a, b) = (a as usize, b as usize);
        if !shared[a] && !shared[b] {
            sets.union(a, b);
        }
    }
    // The components in order of their oldest identifier, each its nodes from the oldest:
    // the nodes sorted by their component's first node, then by their own rank.
    let rank = |i: usize| (seen[i].0, names[i]);
    let root: Vec<usize> = (0..names.len()).map(|i| sets.find(i)).collect();
    drop(sets);
    let mut first_of = vec![usize::MAX; names.len()];
    for (i, &r) in root.iter().enumerate() {
        if first_of[r] == usize::MAX || rank(i) < rank(first_of[r]) {
            first_of[r] = i;
        }
    }
    // (Ranks are distinct, names being so: an unstable sort gives the one order.)
    let mut order: Vec<usize> = (0..names.len()).collect();
    order.par_sort_unstable_by(|&a, &b| {
        rank(first_of[root[a]])
            .cmp(&rank(first_of[root[b]]))
            .then(rank(a).cmp(&rank(b)))
    });
    drop(first_of);
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
    drop((taken, order, root));
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
    laps.lap("graph");

    // What is kept and published: the nodes by name, each with its customer.
    let idx: Vec<usize> = (0..names.len()).filter(|&i| keep[i]).collect();
    let customer_of = |i: usize| ids[component_of[i]].as_str();
    let customer_ids = Column::new(
        ev::CUSTOMER_ID.into(),
        idx.iter().map(|&i| customer_of(i)).collect::<Vec<_>>(),
    );
    let first_seen = Column::new(
        FIRST_SEEN.into(),
        idx.iter().map(|&i| seen[i].0).collect::<Vec<_>>(),
    );
    let last_seen = Column::new(
        LAST_SEEN.into(),
        idx.iter().map(|&i| seen[i].1).collect::<Vec<_>>(),
    );
    let nodes_at = |at: &mut dyn Iterator<Item = usize>| -> Result<Column> {
        let at: IdxCa = at.map(|i| i as IdxSize).collect_ca(PlSmallStr::EMPTY);
        Ok(node_names.take(&at).ctx("identity state")?.into())
    };
    let node_df = DataFrame::new(
        idx.len(),
        vec![
            nodes_at(&mut idx.iter().copied())?,
            customer_ids.clone(),
            first_seen.clone(),
            last_seen.clone(),
        ],
    )
    .ctx("identity state")?;
    let kept_edges: Vec<(usize, usize)> = edges
        .iter()
        .map(|&(a, b)| (a as usize, b as usize))
        .filter(|&(a, b)| keep[a] && keep[b])
        .collect();
    drop(edges);
    let edge_df = DataFrame::new(
        kept_edges.len(),
        vec![
            nodes_at(&mut kept_edges.iter().map(|e| e.0))?.with_name(EDGE_A.into()),
            nodes_at(&mut kept_edges.iter().map(|e| e.1))?.with_name(EDGE_B.into()),
        ],
    )
    .ctx("identity state")?;
    drop(kept_edges);
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
    // The customer of each identity key: that of its node, none for a suppressed one.
    let keys = keys.customers(|node| keep[node].then(|| customer_of(node)))?;
    let identity = DataFrame::new(
        idx.len(),
        vec![
            Column::new(
                KIND.into(),
                idx.iter().map(|&i| kinds[i]).collect::<Vec<_>>(),
            ),
            Column::new(
                IDENTIFIER.into(),
                idx.iter()
                    .map(|&i| &names[i][kinds[i].len() + 1..])
                    .collect::<Vec<_>>(),
            ),
            customer_ids,
            first_seen,
            last_seen,
        ],
    )
    .ctx("identity")?;
    drop(kinds);
    drop(names);
    let identity = identity
        .lazy()
        .with_columns([
            col(FIRST_SEEN).cast(crate::util::utc()),
            col(LAST_SEEN).cast(crate::util::utc()),
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
    laps.lap("frames");
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

/// A combination's missing identifier, or a key's missing customer (`Graph::of`).
const NONE: u32 = u32::MAX;

/// A night's identity graph, before it is solved: every node seen now or before, by name
/// (sorted, a node's index its position), with its first and last sighting (µs) and the
/// customer it belonged to before, and the distinct edges between nodes (their indices, the
/// smaller first, sorted). Built on integer node ids: a node's name is made once for each
/// distinct identifier, never for each combination or edge (100M events: 2.6 million
/// combinations, 3.6 million nodes; frames of names, grouped and joined to indices, took
/// 2.1 GiB more than the combinations).
struct Graph<'p> {
    names: Vec<Box<str>>,
    seen: Vec<(i64, i64)>,
    previous_id: Vec<Option<&'p str>>,
    edges: Vec<(u32, u32)>,
    keys: Keys,
}

/// The distinct identity keys of a night's combinations (an event's first identifier: its
/// column's place in `NODE_COLUMNS` and its raw value), each with its node's index.
struct Keys {
    kinds: Vec<u32>,
    values: Series,
    nodes: Vec<u32>,
}

impl Keys {
    /// The keys with their customer (`customer` of their node), as `Resolved::keys`; a key
    /// whose node has none (a suppressed customer's) is left out.
    fn customers<'a>(self, customer: impl Fn(usize) -> Option<&'a str>) -> Result<DataFrame> {
        let customers: Vec<Option<&str>> =
            self.nodes.iter().map(|&n| customer(n as usize)).collect();
        let kept: BooleanChunked = customers.iter().map(Option::is_some).collect();
        DataFrame::new(
            self.kinds.len(),
            vec![
                Column::new(KEY_KIND.into(), self.kinds),
                self.values.with_name(KEY_VALUE.into()).into(),
                Column::new(ev::CUSTOMER_ID.into(), customers),
            ],
        )
        .and_then(|keys| keys.filter(&kept))
        .ctx("identity keys")
    }
}

/// The graph kept the night before, its columns as `Graph::of` reads them.
struct PreviousGraph {
    nodes: Series,
    customer_ids: Series,
    first_seen: Series,
    last_seen: Series,
    a: Series,
    b: Series,
}

impl PreviousGraph {
    fn of(state: &IdentityState) -> Result<PreviousGraph> {
        let column = |df: &DataFrame, name: &str, dtype: DataType| -> Result<Series> {
            df.column(name)
                .and_then(|c| c.as_materialized_series().cast(&dtype))
                .ctx(format!("identity state: {name}"))
        };
        Ok(PreviousGraph {
            nodes: column(&state.nodes, NODE, DataType::String)?,
            customer_ids: column(&state.nodes, ev::CUSTOMER_ID, DataType::String)?,
            first_seen: column(&state.nodes, FIRST_SEEN, DataType::Int64)?,
            last_seen: column(&state.nodes, LAST_SEEN, DataType::Int64)?,
            a: column(&state.edges, EDGE_A, DataType::String)?,
            b: column(&state.edges, EDGE_B, DataType::String)?,
        })
    }
}

/// The node name of a raw identifier in `NODE_COLUMNS[column]`: its kind and value. A user id
/// that is an e-mail address counts as one; e-mails are kept as their hash.
fn node_name(column: usize, raw: &str) -> String {
    let email = |raw: &str| {
        format!(
            "{}:{}",
            kind::EMAIL_SHA256,
            sha256_hex(&normalise_email(raw))
        )
    };
    match NODE_COLUMNS[column] {
        ev::USER_ID if raw.contains('@') => email(raw),
        ev::USER_ID => format!("{}:{}", kind::USER_ID, raw.trim()),
        ev::EMAIL => email(raw),
        ev::LOYALTY_ID => format!("{}:{raw}", kind::LOYALTY_ID),
        ev::CLIENT_USERID => format!("{}:{raw}", kind::CLIENT_SESSION_USERID),
        ev::DOMAIN_USERID => format!("{}:{raw}", kind::DOMAIN_USERID),
        _ => format!("{}:{raw}", kind::NETWORK_USERID),
    }
}

/// The index of `name` among the nodes `interned` so far, which it joins if new.
fn intern(interned: &mut PlIndexSet<Box<str>>, name: &str) -> u32 {
    let at = match interned.get_index_of(name) {
        Some(at) => at,
        None => interned.insert_full(name.into()).0,
    };
    u32::try_from(at).expect("fewer than 4 billion identifiers")
}

impl<'p> Graph<'p> {
    /// The graph of a night's identifier `combinations` and of the night before's.
    fn of(combinations: DataFrame, previous: Option<&'p PreviousGraph>) -> Result<Graph<'p>> {
        let ctx = "identity combinations";
        let height = combinations.height();
        let mut interned: PlIndexSet<Box<str>> = PlIndexSet::default();
        // Each combination's node in each column (NONE where it has none), and the keys.
        let mut node_of: Vec<Vec<u32>> = Vec::with_capacity(NODE_COLUMNS.len());
        let (mut key_kinds, mut key_values, mut key_nodes) = (Vec::new(), Vec::new(), Vec::new());
        for (column, name) in NODE_COLUMNS.iter().enumerate() {
            let values = combinations.column(name).ctx(ctx)?.str().ctx(ctx)?;
            // Each raw value's node, and whether it is a key already.
            let mut known: PlHashMap<&str, (u32, bool)> = PlHashMap::default();
            let mut nodes = Vec::with_capacity(height);
            for (row, value) in values.iter().enumerate() {
                let Some(value) = value else {
                    nodes.push(NONE);
                    continue;
                };
                let (node, is_key) = known
                    .entry(value)
                    .or_insert_with(|| (intern(&mut interned, &node_name(column, value)), false));
                if !*is_key && node_of.iter().all(|earlier| earlier[row] == NONE) {
                    *is_key = true;
                    key_kinds.push(column as u32);
                    key_values.push(value);
                    key_nodes.push(*node);
                }
                nodes.push(*node);
            }
            node_of.push(nodes);
        }
        let key_values = Series::new(KEY_VALUE.into(), key_values);
        // First and last sighting of the nodes seen now.
        let time = |name: &str| {
            combinations
                .column(name)
                .and_then(|c| c.as_materialized_series().cast(&DataType::Int64))
                .ctx(ctx)
        };
        let (first, last) = (time(FIRST_SEEN)?, time(LAST_SEEN)?);
        let mut seen_now = vec![(None, None); interned.len()];
        for (row, (first, last)) in first
            .i64()
            .ctx(ctx)?
            .iter()
            .zip(last.i64().ctx(ctx)?.iter())
            .enumerate()
        {
            for nodes in &node_of {
                if nodes[row] != NONE {
                    let seen = &mut seen_now[nodes[row] as usize];
                    seen.0 = earliest(seen.0, first);
                    seen.1 = latest(seen.1, last);
                }
            }
        }
        drop((first, last, combinations));
        let mut seen: Vec<(i64, i64)> = seen_now
            .into_iter()
            .map(|(first, last)| (first.unwrap_or(0), last.unwrap_or(0)))
            .collect();
        // Edges seen now: every pair of identifiers on one event.
        let mut edges = Vec::new();
        for row in 0..height {
            for (i, a) in node_of.iter().enumerate() {
                let a = a[row];
                if a == NONE {
                    continue;
                }
                for b in &node_of[i + 1..] {
                    let b = b[row];
                    if b != NONE && b != a {
                        edges.push((a, b));
                    }
                }
            }
        }
        drop(node_of);
        // The nodes and edges of the night before; a node keeps the customer it had.
        let mut previous_id = vec![None; seen.len()];
        if let Some(prev) = previous {
            let ctx = "identity state";
            let nodes = prev.nodes.str().ctx(ctx)?.iter();
            let customers = prev.customer_ids.str().ctx(ctx)?.iter();
            let firsts = prev.first_seen.i64().ctx(ctx)?.iter();
            let lasts = prev.last_seen.i64().ctx(ctx)?.iter();
            for (((name, customer), first), last) in nodes.zip(customers).zip(firsts).zip(lasts) {
                let (Some(name), Some(customer)) = (name, customer) else {
                    continue;
                };
                let (first, last) = (first.unwrap_or(0), last.unwrap_or(0));
                let node = intern(&mut interned, name) as usize;
                if node == seen.len() {
                    seen.push((first, last));
                    previous_id.push(Some(customer));
                } else {
                    seen[node] = (seen[node].0.min(first), seen[node].1.max(last));
                    previous_id[node].get_or_insert(customer);
                }
            }
            let ends = prev
                .a
                .str()
                .ctx(ctx)?
                .iter()
                .zip(prev.b.str().ctx(ctx)?.iter());
            for (a, b) in ends {
                let node = |n: Option<&str>| n.and_then(|n| interned.get_index_of(n));
                if let (Some(a), Some(b)) = (node(a), node(b))
                    && a != b
                {
                    edges.push((a as u32, b as u32));
                }
            }
        }
        // Nodes sorted by name, and everything by their places.
        let mut names: Vec<Box<str>> = interned.into_iter().collect();
        let mut order: Vec<u32> = (0..names.len() as u32).collect();
        order.par_sort_unstable_by(|&a, &b| names[a as usize].cmp(&names[b as usize]));
        let mut place = vec![0u32; names.len()];
        for (at, &node) in order.iter().enumerate() {
            place[node as usize] = at as u32;
        }
        let names = order
            .iter()
            .map(|&node| std::mem::take(&mut names[node as usize]))
            .collect();
        let seen = order.iter().map(|&node| seen[node as usize]).collect();
        let previous_id = order
            .iter()
            .map(|&node| previous_id[node as usize])
            .collect();
        for (a, b) in &mut edges {
            let (pa, pb) = (place[*a as usize], place[*b as usize]);
            (*a, *b) = (pa.min(pb), pa.max(pb));
        }
        edges.par_sort_unstable();
        edges.dedup();
        for node in &mut key_nodes {
            *node = place[*node as usize];
        }
        Ok(Graph {
            names,
            seen,
            previous_id,
            edges,
            keys: Keys {
                kinds: key_kinds,
                values: key_values,
                nodes: key_nodes,
            },
        })
    }
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

/// Each event's customer: that of its identity key (its first identifier of
/// `identifier_columns`, as `Keys` are), null for a key without one (a suppressed
/// customer's). Looked up row by row over the identifier columns, stretches of rows side by
/// side: the keys worked out as columns and joined made a string column of every event's key
/// and a join table of them (10M events: 0.8 s against 2.0 s).
fn customers_of_keys(events: &DataFrame, customers: &Customers) -> Result<Column> {
    let table = &customers.table;
    let columns = NODE_COLUMNS
        .iter()
        .map(|c| {
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
            let by: Vec<&str> = NODE_COLUMNS.to_vec();
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

    /// Each identity key (an event's first identifier, as it was written) names its customer,
    /// whichever combination it was first seen in: a cookie first seen behind a user id, then
    /// alone, is a key. An e-mail typed as a user id and in the e-mail column is one node,
    /// linked to nothing by itself.
    #[test]
    fn every_identity_key_of_the_combinations_names_its_customer() {
        fn text(values: [Option<&str>; 3]) -> Vec<Option<&str>> {
            values.to_vec()
        }
        let none = || vec![None::<&str>; 3];
        let combinations = DataFrame::new(
            3,
            vec![
                Column::new(
                    ev::USER_ID.into(),
                    text([Some(" Bob "), Some("ann@example.com "), None]),
                ),
                Column::new(
                    ev::EMAIL.into(),
                    text([None, Some("Ann@Example.com"), None]),
                ),
                Column::new(ev::LOYALTY_ID.into(), none()),
                Column::new(ev::CLIENT_USERID.into(), none()),
                Column::new(
                    ev::DOMAIN_USERID.into(),
                    text([Some("c1"), None, Some("c1")]),
                ),
                Column::new(ev::NETWORK_USERID.into(), none()),
                Column::new(FIRST_SEEN.into(), vec![10i64, 20, 30]),
                Column::new(LAST_SEEN.into(), vec![10i64, 20, 30]),
            ],
        )
        .unwrap();
        let r = resolve_combinations(combinations, None, &default_limits(), &Default::default())
            .unwrap();
        let nodes = mapping(&r);
        let ann = format!("email_sha256:{}", sha256_hex("ann@example.com"));
        assert_eq!(
            nodes.keys().cloned().collect::<Vec<_>>(),
            ["domain_userid:c1".into(), ann.clone(), "user_id:Bob".into()],
        );
        assert_eq!(r.state.edges.height(), 1, "{}", r.state.edges);
        let keys = r
            .keys
            .sort([KEY_KIND, KEY_VALUE], Default::default())
            .unwrap();
        let kinds: Vec<u32> = keys
            .column(KEY_KIND)
            .unwrap()
            .u32()
            .unwrap()
            .into_no_null_iter()
            .collect();
        assert_eq!(kinds, [0, 0, 4]);
        assert_eq!(
            strings(&keys, KEY_VALUE).unwrap(),
            [
                Some(" Bob ".into()),
                Some("ann@example.com ".into()),
                Some("c1".into())
            ]
        );
        let customers = strings(&keys, ev::CUSTOMER_ID).unwrap();
        assert_eq!(customers[0].as_ref(), nodes.get("user_id:Bob"));
        assert_eq!(customers[1].as_ref(), nodes.get(&ann));
        assert_eq!(customers[2].as_ref(), nodes.get("user_id:Bob"));
        assert_ne!(customers[0], customers[1]);
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
