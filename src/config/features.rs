//! The feature language (`features/*.toml`): raw definitions validated into typed ones.
//!
//! A feature is either an *aggregate* over the events (or the sessions) in a window before
//! the cutoff, or *derived* from features defined above it. Each may carry examples: a tiny
//! input and its expected value, run by the tests and by `propel features check`.

use std::collections::BTreeMap;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::{Problems, Source, did_you_mean, parse_toml};
use crate::error::ConfigError;
use crate::schema::{EventType, event};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFeatureFile {
    #[serde(default)]
    feature: Vec<RawFeature>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFeature {
    name: String,
    description: Option<String>,
    over: Option<String>,
    agg: Option<String>,
    field: Option<String>,
    weight: Option<String>,
    events: Option<Vec<String>>,
    window: Option<String>,
    #[serde(rename = "where")]
    filters: Option<Vec<RawFilter>>,
    fill: Option<f64>,
    derive: Option<String>,
    inputs: Option<Vec<String>>,
    min: Option<f64>,
    max: Option<f64>,
    bounds: Option<Vec<f64>>,
    #[serde(default)]
    example: Vec<RawExample>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFilter {
    field: String,
    op: String,
    value: Option<toml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExample {
    cutoff: toml::Value,
    events: Vec<BTreeMap<String, toml::Value>>,
    expect: Option<f64>,
    expect_missing: Option<bool>,
}

/// What an aggregate feature aggregates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Over {
    /// Canonical events. Default.
    Events,
    /// Sessions, rebuilt at each cutoff from the events before it (so a session that spans
    /// the cutoff is seen only up to the cutoff), placed in time by their first event.
    Sessions,
}

/// Aggregation over the events (or sessions) in a window before the cutoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Agg {
    /// Number of matching rows. Empty window: 0.
    Count,
    /// Number of distinct values of `field`. Empty window: 0.
    CountDistinct,
    /// Sum of `field`. Empty window: 0.
    Sum,
    Mean,
    Min,
    Max,
    /// `field` of the earliest matching row.
    First,
    /// `field` of the latest matching row.
    Last,
    /// Days from the first matching row to the cutoff.
    DaysSinceFirst,
    /// Days from the last matching row to the cutoff.
    DaysSinceLast,
    /// Distinct calendar days (UTC) with a matching row. Empty window: 0.
    ActiveDays,
    /// Matching rows (or their `field` sum) as a share of the same without the `where`
    /// filters: "share of total". Empty denominator: missing.
    Share,
    /// Categorical affinity: the largest share that one value of `field` (e.g. `category`)
    /// takes of the matching rows, weighted by `weight` (default: each row counts 1).
    TopShare,
}

impl Agg {
    const NAMES: [(&'static str, Agg); 13] = [
        ("count", Agg::Count),
        ("count_distinct", Agg::CountDistinct),
        ("sum", Agg::Sum),
        ("mean", Agg::Mean),
        ("min", Agg::Min),
        ("max", Agg::Max),
        ("first", Agg::First),
        ("last", Agg::Last),
        ("days_since_first", Agg::DaysSinceFirst),
        ("days_since_last", Agg::DaysSinceLast),
        ("active_days", Agg::ActiveDays),
        ("share", Agg::Share),
        ("top_share", Agg::TopShare),
    ];

    pub fn name(self) -> &'static str {
        Agg::NAMES
            .iter()
            .find(|(_, a)| *a == self)
            .map(|(n, _)| *n)
            .unwrap_or("?")
    }

    fn field_rule(self) -> FieldRule {
        match self {
            Agg::Count | Agg::DaysSinceFirst | Agg::DaysSinceLast | Agg::ActiveDays => {
                FieldRule::None
            }
            Agg::Share => FieldRule::OptionalNumeric,
            Agg::CountDistinct | Agg::TopShare => FieldRule::Any,
            Agg::Sum | Agg::Mean | Agg::Min | Agg::Max | Agg::First | Agg::Last => {
                FieldRule::Numeric
            }
        }
    }

    /// Value when the window holds no matching row, unless the definition sets `fill`.
    pub fn empty_value(self) -> Option<f64> {
        match self {
            Agg::Count | Agg::CountDistinct | Agg::Sum | Agg::ActiveDays => Some(0.0),
            _ => None,
        }
    }
}

enum FieldRule {
    None,
    Any,
    Numeric,
    OptionalNumeric,
}

/// Type of a field that features read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    Text,
    Number,
    Bool,
}

