//! Job, feature and model definitions: raw serde structs (unknown keys rejected) turned into
//! validated types. Every problem in every file is collected and reported at once, with the
//! file, the key path and, for a misspelt name, the nearest valid one.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{ConfigError, ConfigProblem};

/// The default job, feature set and model shipped inside the binary (used by `propel run`
/// without `--job`, and by the demo).
pub const DEFAULT_JOB: &str = include_str!("../../jobs/default.toml");
pub const DEFAULT_FEATURES: &str = include_str!("../../features/default.toml");
pub const DEFAULT_MODEL: &str = include_str!("../../models/propensity.toml");
pub const DEFAULT_AUDIENCES: &str = include_str!("../../models/audiences.toml");

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

pub(crate) fn parse_toml<T: serde::de::DeserializeOwned>(
    text: &str,
    file: &str,
) -> Result<T, ConfigError> {
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
    input: Option<RawInputs>,
    output: Option<RawOutput>,
    features: Option<String>,
    model: Option<String>,
    audiences: Option<String>,
    sessions: Option<RawSessions>,
    state: Option<RawState>,
    identity: Option<RawIdentity>,
    privacy: Option<RawPrivacy>,
    quality: Option<RawQuality>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawQuality {
    days_late_allowed: Option<i64>,
    max_session_days: Option<i64>,
    filter_bots: Option<bool>,
    bot_pattern: Option<String>,
}

/// Snowplow's bot filter (dbt-snowplow-web `filter_bots`), matched case-insensitively
/// anywhere in the user agent.
pub const SNOWPLOW_BOT_PATTERN: &str = "bot|crawl|slurp|spider|archiv|spinn|sniff|seo|audit|survey|pingdom|worm|capture|(browser|screen)shots|analyz|index|thumb|check|facebook|pingdombot|phantomjs|yandexbot|twitterbot|a_archiver|facebookexternalhit|bingbot|bingpreview|googlebot|baiduspider|360(spider|user-agent)|semalt";

/// Data-quality rules of ingest (`[quality]`), with Snowplow's defaults.
#[derive(Debug, Clone)]
pub struct Quality {
    /// Events sent by the device more than this many days after they were created are
    /// quarantined. Default: 3 (`snowplow__days_late_allowed`).
    pub days_late_allowed: i64,
    /// Tracker sessions are cut after this many days; later events are quarantined.
    /// Default: 3 (`snowplow__max_session_days`).
    pub max_session_days: i64,
    /// User agents matching this pattern are quarantined as bots; None = no bot filter.
    /// Default: Snowplow's list ([`SNOWPLOW_BOT_PATTERN`]).
    pub bot_pattern: Option<String>,
}

impl Default for Quality {
    fn default() -> Quality {
        Quality {
            days_late_allowed: 3,
            max_session_days: 3,
            bot_pattern: Some(SNOWPLOW_BOT_PATTERN.to_string()),
        }
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawState {
    url: Option<String>,
    keep_nights: Option<usize>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawIdentity {
    limits: Option<std::collections::BTreeMap<String, usize>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPrivacy {
    suppression: Option<String>,
    assume_ads_consent: Option<bool>,
    assume_email_consent: Option<bool>,
    raw_email_destinations: Option<Vec<String>>,
    phone_country: Option<String>,
}

/// `[input]` (one source) or `[[input]]` (several, e.g. web events and store sales).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawInputs {
    One(RawInput),
    Many(Vec<RawInput>),
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
    events_per_bucket: Option<usize>,
    write_buckets_above_mib: Option<u64>,
}

/// Input layout of the event files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Snowplow Lake Loader Parquet (atomic columns, unstruct structs, context lists).
    LakeLoader,
    /// propel's flat layout for offline and other sources: one row per event, canonical
    /// column names, Parquet or CSV (see the README).
    Flat,
}

/// One source of events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputDef {
    /// Local path or URL of a directory of files (or one file).
    pub url: String,
    pub layout: Layout,
}

/// A validated job.
#[derive(Debug, Clone)]
pub struct Job {
    /// Where the events are. Default: none; `--input` / `--flat-input` must give them.
    pub inputs: Vec<InputDef>,
    /// Where run outputs go; each run writes `<output>/<as-of>/`. Default: `propel-out`.
    pub output: String,
    pub features: FeatureSet,
    pub model: ModelDef,
    /// Gap that ends a session when the tracker gave no session id. Default: 30 minutes.
    pub session_inactivity_minutes: i64,
    /// A night that reads every file builds sessions and history this many events at a time
    /// (see `buckets`): fewer take less memory. Default: `buckets::EVENTS_PER_BUCKET`.
    pub events_per_bucket: usize,
    /// Above this many MiB of events in memory, the buckets are written to scratch files and
    /// the events let go before sessions are built (see `buckets`), and a full read whose
    /// rows would take more is read and decided a bucket of event ids at a time (see
    /// `ingest::Memory`). Default (`None`): a quarter of the memory the process may use
    /// (`buckets::write_buckets_above`).
    pub write_buckets_above_mib: Option<u64>,
    /// Where state kept between runs lives (identity graph). Default: `<output>/_state`.
    pub state: Option<String>,
    /// How many nights of state are kept (a rerun or backfill of a night needs the state
    /// of the night before it). Default: 7.
    pub state_keep_nights: usize,
    /// Guard limits per identifier kind (see `identity::default_limits`).
    pub identity_limits: std::collections::BTreeMap<String, usize>,
    /// CSV of customers to forget (columns customer_id, email_sha256 or email). Default: none.
    pub suppression: Option<PathBuf>,
    pub audiences: AudienceSet,
    pub privacy: Privacy,
    pub quality: Quality,
}

/// Consent and delivery rules (`[privacy]`).
#[derive(Debug, Clone, Default)]
pub struct Privacy {
    /// Consent assumed for customers with no consent signal at all. Default: false for both
    /// (opt-in, as GDPR requires for advertising and e-mail marketing).
    pub assume_ads_consent: bool,
    pub assume_email_consent: bool,
    /// Destinations allowed to carry raw e-mail addresses (only `email_list` may). Default:
    /// none: every export carries hashes only.
    pub raw_email_destinations: Vec<crate::destinations::Destination>,
    /// Country of phone numbers written without a `+` country code. Default: none (such
    /// numbers are not exported).
    pub phone_country: Option<phonenumber::country::Id>,
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
        let raw_inputs = match raw.input {
            None => Vec::new(),
            Some(RawInputs::One(i)) => vec![i],
            Some(RawInputs::Many(v)) => v,
        };
        let mut inputs = Vec::new();
        for (i, input) in raw_inputs.into_iter().enumerate() {
            let layout = match input.layout.as_deref().unwrap_or("lake_loader") {
                "lake_loader" => Layout::LakeLoader,
                "flat" => Layout::Flat,
                other => {
                    problems.push(
                        format!("input[{i}].layout"),
                        format!(
                            "unknown layout `{other}`, expected `lake_loader` or `flat`{}",
                            did_you_mean(other, ["lake_loader", "flat"])
                        ),
                    );
                    continue;
                }
            };
            // A relative local path is relative to the job file.
            if let Some(url) = input.url {
                let url = if url.contains("://") || Path::new(&url).is_absolute() || embedded {
                    url
                } else {
                    source.base.join(&url).display().to_string()
                };
                inputs.push(InputDef { url, layout });
            }
        }
        let inactivity = raw
            .sessions
            .as_ref()
            .and_then(|s| s.inactivity_minutes)
            .unwrap_or(30);
        if inactivity <= 0 {
            problems.push(
                "sessions.inactivity_minutes",
                format!("expected a positive number of minutes, found {inactivity}"),
            );
        }
        let events_per_bucket = raw
            .sessions
            .as_ref()
            .and_then(|s| s.events_per_bucket)
            .unwrap_or(crate::buckets::EVENTS_PER_BUCKET);
        if events_per_bucket == 0 {
            problems.push(
                "sessions.events_per_bucket",
                "expected a positive number of events, found 0",
            );
        }
        if raw.state.as_ref().and_then(|s| s.keep_nights) == Some(0) {
            problems.push("state.keep_nights", "expected at least 1 night, found 0");
        }
        let raw_quality = raw.quality.unwrap_or_default();
        let mut quality = Quality::default();
        for (key, value, slot) in [
            (
                "quality.days_late_allowed",
                raw_quality.days_late_allowed,
                &mut quality.days_late_allowed,
            ),
            (
                "quality.max_session_days",
                raw_quality.max_session_days,
                &mut quality.max_session_days,
            ),
        ] {
            match value {
                Some(v) if v <= 0 => problems.push(
                    key,
                    format!("expected a positive number of days, found {v}"),
                ),
                Some(v) => *slot = v,
                None => {}
            }
        }
        if let Some(pattern) = raw_quality.bot_pattern {
            match regex::Regex::new(&pattern) {
                Ok(_) => quality.bot_pattern = Some(pattern),
                Err(e) => problems.push(
                    "quality.bot_pattern",
                    format!("expected a regular expression: {e}"),
                ),
            }
        }
        if raw_quality.filter_bots == Some(false) {
            quality.bot_pattern = None;
        }
        let mut identity_limits = crate::identity::default_limits();
        for (k, v) in raw.identity.and_then(|i| i.limits).unwrap_or_default() {
            if let Some(limit) = identity_limits.get_mut(&k) {
                *limit = v;
            } else {
                problems.push(
                    format!("identity.limits.{k}"),
                    format!(
                        "unknown identifier kind `{k}`, expected one of {}{}",
                        crate::identity::kind::ALL.join(", "),
                        did_you_mean(&k, crate::identity::kind::ALL)
                    ),
                );
            }
        }
        let privacy_raw = raw.privacy.unwrap_or_default();
        let suppression = privacy_raw
            .suppression
            .as_ref()
            .map(|p| source.base.join(p));
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
        let audiences_src = match (&raw.audiences, embedded) {
            (Some(p), false) => Source::read(&source.base.join(p)),
            _ => Ok(Source::embedded("models/audiences.toml", DEFAULT_AUDIENCES)),
        };
        let mut privacy = Privacy {
            assume_ads_consent: privacy_raw.assume_ads_consent.unwrap_or(false),
            assume_email_consent: privacy_raw.assume_email_consent.unwrap_or(false),
            ..Privacy::default()
        };
        for (i, d) in privacy_raw
            .raw_email_destinations
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            match crate::destinations::Destination::from_name(d) {
                Some(dest @ crate::destinations::Destination::EmailList) => {
                    privacy.raw_email_destinations.push(dest)
                }
                _ => problems.push(
                    format!("privacy.raw_email_destinations[{i}]"),
                    format!("only `email_list` may carry raw e-mail addresses, found `{d}`"),
                ),
            }
        }
        if let Some(c) = &privacy_raw.phone_country {
            match c.to_uppercase().parse::<phonenumber::country::Id>() {
                Ok(id) => privacy.phone_country = Some(id),
                Err(_) => problems.push(
                    "privacy.phone_country",
                    format!("expected a two-letter country code such as \"GB\", found {c:?}"),
                ),
            }
        }
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
        let audiences = match (&features, audiences_src) {
            (Ok(f), Ok(src)) => {
                let mut columns = f.names();
                columns.extend(SCORE_COLUMNS.map(String::from));
                AudienceSet::parse(&src, &columns, raw.audiences.is_none() || embedded)
            }
            (_, Err(e)) => Err(e),
            (Err(_), Ok(_)) => Err(ConfigError(Vec::new())),
        };
        if let Err(e) = &audiences {
            all.extend(e.0.iter().cloned());
        }
        if !all.is_empty() {
            return Err(ConfigError(all));
        }
        Ok(Job {
            inputs,
            output: raw
                .output
                .and_then(|o| o.url)
                .unwrap_or_else(|| "propel-out".to_string()),
            features: features.expect("checked above"),
            model: model.expect("checked above"),
            session_inactivity_minutes: inactivity,
            events_per_bucket,
            write_buckets_above_mib: raw
                .sessions
                .as_ref()
                .and_then(|s| s.write_buckets_above_mib),
            state_keep_nights: raw.state.as_ref().and_then(|s| s.keep_nights).unwrap_or(7),
            state: raw.state.and_then(|s| s.url),
            identity_limits,
            suppression,
            audiences: audiences.expect("checked above"),
            privacy,
            quality,
        })
    }
}

