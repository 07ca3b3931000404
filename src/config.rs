//! Job, feature and model definitions: raw serde structs (unknown keys rejected) turned into
//! validated types. Every problem in every file is collected and reported at once, with the
//! file, the key path and, for a misspelt name, the nearest valid one.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::error::{ConfigError, ConfigProblem};
use crate::schema::{EventType, event};

/// The default job, feature set and model shipped inside the binary (used by `propel run`
/// without `--job`, and by the demo).
pub const DEFAULT_JOB: &str = include_str!("../jobs/default.toml");
pub const DEFAULT_FEATURES: &str = include_str!("../features/default.toml");
pub const DEFAULT_MODEL: &str = include_str!("../models/propensity.toml");

// ---------------------------------------------------------------------------------------
// Problem collection

/// Collects problems for one file.
pub struct Problems {
    file: String,
    list: Vec<ConfigProblem>,
}

impl Problems {
    pub fn new(file: impl Into<String>) -> Self {
        Problems {
            file: file.into(),
            list: Vec::new(),
        }
    }

    pub fn push(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.list.push(ConfigProblem {
            file: self.file.clone(),
            key: key.into(),
            message: message.into(),
        });
    }

    pub fn into_vec(self) -> Vec<ConfigProblem> {
        self.list
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

/// "did you mean `x`?" for the valid name closest to `found`, if any is close.
pub fn did_you_mean<'a>(found: &str, valid: impl IntoIterator<Item = &'a str>) -> String {
    let best = valid
        .into_iter()
        .map(|v| (strsim::levenshtein(found, v), v))
        .min();
    match best {
        Some((d, v)) if d <= found.len().max(3) / 2 + 1 => format!("; did you mean `{v}`?"),
        _ => String::new(),
    }
}

fn parse_toml<T: serde::de::DeserializeOwned>(text: &str, file: &str) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| {
        let key = e
            .span()
            .map(|s| {
                let line = text[..s.start.min(text.len())].matches('\n').count() + 1;
                format!("line {line}")
            })
            .unwrap_or_default();
        ConfigError(vec![ConfigProblem {
            file: file.to_string(),
            key,
            message: e.message().to_string(),
        }])
    })
}

/// A config text and where it came from.
#[derive(Debug, Clone)]
pub struct Source {
    pub name: String,
    pub text: String,
    /// Directory that relative paths in this file are resolved against.
    pub base: PathBuf,
}