/// Canonical event fields a feature may read.
pub const EVENT_FIELDS: [(&str, FieldType); 24] = [
    (event::EVENT_ID, FieldType::Text),
    (event::SESSION_ID, FieldType::Text),
    (event::PAGE_PATH, FieldType::Text),
    (event::PAGE_REFERRER, FieldType::Text),
    (event::MKT_SOURCE, FieldType::Text),
    (event::MKT_MEDIUM, FieldType::Text),
    (event::CHANNEL, FieldType::Text),
    (event::ORDER_ID, FieldType::Text),
    (event::ORDER_TOTAL, FieldType::Number),
    (event::ORDER_TAX, FieldType::Number),
    (event::ORDER_SHIPPING, FieldType::Number),
    (event::ORDER_DISCOUNT, FieldType::Number),
    (event::COUPON_CODE, FieldType::Text),
    (event::SKU, FieldType::Text),
    (event::CATEGORY, FieldType::Text),
    (event::QUANTITY, FieldType::Number),
    (event::UNIT_PRICE, FieldType::Number),
    (event::LINE_VALUE, FieldType::Number),
    (event::SEARCH_TERMS, FieldType::Text),
    (event::SEARCH_TOTAL_RESULTS, FieldType::Number),
    (event::SEARCH_PAGE_RESULTS, FieldType::Number),
    (event::PAGE_VIEW_ID, FieldType::Text),
    (event::CART_VALUE, FieldType::Number),
    (event::CHECKOUT_STEP, FieldType::Number),
];

/// Per-session fields for `over = "sessions"` features, computed from events before the cutoff.
pub mod session_field {
    pub const EVENTS: &str = "events";
    pub const PAGE_VIEWS: &str = "page_views";
    pub const SEARCHES: &str = "searches";
    pub const CART_ADDS: &str = "cart_adds";
    pub const DURATION_S: &str = "duration_s";
    pub const HAS_CART_ADD: &str = "has_cart_add";
    pub const HAS_SEARCH: &str = "has_search";
    pub const HAS_ORDER: &str = "has_order";
}

pub const SESSION_FIELDS: [(&str, FieldType); 8] = [
    (session_field::EVENTS, FieldType::Number),
    (session_field::PAGE_VIEWS, FieldType::Number),
    (session_field::SEARCHES, FieldType::Number),
    (session_field::CART_ADDS, FieldType::Number),
    (session_field::DURATION_S, FieldType::Number),
    (session_field::HAS_CART_ADD, FieldType::Bool),
    (session_field::HAS_SEARCH, FieldType::Bool),
    (session_field::HAS_ORDER, FieldType::Bool),
];

impl Over {
    fn fields(self) -> &'static [(&'static str, FieldType)] {
        match self {
            Over::Events => &EVENT_FIELDS,
            Over::Sessions => &SESSION_FIELDS,
        }
    }
}

/// Comparison in a `where` filter.
#[derive(Debug, Clone, PartialEq)]
pub enum FilterOp {
    Eq(FilterValue),
    Ne(FilterValue),
    Gt(f64),
    Ge(f64),
    Lt(f64),
    Le(f64),
    IsNull,
    NotNull,
}

#[derive(Debug, Clone, PartialEq)]
pub enum FilterValue {
    Number(f64),
    Text(String),
    Bool(bool),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    pub field: String,
    pub op: FilterOp,
}

/// How far back from the cutoff `t` a feature looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// All history before `t`.
    All,
    /// `[t - from_days, t - to_days)`; `"30d"` is `from 30, to 0`, `"60d..30d"` the 30 days
    /// before those (for trends).
    Range { from_days: i64, to_days: i64 },
}