mod audiences;
mod features;
mod model;

pub use audiences::*;
pub use features::*;
pub use model::*;

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
        assert!(job.audiences.audiences.len() >= 4);
        assert_eq!(job.events_per_bucket, crate::buckets::EVENTS_PER_BUCKET);
        assert_eq!(job.write_buckets_above_mib, None);
        let source = Source::embedded("job.toml", "[sessions]\nwrite_buckets_above_mib = 512\n");
        let job = Job::parse(&source, true).unwrap();
        assert_eq!(crate::buckets::write_buckets_above(&job), 512 << 20);
    }

    #[test]
    fn a_bucket_of_no_events_is_refused() {
        let source = Source::embedded("job.toml", "[sessions]\nevents_per_bucket = 0\n");
        let err = Job::parse(&source, true).unwrap_err().to_string();
        assert!(
            err.contains("sessions.events_per_bucket") && err.contains("found 0"),
            "{err}"
        );
    }

    #[test]
    fn the_documented_nightly_job_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("jobs/nightly.toml");
        let job = Job::load(Some(&path)).expect("jobs/nightly.toml");
        assert_eq!(job.state_keep_nights, 7);
        assert_eq!(job.identity_limits, crate::identity::default_limits());
        assert!(!job.privacy.assume_ads_consent && job.privacy.raw_email_destinations.is_empty());
        assert_eq!(
            job.quality.bot_pattern.as_deref(),
            Some(SNOWPLOW_BOT_PATTERN)
        );
    }

    #[test]
    fn the_evaluation_job_is_valid() {
        // examples/online_retail.rs runs it; nothing else would notice it going stale.
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("jobs/evaluation/online_retail.toml");
        let job = Job::load(Some(&path)).expect("jobs/evaluation/online_retail.toml");
        assert_eq!(job.model.horizon_days, 30);
        assert_eq!(job.model.families.len(), 2);
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
}