impl Source {
    pub fn read(path: &Path) -> Result<Source, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError(vec![ConfigProblem {
                file: path.display().to_string(),
                key: String::new(),
                message: format!("cannot read: {e}"),
            }])
        })?;
        Ok(Source {
            name: path.display().to_string(),
            text,
            base: path.parent().map(Path::to_path_buf).unwrap_or_default(),
        })
    }

    pub fn embedded(name: &str, text: &str) -> Source {
        Source {
            name: format!("<embedded {name}>"),
            text: text.to_string(),
            base: PathBuf::from("."),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Job

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawJob {
    input: Option<RawInput>,
    output: Option<RawOutput>,
    features: Option<String>,
    model: Option<String>,
    sessions: Option<RawSessions>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawInput {
    url: Option<String>,
    layout: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawOutput {
    url: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSessions {
    inactivity_minutes: Option<i64>,
}

/// Input layout of the event files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Snowplow Lake Loader Parquet (atomic columns, unstruct structs, context lists).
    LakeLoader,
}

/// A validated job.
#[derive(Debug, Clone)]
pub struct Job {
    /// Where the events are (local path or URL). Default: none; `--input` must give it.
    pub input: Option<String>,
    /// Input layout. Default: `lake_loader`.
    pub layout: Layout,
    /// Where run outputs go; each run writes `<output>/<as-of>/`. Default: `propel-out`.
    pub output: String,
    pub features: FeatureSet,
    pub model: ModelDef,
    /// Gap that ends a session when the tracker gave no session id. Default: 30 minutes.
    pub session_inactivity_minutes: i64,
}

impl Job {
    /// Loads the job at `path`, or the embedded default job when `path` is `None`.
    pub fn load(path: Option<&Path>) -> Result<Job, ConfigError> {
        let source = match path {
            Some(p) => Source::read(p)?,
            None => Source::embedded("jobs/default.toml", DEFAULT_JOB),
        };
        Job::parse(&source, path.is_none())
    }

    fn parse(source: &Source, embedded: bool) -> Result<Job, ConfigError> {
        let raw: RawJob = parse_toml(&source.text, &source.name)?;
        let mut problems = Problems::new(&source.name);
        let input = raw.input.unwrap_or_default();
        let layout = match input.layout.as_deref().unwrap_or("lake_loader") {
            "lake_loader" => Layout::LakeLoader,
            other => {
                problems.push(
                    "input.layout",
                    format!(
                        "unknown layout `{other}`, expected `lake_loader`{}",
                        did_you_mean(other, ["lake_loader"])
                    ),
                );
                Layout::LakeLoader
            }
        };
        let inactivity = raw
            .sessions
            .and_then(|s| s.inactivity_minutes)
            .unwrap_or(30);
        if inactivity <= 0 {
            problems.push(
                "sessions.inactivity_minutes",
                format!("expected a positive number of minutes, found {inactivity}"),
            );
        }
        // The embedded job refers to the embedded feature and model files; a job file on
        // disk refers to files relative to itself.
        let features_src = match (&raw.features, embedded) {
            (Some(p), false) => Some(Source::read(&source.base.join(p))),
            _ => None,
        };
        let model_src = match (&raw.model, embedded) {
            (Some(p), false) => Some(Source::read(&source.base.join(p))),
            _ => None,
        };
        let mut all = problems.into_vec();
        let features = match features_src {
            Some(Ok(src)) => FeatureSet::parse(&src),
            Some(Err(e)) => Err(e),
            None => FeatureSet::parse(&Source::embedded("features/default.toml", DEFAULT_FEATURES)),
        };
        let model = match model_src {
            Some(Ok(src)) => ModelDef::parse(&src),
            Some(Err(e)) => Err(e),
            None => ModelDef::parse(&Source::embedded("models/propensity.toml", DEFAULT_MODEL)),
        };
        if let Err(e) = &features {
            all.extend(e.0.iter().cloned());
        }
        if let Err(e) = &model {
            all.extend(e.0.iter().cloned());
        }
        if !all.is_empty() {
            return Err(ConfigError(all));
        }
        Ok(Job {
            input: input.url,
            layout,
            output: raw
                .output
                .and_then(|o| o.url)
                .unwrap_or_else(|| "propel-out".to_string()),
            features: features.expect("checked above"),
            model: model.expect("checked above"),
            session_inactivity_minutes: inactivity,
        })
    }
}

// ---------------------------------------------------------------------------------------
// Features

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
    agg: Option<String>,
    field: Option<String>,
    events: Option<Vec<String>>,
    window: Option<String>,
    #[serde(rename = "where")]
    filters: Option<Vec<RawFilter>>,
    fill: Option<f64>,
    derive: Option<String>,
    inputs: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFilter {
    field: String,
    op: String,
    value: Option<toml::Value>,
}

/// Aggregation of the events in a window before the cutoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Agg {
    /// Number of matching events. Empty window: 0.
    Count,
    /// Number of distinct values of `field`. Empty window: 0.
    CountDistinct,
    /// Sum of `field`. Empty window: 0.
    Sum,
    Mean,
    Min,
    Max,
    /// Days from the first matching event to the cutoff. Empty window: `fill`.
    DaysSinceFirst,
    /// Days from the last matching event to the cutoff. Empty window: `fill`.
    DaysSinceLast,
    /// Number of distinct calendar days (UTC) with a matching event. Empty window: 0.
    ActiveDays,
}

impl Agg {
    const NAMES: [(&'static str, Agg); 9] = [
        ("count", Agg::Count),
        ("count_distinct", Agg::CountDistinct),
        ("sum", Agg::Sum),
        ("mean", Agg::Mean),
        ("min", Agg::Min),
        ("max", Agg::Max),
        ("days_since_first", Agg::DaysSinceFirst),
        ("days_since_last", Agg::DaysSinceLast),
        ("active_days", Agg::ActiveDays),
    ];

    pub fn name(self) -> &'static str {
        Agg::NAMES
            .iter()
            .find(|(_, a)| *a == self)
            .map(|(n, _)| *n)
            .unwrap_or("?")
    }

    fn needs_field(self) -> bool {
        matches!(
            self,
            Agg::CountDistinct | Agg::Sum | Agg::Mean | Agg::Min | Agg::Max
        )
    }

    fn needs_numeric_field(self) -> bool {
        matches!(self, Agg::Sum | Agg::Mean | Agg::Min | Agg::Max)
    }

    /// Value when the window holds no matching event, unless the definition sets `fill`.
    pub fn empty_value(self) -> Option<f64> {
        match self {
            Agg::Count | Agg::CountDistinct | Agg::Sum | Agg::ActiveDays => Some(0.0),
            _ => None,
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
}

#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    pub field: String,
    pub op: FilterOp,
}

/// How far back from the cutoff a feature looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// `[cutoff - days, cutoff)`.
    Days(i64),
    /// All history before the cutoff.
    All,
}

/// Derived feature operations on other features.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeriveOp {
    /// `a / b`; null when `b` is 0 (then imputed by the model).
    Ratio,
    /// `a - b`.
    Difference,
    /// `ln(1 + a)`.
    Log1p,
}

impl DeriveOp {
    const NAMES: [(&'static str, DeriveOp, usize); 3] = [
        ("ratio", DeriveOp::Ratio, 2),
        ("difference", DeriveOp::Difference, 2),
        ("log1p", DeriveOp::Log1p, 1),
    ];

    pub fn name(self) -> &'static str {
        DeriveOp::NAMES
            .iter()
            .find(|(_, a, _)| *a == self)
            .map(|(n, _, _)| *n)
            .unwrap_or("?")
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum FeatureKind {
    Aggregate {
        agg: Agg,
        field: Option<String>,
        /// Empty = every event type.
        events: Vec<EventType>,
        window: Window,
        filters: Vec<Filter>,
        /// Value when the window is empty.
        fill: Option<f64>,
    },
    Derived {
        op: DeriveOp,
        inputs: Vec<String>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct FeatureDef {
    pub name: String,
    pub description: String,
    pub kind: FeatureKind,
}

/// A validated feature set: definitions in file order, plus a hash of their content.
#[derive(Debug, Clone)]
pub struct FeatureSet {
    pub features: Vec<FeatureDef>,
    /// SHA-256 of the feature file text: models record it, scoring compares it.
    pub hash: String,
    pub source: String,
}

/// Canonical event fields a feature may read, and whether they are numeric.
pub const FEATURE_FIELDS: [(&str, bool); 20] = [
    (event::EVENT_ID, false),
    (event::SESSION_ID, false),
    (event::PAGE_PATH, false),
    (event::PAGE_REFERRER, false),
    (event::MKT_SOURCE, false),
    (event::MKT_MEDIUM, false),
    (event::CHANNEL, false),
    (event::ORDER_ID, false),
    (event::ORDER_TOTAL, true),
    (event::ORDER_TAX, true),
    (event::ORDER_SHIPPING, true),
    (event::ORDER_DISCOUNT, true),
    (event::COUPON_CODE, false),
    (event::SKU, false),
    (event::CATEGORY, false),
    (event::QUANTITY, true),
    (event::UNIT_PRICE, true),
    (event::LINE_VALUE, true),
    (event::SEARCH_TOTAL_RESULTS, true),
    (event::SEARCH_PAGE_RESULTS, true),
];

fn parse_window(text: &str) -> Option<Window> {
    if text == "all" {
        return Some(Window::All);
    }
    let (num, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit())?);
    let n: i64 = num.parse().ok()?;
    let days = match unit {
        "d" => n,
        "w" => n * 7,
        _ => return None,
    };
    (days > 0).then_some(Window::Days(days))
}

impl FeatureSet {
    pub fn load(path: &Path) -> Result<FeatureSet, ConfigError> {
        FeatureSet::parse(&Source::read(path)?)
    }

    pub fn parse(source: &Source) -> Result<FeatureSet, ConfigError> {
        let raw: RawFeatureFile = parse_toml(&source.text, &source.name)?;
        let mut p = Problems::new(&source.name);
        let mut seen = BTreeSet::new();
        let mut features = Vec::new();
        // Names declared so far, valid or not: an input naming a broken feature is not
        // reported twice.
        let mut declared: Vec<String> = Vec::new();
        if raw.feature.is_empty() {
            p.push("feature", "no [[feature]] defined; expected at least one");
        }
        for (i, f) in raw.feature.into_iter().enumerate() {
            let key = format!("feature[{i}] ({})", f.name);
            if !seen.insert(f.name.clone()) {
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
            let declared_before = declared.clone();
            declared.push(f.name.clone());
            let kind = match (&f.agg, &f.derive) {
                (Some(_), Some(_)) => {
                    p.push(&key, "has both `agg` and `derive`; expected exactly one");
                    continue;
                }
                (None, None) => {
                    p.push(&key, "has neither `agg` nor `derive`; expected exactly one");
                    continue;
                }
                (Some(agg), None) => parse_aggregate(&f, agg, &key, &mut p),
                (None, Some(op)) => parse_derived(&f, op, &key, &declared_before, &mut p),
            };
            if let Some(kind) = kind {
                features.push(FeatureDef {
                    name: f.name,
                    description: f.description.unwrap_or_default(),
                    kind,
                });
            }
        }
        if !p.is_empty() {
            return Err(ConfigError(p.into_vec()));
        }
        Ok(FeatureSet {
            features,
            hash: hex::encode(Sha256::digest(source.text.as_bytes())),
            source: source.name.clone(),
        })
    }

    pub fn names(&self) -> Vec<String> {
        self.features.iter().map(|f| f.name.clone()).collect()
    }

    /// The longest window any feature uses (None = all history).
    pub fn max_window_days(&self) -> Option<i64> {
        let mut max = 0;
        for f in &self.features {
            if let FeatureKind::Aggregate { window, .. } = &f.kind {
                match window {
                    Window::All => return None,
                    Window::Days(d) => max = max.max(*d),
                }
            }
        }
        Some(max)
    }
}

fn parse_aggregate(f: &RawFeature, agg: &str, key: &str, p: &mut Problems) -> Option<FeatureKind> {
    if f.inputs.is_some() {
        p.push(
            format!("{key}.inputs"),
            "`inputs` belongs to derived features (`derive`)",
        );
    }
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
    let field_names = FEATURE_FIELDS.map(|(n, _)| n);
    let mut ok = true;
    let check_field = |name: &str, k: String, p: &mut Problems| -> Option<bool> {
        match FEATURE_FIELDS.iter().find(|(n, _)| *n == name) {
            Some((_, numeric)) => Some(*numeric),
            None => {
                p.push(
                    k,
                    format!(
                        "unknown field `{name}`, expected one of {}{}",
                        field_names.join(", "),
                        did_you_mean(name, field_names)
                    ),
                );
                None
            }
        }
    };
    match (&f.field, agg.needs_field()) {
        (None, true) => {
            p.push(
                format!("{key}.field"),
                format!("`{}` needs a `field`", agg.name()),
            );
            ok = false;
        }
        (Some(_), false) => {
            p.push(
                format!("{key}.field"),
                format!("`{}` takes no `field`", agg.name()),
            );
            ok = false;
        }
        (Some(name), true) => match check_field(name, format!("{key}.field"), p) {
            Some(false) if agg.needs_numeric_field() => {
                p.push(
                    format!("{key}.field"),
                    format!("`{}` needs a numeric field, `{name}` is text", agg.name()),
                );
                ok = false;
            }
            None => ok = false,
            _ => {}
        },
        (None, false) => {}
    }
    let mut events = Vec::new();
    for (j, e) in f.events.iter().flatten().enumerate() {
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
    let window = match f.window.as_deref() {
        None => Window::All,
        Some(w) => match parse_window(w) {
            Some(w) => w,
            None => {
                p.push(
                    format!("{key}.window"),
                    format!("expected `all` or a length such as `7d`, `30d`, `12w`; found `{w}`"),
                );
                ok = false;
                Window::All
            }
        },
    };
    let mut filters = Vec::new();
    for (j, raw) in f.filters.iter().flatten().enumerate() {
        let k = format!("{key}.where[{j}]");
        let numeric = check_field(&raw.field, format!("{k}.field"), p);
        let number = raw.value.as_ref().and_then(|v| match v {
            toml::Value::Integer(i) => Some(*i as f64),
            toml::Value::Float(x) => Some(*x),
            _ => None,
        });
        let value = raw.value.as_ref().and_then(|v| match v {
            toml::Value::String(s) => Some(FilterValue::Text(s.clone())),
            _ => number.map(FilterValue::Number),
        });
        let op = match (raw.op.as_str(), value, number) {
            ("==", Some(v), _) => Some(FilterOp::Eq(v)),
            ("!=", Some(v), _) => Some(FilterOp::Ne(v)),
            (">", _, Some(x)) => Some(FilterOp::Gt(x)),
            (">=", _, Some(x)) => Some(FilterOp::Ge(x)),
            ("<", _, Some(x)) => Some(FilterOp::Lt(x)),
            ("<=", _, Some(x)) => Some(FilterOp::Le(x)),
            ("is_null", _, _) => Some(FilterOp::IsNull),
            ("not_null", _, _) => Some(FilterOp::NotNull),
            (op @ ("==" | "!=" | ">" | ">=" | "<" | "<="), _, _) => {
                p.push(
                    format!("{k}.value"),
                    format!(
                        "`{op}` needs a {} `value`",
                        if op.len() == 2 && op.starts_with(['=', '!']) {
                            "number or text"
                        } else {
                            "number"
                        }
                    ),
                );
                None
            }
            (op, _, _) => {
                let ops = ["==", "!=", ">", ">=", "<", "<=", "is_null", "not_null"];
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
        if let (
            Some(false),
            Some(FilterOp::Gt(_) | FilterOp::Ge(_) | FilterOp::Lt(_) | FilterOp::Le(_)),
        ) = (numeric, &op)
        {
            p.push(
                format!("{k}.op"),
                format!("`{}` compares numbers, `{}` is text", raw.op, raw.field),
            );
            ok = false;
        }
        match op {
            Some(op) => filters.push(Filter {
                field: raw.field.clone(),
                op,
            }),
            None => ok = false,
        }
    }
    ok.then(|| FeatureKind::Aggregate {
        agg,
        field: f.field.clone(),
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
    for (set, name) in [
        (f.field.is_some(), "field"),
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
        }
    }
    let Some((_, op, arity)) = DeriveOp::NAMES.iter().find(|(n, _, _)| *n == op).copied() else {
        p.push(
            format!("{key}.derive"),
            format!(
                "unknown operation `{op}`, expected one of {}{}",
                DeriveOp::NAMES.map(|(n, _, _)| n).join(", "),
                did_you_mean(op, DeriveOp::NAMES.map(|(n, _, _)| n))
            ),
        );
        return None;
    };
    let inputs = f.inputs.clone().unwrap_or_default();
    let mut ok = true;
    if inputs.len() != arity {
        p.push(
            format!("{key}.inputs"),
            format!(
                "`{}` takes {arity} input(s), found {}",
                op.name(),
                inputs.len()
            ),
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
    ok.then_some(FeatureKind::Derived { op, inputs })
}

// ---------------------------------------------------------------------------------------
// Model

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModelFile {
    label: Option<RawLabel>,
    snapshots: Option<RawSnapshots>,
    model: Option<RawModel>,
    eligibility: Option<RawEligibility>,
    #[serde(default)]
    audience: Vec<RawAudience>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLabel {
    horizon_days: Option<i64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSnapshots {
    step_days: Option<i64>,
    training_cutoffs: Option<usize>,
    min_history_days: Option<i64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawModel {
    l2: Option<f64>,
    max_iterations: Option<u64>,
    reasons: Option<usize>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawEligibility {
    min_positives: Option<usize>,
    min_negatives: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudience {
    name: String,
    description: Option<String>,
    top_percent: f64,
}

/// A validated model definition.
#[derive(Debug, Clone)]
pub struct ModelDef {
    /// Label: a purchase (order) in `[t, t + horizon_days)`. Default: 30.
    pub horizon_days: i64,
    /// Days between training cutoffs. Default: 7.
    pub step_days: i64,
    /// Number of training cutoffs before the validation cutoff. Default: 8.
    pub training_cutoffs: usize,
    /// A cutoff needs at least this many days of events before it. Default: 14.
    pub min_history_days: i64,
    /// L2 penalty of the logistic regression. Default: 1.0.
    pub l2: f64,
    /// Maximum solver iterations. Default: 200.
    pub max_iterations: u64,
    /// Reason codes per scored customer. Default: 3.
    pub reasons: usize,
    /// Refuse to train below this many positive training rows. Default: 20.
    pub min_positives: usize,
    /// Refuse to train below this many negative training rows. Default: 20.
    pub min_negatives: usize,
    pub audiences: Vec<AudienceDef>,
}

/// An audience: the customers in the top `top_percent` % of scores.
#[derive(Debug, Clone)]
pub struct AudienceDef {
    pub name: String,
    pub description: String,
    pub top_percent: f64,
}

impl ModelDef {
    pub fn parse(source: &Source) -> Result<ModelDef, ConfigError> {
        let raw: RawModelFile = parse_toml(&source.text, &source.name)?;
        let mut p = Problems::new(&source.name);
        let label = raw.label.unwrap_or_default();
        let snaps = raw.snapshots.unwrap_or_default();
        let model = raw.model.unwrap_or_default();
        let elig = raw.eligibility.unwrap_or_default();
        let mut positive = |key: &str, v: i64| {
            if v <= 0 {
                p.push(
                    key,
                    format!("expected a positive number of days, found {v}"),
                );
            }
            v
        };
        let horizon_days = positive("label.horizon_days", label.horizon_days.unwrap_or(30));
        let step_days = positive("snapshots.step_days", snaps.step_days.unwrap_or(7));
        let min_history_days = positive(
            "snapshots.min_history_days",
            snaps.min_history_days.unwrap_or(14),
        );
        let training_cutoffs = snaps.training_cutoffs.unwrap_or(8);
        if training_cutoffs == 0 {
            p.push("snapshots.training_cutoffs", "expected at least 1, found 0");
        }
        let l2 = model.l2.unwrap_or(1.0);
        if !(l2.is_finite() && l2 >= 0.0) {
            p.push("model.l2", format!("expected a number >= 0, found {l2}"));
        }
        let mut names = BTreeSet::new();
        let mut audiences = Vec::new();
        for (i, a) in raw.audience.into_iter().enumerate() {
            let key = format!("audience[{i}] ({})", a.name);
            if !names.insert(a.name.clone()) {
                p.push(&key, format!("duplicate audience name `{}`", a.name));
            }
            if a.name.is_empty()
                || !a
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                p.push(
                    format!("{key}.name"),
                    "expected a name of letters, digits, `_` and `-`",
                );
            }
            if !(a.top_percent > 0.0 && a.top_percent <= 100.0) {
                p.push(
                    format!("{key}.top_percent"),
                    format!("expected a number in (0, 100], found {}", a.top_percent),
                );
            }
            audiences.push(AudienceDef {
                name: a.name,
                description: a.description.unwrap_or_default(),
                top_percent: a.top_percent,
            });
        }
        if !p.is_empty() {
            return Err(ConfigError(p.into_vec()));
        }
        Ok(ModelDef {
            horizon_days,
            step_days,
            training_cutoffs,
            min_history_days,
            l2,
            max_iterations: model.max_iterations.unwrap_or(200),
            reasons: model.reasons.unwrap_or(3),
            min_positives: elig.min_positives.unwrap_or(20),
            min_negatives: elig.min_negatives.unwrap_or(20),
            audiences,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn features(text: &str) -> Result<FeatureSet, ConfigError> {
        FeatureSet::parse(&Source::embedded("test.toml", text))
    }

    #[test]
    fn embedded_defaults_are_valid() {
        let job = Job::load(None).expect("default job");
        assert!(job.features.features.len() >= 15);
        assert!(!job.model.audiences.is_empty());
    }

    #[test]
    fn every_problem_is_reported_at_once_with_hints() {
        let err = features(
            r#"
[[feature]]
name = "a"
agg = "cnt"

[[feature]]
name = "b"
agg = "count"
events = ["add_to_crat"]
window = "30 days"

[[feature]]
name = "c"
agg = "sum"
field = "ordr_total"

[[feature]]
name = "d"
derive = "ratio"
inputs = ["c", "zz"]
"#,
        )
        .unwrap_err();
        let text = err.to_string();
        assert_eq!(err.0.len(), 5, "{text}");
        assert!(
            text.contains("unknown aggregation `cnt`") && text.contains("did you mean `count`?"),
            "{text}"
        );
        assert!(
            text.contains(
                "feature[1] (b).events[0]: unknown event `add_to_crat`; did you mean `add_to_cart`?"
            ),
            "{text}"
        );
        assert!(text.contains("feature[1] (b).window"), "{text}");
        assert!(text.contains("did you mean `order_total`?"), "{text}");
        assert!(text.contains("unknown feature `zz`"), "{text}");
    }

    #[test]
    fn unknown_keys_are_rejected_with_a_line() {
        let err =
            features("[[feature]]\nname = \"a\"\nagg = \"count\"\nwindw = \"7d\"\n").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("line 4") && text.contains("windw"), "{text}");
    }

    #[test]
    fn windows_parse() {
        assert_eq!(parse_window("7d"), Some(Window::Days(7)));
        assert_eq!(parse_window("2w"), Some(Window::Days(14)));
        assert_eq!(parse_window("all"), Some(Window::All));
        assert_eq!(parse_window("0d"), None);
        assert_eq!(parse_window("d"), None);
        assert_eq!(parse_window("30 days"), None);
    }
}