impl Window {
    /// Oldest day the window reaches back to (None = all history).
    pub fn lookback_days(self) -> Option<i64> {
        match self {
            Window::All => None,
            Window::Range { from_days, .. } => Some(from_days),
        }
    }
}

/// Derived feature operations on earlier features.
#[derive(Debug, Clone, PartialEq)]
pub enum DeriveOp {
    /// `a / b`; missing when `b` is 0.
    Ratio,
    /// `a - b`.
    Difference,
    /// `ln(1 + a)`.
    Log1p,
    /// `a` limited to `[min, max]` (either may be absent).
    Clip { min: Option<f64>, max: Option<f64> },
    /// Index of the bucket of `a`: 0 below `bounds[0]`, 1 below `bounds[1]`, ...
    Bucket { bounds: Vec<f64> },
}

const DERIVE_NAMES: [(&str, usize); 5] = [
    ("ratio", 2),
    ("difference", 2),
    ("log1p", 1),
    ("clip", 1),
    ("bucket", 1),
];

/// An aggregate feature.
#[derive(Debug, Clone, PartialEq)]
pub struct Aggregate {
    pub over: Over,
    pub agg: Agg,
    pub field: Option<String>,
    /// Weight field of `top_share` (None: each row counts 1).
    pub weight: Option<String>,
    /// Event types (events only); empty = every type.
    pub events: Vec<EventType>,
    pub window: Window,
    pub filters: Vec<Filter>,
    /// Value when the window is empty.
    pub fill: Option<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum FeatureKind {
    Aggregate(Aggregate),
    Derived { op: DeriveOp, inputs: Vec<String> },
}

/// One event of a feature example: its time, type, and any canonical fields.
#[derive(Debug, Clone, PartialEq)]
pub struct ExampleEvent {
    /// Microseconds since the epoch, UTC.
    pub at: i64,
    pub event_type: EventType,
    pub session: Option<String>,
    pub numbers: BTreeMap<String, f64>,
    pub texts: BTreeMap<String, String>,
}

/// A feature example: events of one customer, a cutoff, and the expected value.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub cutoff: i64,
    pub events: Vec<ExampleEvent>,
    /// None: the value must be missing.
    pub expect: Option<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FeatureDef {
    pub name: String,
    pub description: String,
    pub kind: FeatureKind,
    pub examples: Vec<Example>,
}

/// Version of the values propel computes for given feature definitions, part of
/// `FeatureSet::hash`. Raise it when a change alters what the daily aggregates or the
/// snapshots hold for the same definitions: the state, caches and models made before are
/// then built again, never combined with new values. 2: a `top_share` without a weight counts
/// events, and a count over every row counts rows (both summed a literal one in a group-by).
pub const VALUES_VERSION: u32 = 2;

/// A validated feature set: definitions in file order, plus a hash of their content.
#[derive(Debug, Clone)]
pub struct FeatureSet {
    pub features: Vec<FeatureDef>,
    /// SHA-256 of the feature file text and `VALUES_VERSION`: models record it, scoring
    /// compares it, and the state and caches a night keeps are keyed by it.
    pub hash: String,
    pub source: String,
}

fn parse_window(text: &str) -> Option<Window> {
    fn days(text: &str) -> Option<i64> {
        let split = text.find(|c: char| !c.is_ascii_digit())?;
        let (num, unit) = text.split_at(split);
        let n: i64 = num.parse().ok()?;
        match unit {
            "d" => Some(n),
            "w" => Some(n * 7),
            _ => None,
        }
    }
    if text == "all" {
        return Some(Window::All);
    }
    let (from_days, to_days) = match text.split_once("..") {
        Some((from, to)) => (days(from)?, days(to)?),
        None => (days(text)?, 0),
    };
    (from_days > to_days && to_days >= 0).then_some(Window::Range { from_days, to_days })
}

/// Parses a time given as a TOML datetime or a string: `2026-01-31` (midnight UTC) or
/// `2026-01-31T10:00:00Z`.
fn parse_time(v: &toml::Value) -> Option<i64> {
    let text = match v {
        toml::Value::String(s) => s.clone(),
        toml::Value::Datetime(d) => d.to_string(),
        _ => return None,
    };
    if let Ok(d) = chrono::NaiveDate::parse_from_str(&text, "%Y-%m-%d") {
        return Some(crate::util::date_to_micros(d));
    }
    chrono::DateTime::parse_from_rfc3339(&text)
        .ok()
        .map(|t| t.timestamp_micros())
}

impl FeatureSet {
    pub fn load(path: &std::path::Path) -> Result<FeatureSet, ConfigError> {
        FeatureSet::parse(&Source::read(path)?)
    }

    pub fn parse(source: &Source) -> Result<FeatureSet, ConfigError> {
        let raw: RawFeatureFile = parse_toml(&source.text, &source.name)?;
        let mut p = Problems::new(&source.name);
        let mut features = Vec::new();
        // Names declared so far, valid or not: an input naming a broken feature is not
        // reported twice.
        let mut declared: Vec<String> = Vec::new();
        if raw.feature.is_empty() {
            p.push("feature", "no [[feature]] defined; expected at least one");
        }
        for (i, f) in raw.feature.into_iter().enumerate() {
            let key = format!("feature[{i}] ({})", f.name);
            if declared.contains(&f.name) {
                p.push(&key, format!("duplicate feature name `{}`", f.name));
            }
            if f.name.is_empty()
                || !f
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_')
            {
                p.push(
                    format!("{key}.name"),
                    "expected a name of letters, digits and `_`",
                );
            }
            let kind = match (&f.agg, &f.derive) {
                (Some(_), Some(_)) => {
                    p.push(&key, "has both `agg` and `derive`; expected exactly one");
                    None
                }
                (None, None) => {
                    p.push(&key, "has neither `agg` nor `derive`; expected exactly one");
                    None
                }
                (Some(agg), None) => {
                    parse_aggregate(&f, agg, &key, &mut p).map(FeatureKind::Aggregate)
                }
                (None, Some(op)) => parse_derived(&f, op, &key, &declared, &mut p),
            };
            let examples = parse_examples(&f.example, &key, &mut p);
            declared.push(f.name.clone());
            if let Some(kind) = kind {
                features.push(FeatureDef {
                    name: f.name,
                    description: f.description.unwrap_or_default(),
                    kind,
                    examples,
                });
            }
        }
        if !p.is_empty() {
            return Err(ConfigError(p.into_vec()));
        }
        Ok(FeatureSet {
            features,
            hash: hex::encode(Sha256::digest(
                format!("{VALUES_VERSION}\n{}", source.text).as_bytes(),
            )),
            source: source.name.clone(),
        })
    }

    pub fn names(&self) -> Vec<String> {
        self.features.iter().map(|f| f.name.clone()).collect()
    }

    /// The longest window any feature uses (None = all history).
    pub fn max_lookback_days(&self) -> Option<i64> {
        let mut max = 0;
        for f in &self.features {
            if let FeatureKind::Aggregate(a) = &f.kind {
                max = max.max(a.window.lookback_days()?);
            }
        }
        Some(max)
    }

    /// The feature named `name` and every feature it depends on, in definition order.
    pub fn closure(&self, name: &str) -> FeatureSet {
        let mut needed = vec![name.to_string()];
        for f in self.features.iter().rev() {
            if needed.contains(&f.name)
                && let FeatureKind::Derived { inputs, .. } = &f.kind
            {
                needed.extend(inputs.iter().cloned());
            }
        }
        FeatureSet {
            features: self
                .features
                .iter()
                .filter(|f| needed.contains(&f.name))
                .cloned()
                .collect(),
            hash: self.hash.clone(),
            source: self.source.clone(),
        }
    }
}

/// Parses `where` filters against the fields of `fields`.
pub(super) fn parse_filters(
    raw: &[RawFilter],
    fields: &[(&str, FieldType)],
    key: &str,
    p: &mut Problems,
) -> Option<Vec<Filter>> {
    let mut ok = true;
    let mut filters = Vec::new();
    for (j, raw) in raw.iter().enumerate() {
        let k = format!("{key}.where[{j}]");
        let ftype = check_field(&raw.field, fields, &format!("{k}.field"), p);
        let number = raw.value.as_ref().and_then(|v| match v {
            toml::Value::Integer(i) => Some(*i as f64),
            toml::Value::Float(x) => Some(*x),
            _ => None,
        });
        let value = raw.value.as_ref().and_then(|v| match v {
            toml::Value::String(s) => Some(FilterValue::Text(s.clone())),
            toml::Value::Boolean(b) => Some(FilterValue::Bool(*b)),
            _ => number.map(FilterValue::Number),
        });
        let ops = ["==", "!=", ">", ">=", "<", "<=", "is_null", "not_null"];
        let op = match (raw.op.as_str(), value.clone(), number) {
            ("==", Some(v), _) => Some(FilterOp::Eq(v)),
            ("!=", Some(v), _) => Some(FilterOp::Ne(v)),
            (">", _, Some(x)) => Some(FilterOp::Gt(x)),
            (">=", _, Some(x)) => Some(FilterOp::Ge(x)),
            ("<", _, Some(x)) => Some(FilterOp::Lt(x)),
            ("<=", _, Some(x)) => Some(FilterOp::Le(x)),
            ("is_null", _, _) => Some(FilterOp::IsNull),
            ("not_null", _, _) => Some(FilterOp::NotNull),
            (op @ ("==" | "!="), _, _) => {
                p.push(format!("{k}.value"), format!("`{op}` needs a `value`"));
                None
            }
            (op @ (">" | ">=" | "<" | "<="), _, _) => {
                p.push(
                    format!("{k}.value"),
                    format!("`{op}` needs a number `value`"),
                );
                None
            }
            (op, _, _) => {
                p.push(
                    format!("{k}.op"),
                    format!(
                        "unknown operator `{op}`, expected one of {}{}",
                        ops.join(" "),
                        did_you_mean(op, ops)
                    ),
                );
                None
            }
        };
        let type_ok = match (ftype, &op) {
            (
                Some(t),
                Some(FilterOp::Gt(_) | FilterOp::Ge(_) | FilterOp::Lt(_) | FilterOp::Le(_)),
            ) if t != FieldType::Number => Err("compares numbers"),
            (Some(t), Some(FilterOp::Eq(v) | FilterOp::Ne(v))) => match (t, v) {
                (FieldType::Number, FilterValue::Number(_))
                | (FieldType::Text, FilterValue::Text(_))
                | (FieldType::Bool, FilterValue::Bool(_)) => Ok(()),
                _ => Err("compares a value of another type"),
            },
            _ => Ok(()),
        };
        if let Err(what) = type_ok {
            p.push(
                format!("{k}.value"),
                format!(
                    "`{}` {what}: `{}` is {:?}",
                    raw.op,
                    raw.field,
                    ftype.expect("checked")
                ),
            );
            ok = false;
        }
        match (op, ftype) {
            (Some(op), Some(_)) => filters.push(Filter {
                field: raw.field.clone(),
                op,
            }),
            _ => ok = false,
        }
    }
    ok.then_some(filters)
}

fn check_field(
    name: &str,
    fields: &[(&str, FieldType)],
    key: &str,
    p: &mut Problems,
) -> Option<FieldType> {
    match fields.iter().find(|(n, _)| *n == name) {
        Some((_, t)) => Some(*t),
        None => {
            let names: Vec<&str> = fields.iter().map(|(n, _)| *n).collect();
            p.push(
                key,
                format!(
                    "unknown field `{name}`, expected one of {}{}",
                    names.join(", "),
                    did_you_mean(name, names.iter().copied())
                ),
            );
            None
        }
    }
}

/// Parses event type names (canonical or Snowplow aliases).
pub(super) fn parse_events(raw: &[String], key: &str, p: &mut Problems) -> Option<Vec<EventType>> {
    let mut ok = true;
    let mut events = Vec::new();
    for (j, e) in raw.iter().enumerate() {
        match EventType::from_name(e) {
            Some(t) => events.push(t),
            None => {
                p.push(
                    format!("{key}.events[{j}]"),
                    format!(
                        "unknown event `{e}`{}",
                        did_you_mean(e, EventType::all_names())
                    ),
                );
                ok = false;
            }
        }
    }
    ok.then_some(events)
}

fn parse_aggregate(f: &RawFeature, agg: &str, key: &str, p: &mut Problems) -> Option<Aggregate> {
    let mut ok = true;
    for (set, name) in [
        (f.inputs.is_some(), "inputs"),
        (f.min.is_some(), "min"),
        (f.max.is_some(), "max"),
        (f.bounds.is_some(), "bounds"),
    ] {
        if set {
            p.push(
                format!("{key}.{name}"),
                format!("`{name}` belongs to derived features (`derive`)"),
            );
            ok = false;
        }
    }
    let over = match f.over.as_deref().unwrap_or("events") {
        "events" => Over::Events,
        "sessions" => Over::Sessions,
        other => {
            p.push(
                format!("{key}.over"),
                format!(
                    "unknown `over` value `{other}`, expected `events` or `sessions`{}",
                    did_you_mean(other, ["events", "sessions"])
                ),
            );
            return None;
        }
    };
    let Some(agg) = Agg::NAMES.iter().find(|(n, _)| *n == agg).map(|(_, a)| *a) else {
        p.push(
            format!("{key}.agg"),
            format!(
                "unknown aggregation `{agg}`, expected one of {}{}",
                Agg::NAMES.map(|(n, _)| n).join(", "),
                did_you_mean(agg, Agg::NAMES.map(|(n, _)| n))
            ),
        );
        return None;
    };
    let fields = over.fields();
    let field_type = f
        .field
        .as_deref()
        .map(|name| check_field(name, fields, &format!("{key}.field"), p));
    match (agg.field_rule(), &f.field, field_type) {
        (_, Some(_), Some(None)) => ok = false,
        (FieldRule::None, Some(_), _) => {
            p.push(
                format!("{key}.field"),
                format!("`{}` takes no `field`", agg.name()),
            );
            ok = false;
        }
        (FieldRule::Any | FieldRule::Numeric, None, _) => {
            p.push(
                format!("{key}.field"),
                format!("`{}` needs a `field`", agg.name()),
            );
            ok = false;
        }
        (FieldRule::Numeric | FieldRule::OptionalNumeric, Some(name), Some(Some(t)))
            if t != FieldType::Number =>
        {
            p.push(
                format!("{key}.field"),
                format!("`{}` needs a numeric field, `{name}` is {t:?}", agg.name()),
            );
            ok = false;
        }
        _ => {}
    }
    if let Some(w) = &f.weight {
        if agg != Agg::TopShare {
            p.push(format!("{key}.weight"), "`weight` belongs to `top_share`");
            ok = false;
        } else if let Some(t) = check_field(w, fields, &format!("{key}.weight"), p) {
            if t != FieldType::Number {
                p.push(
                    format!("{key}.weight"),
                    format!("`weight` needs a numeric field, `{w}` is {t:?}"),
                );
                ok = false;
            }
        } else {
            ok = false;
        }
    }
    let events = match (&f.events, over) {
        (Some(_), Over::Sessions) => {
            p.push(
                format!("{key}.events"),
                "`events` filters event types; session features filter with `where` on session fields",
            );
            ok = false;
            Vec::new()
        }
        (Some(raw), Over::Events) => parse_events(raw, key, p).unwrap_or_else(|| {
            ok = false;
            Vec::new()
        }),
        (None, _) => Vec::new(),
    };
    let window = match f.window.as_deref() {
        None => Window::All,
        Some(w) => parse_window(w).unwrap_or_else(|| {
            p.push(
                format!("{key}.window"),
                format!(
                    "expected `all`, a length such as `7d`, `30d`, `12w`, or a range such as `60d..30d`; found `{w}`"
                ),
            );
            ok = false;
            Window::All
        }),
    };
    let filters = parse_filters(f.filters.as_deref().unwrap_or(&[]), fields, key, p)
        .unwrap_or_else(|| {
            ok = false;
            Vec::new()
        });
    if agg == Agg::Share && filters.is_empty() && ok {
        p.push(
            format!("{key}.where"),
            "`share` compares the rows matching `where` with all rows; it needs a `where`",
        );
        ok = false;
    }
    ok.then(|| Aggregate {
        over,
        agg,
        field: f.field.clone(),
        weight: f.weight.clone(),
        events,
        window,
        filters,
        fill: f.fill.or(agg.empty_value()),
    })
}

fn parse_derived(
    f: &RawFeature,
    op: &str,
    key: &str,
    earlier: &[String],
    p: &mut Problems,
) -> Option<FeatureKind> {
    let mut ok = true;
    for (set, name) in [
        (f.over.is_some(), "over"),
        (f.field.is_some(), "field"),
        (f.weight.is_some(), "weight"),
        (f.events.is_some(), "events"),
        (f.window.is_some(), "window"),
        (f.filters.is_some(), "where"),
        (f.fill.is_some(), "fill"),
    ] {
        if set {
            p.push(
                format!("{key}.{name}"),
                format!("`{name}` belongs to aggregate features (`agg`)"),
            );
            ok = false;
        }
    }
    let Some((_, arity)) = DERIVE_NAMES.iter().find(|(n, _)| *n == op).copied() else {
        p.push(
            format!("{key}.derive"),
            format!(
                "unknown operation `{op}`, expected one of {}{}",
                DERIVE_NAMES.map(|(n, _)| n).join(", "),
                did_you_mean(op, DERIVE_NAMES.map(|(n, _)| n))
            ),
        );
        return None;
    };
    let parsed = match op {
        "ratio" => DeriveOp::Ratio,
        "difference" => DeriveOp::Difference,
        "log1p" => DeriveOp::Log1p,
        "clip" => {
            if f.min.is_none() && f.max.is_none() {
                p.push(key, "`clip` needs `min`, `max` or both");
                ok = false;
            }
            if let (Some(lo), Some(hi)) = (f.min, f.max)
                && lo > hi
            {
                p.push(
                    format!("{key}.min"),
                    format!("`min` {lo} is above `max` {hi}"),
                );
                ok = false;
            }
            DeriveOp::Clip {
                min: f.min,
                max: f.max,
            }
        }
        _ => {
            let bounds = f.bounds.clone().unwrap_or_default();
            if bounds.is_empty() || bounds.windows(2).any(|w| w[0] >= w[1]) {
                p.push(
                    format!("{key}.bounds"),
                    format!("`bucket` needs increasing `bounds`, found {bounds:?}"),
                );
                ok = false;
            }
            DeriveOp::Bucket { bounds }
        }
    };
    if !matches!(parsed, DeriveOp::Clip { .. }) && (f.min.is_some() || f.max.is_some()) {
        p.push(key, "`min` and `max` belong to `clip`");
        ok = false;
    }
    if !matches!(parsed, DeriveOp::Bucket { .. }) && f.bounds.is_some() {
        p.push(format!("{key}.bounds"), "`bounds` belongs to `bucket`");
        ok = false;
    }
    let inputs = f.inputs.clone().unwrap_or_default();
    if inputs.len() != arity {
        p.push(
            format!("{key}.inputs"),
            format!("`{op}` takes {arity} input(s), found {}", inputs.len()),
        );
        ok = false;
    }
    for (j, name) in inputs.iter().enumerate() {
        if !earlier.contains(name) {
            p.push(
                format!("{key}.inputs[{j}]"),
                format!(
                    "unknown feature `{name}` (inputs must be defined above){}",
                    did_you_mean(name, earlier.iter().map(String::as_str))
                ),
            );
            ok = false;
        }
    }
    ok.then_some(FeatureKind::Derived { op: parsed, inputs })
}

fn parse_examples(raw: &[RawExample], key: &str, p: &mut Problems) -> Vec<Example> {
    let mut out = Vec::new();
    for (i, ex) in raw.iter().enumerate() {
        let k = format!("{key}.example[{i}]");
        // Features are cut at midnights (UTC), as the job's cutoffs are.
        let Some(cutoff) =
            parse_time(&ex.cutoff).filter(|t| t.rem_euclid(crate::util::MICROS_PER_DAY) == 0)
        else {
            p.push(
                format!("{k}.cutoff"),
                format!(
                    "expected a date (cutoffs are UTC midnights), found {}",
                    ex.cutoff
                ),
            );
            continue;
        };
        let expect = match (ex.expect, ex.expect_missing) {
            (Some(v), None | Some(false)) => Some(v),
            (None, Some(true)) => None,
            _ => {
                p.push(
                    &k,
                    "give exactly one of `expect = <number>` or `expect_missing = true`",
                );
                continue;
            }
        };
        let mut events = Vec::new();
        for (j, e) in ex.events.iter().enumerate() {
            let ek = format!("{k}.events[{j}]");
            let at = e.get("at").and_then(parse_time);
            let event_type = e
                .get("type")
                .and_then(|v| v.as_str())
                .and_then(EventType::from_name);
            let (Some(at), Some(event_type)) = (at, event_type) else {
                p.push(
                    &ek,
                    "expected `at` (a date or RFC 3339 time) and `type` (an event type)",
                );
                continue;
            };
            let mut ev = ExampleEvent {
                at,
                event_type,
                session: None,
                numbers: BTreeMap::new(),
                texts: BTreeMap::new(),
            };
            for (name, value) in e {
                match (name.as_str(), value) {
                    ("at" | "type", _) => {}
                    ("session", toml::Value::String(s)) => ev.session = Some(s.clone()),
                    (field, v) => match (EVENT_FIELDS.iter().find(|(n, _)| *n == field), v) {
                        (Some((_, FieldType::Number)), toml::Value::Integer(i)) => {
                            ev.numbers.insert(field.into(), *i as f64);
                        }
                        (Some((_, FieldType::Number)), toml::Value::Float(x)) => {
                            ev.numbers.insert(field.into(), *x);
                        }
                        (Some((_, FieldType::Text)), toml::Value::String(s)) => {
                            ev.texts.insert(field.into(), s.clone());
                        }
                        _ => p.push(
                            format!("{ek}.{field}"),
                            format!(
                                "expected an event field ({}, session) with a value of its type{}",
                                EVENT_FIELDS.map(|(n, _)| n).join(", "),
                                did_you_mean(field, EVENT_FIELDS.map(|(n, _)| n))
                            ),
                        ),
                    },
                }
            }
            events.push(ev);
        }
        out.push(Example {
            cutoff,
            events,
            expect,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_example_cut_at_noon_is_refused() {
        let text = r#"
[[feature]]
name = "n"
agg = "count"
[[feature.example]]
cutoff = "2026-03-01T12:00:00Z"
events = [{ at = "2026-02-20", type = "page_view" }]
expect = 1
"#;
        let err = FeatureSet::parse(&crate::config::Source::embedded("f.toml", text)).unwrap_err();
        assert!(
            err.to_string().contains(
                "expected a date (cutoffs are UTC midnights), found \"2026-03-01T12:00:00Z\""
            ),
            "{err}"
        );
    }

    #[test]
    fn windows_parse() {
        let r = |from_days, to_days| Some(Window::Range { from_days, to_days });
        assert_eq!(parse_window("7d"), r(7, 0));
        assert_eq!(parse_window("2w"), r(14, 0));
        assert_eq!(parse_window("60d..30d"), r(60, 30));
        assert_eq!(parse_window("all"), Some(Window::All));
        assert_eq!(parse_window("0d"), None);
        assert_eq!(parse_window("30d..60d"), None);
        assert_eq!(parse_window("d"), None);
        assert_eq!(parse_window("30 days"), None);
    }
}
