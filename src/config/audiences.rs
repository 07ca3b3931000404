//! Audience definitions (`models/audiences.toml`): who is in each audience and where it
//! goes. Rules are SQL conditions (parsed by polars' SQL front end) over the scoring
//! snapshot, so marketers' "abandoned a cart in the last 7 days and no purchase" is one line.

use std::collections::BTreeSet;

use polars::prelude::Expr;
use serde::Deserialize;

use super::{Problems, Source, did_you_mean, parse_toml};
use crate::destinations::Destination;
use crate::error::ConfigError;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAudienceFile {
    #[serde(default)]
    audience: Vec<RawAudience>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudience {
    name: String,
    description: Option<String>,
    top_percent: Option<f64>,
    rule: Option<String>,
    #[serde(default)]
    exclude: Vec<String>,
    min_size: Option<usize>,
    max_size: Option<usize>,
    destinations: Option<Vec<String>>,
}

/// Columns a rule may use besides the features.
pub const SCORE_COLUMNS: [&str; 3] = ["score", "percentile", "decile"];

/// One audience; see `models/audiences.toml` for the meaning of each key.
#[derive(Debug, Clone)]
pub struct AudienceDef {
    pub name: String,
    pub description: String,
    pub top_percent: Option<f64>,
    /// The rule as written, and as a polars expression.
    pub rule: Option<(String, Expr)>,
    pub exclude: Vec<String>,
    pub min_size: usize,
    pub max_size: Option<usize>,
    pub destinations: Vec<Destination>,
}

/// Every audience of a job.
#[derive(Debug, Clone)]
pub struct AudienceSet {
    pub source: String,
    pub audiences: Vec<AudienceDef>,
    /// Suggested audiences left out because the feature set lacks what their rule reads
    /// (one line each, for the run summary and `propel validate`).
    pub skipped: Vec<String>,
}

impl AudienceSet {
    /// Parses and checks the file; `columns` are the names a rule may use (the features and
    /// [`SCORE_COLUMNS`]). `suggested`: the embedded default set, used by a job with its own
    /// features: an audience whose rule reads a feature the set lacks is left out (and
    /// listed in `skipped`) instead of failing the job.
    pub fn parse(
        source: &Source,
        columns: &[String],
        suggested: bool,
    ) -> Result<AudienceSet, ConfigError> {
        let raw: RawAudienceFile = parse_toml(&source.text, &source.name)?;
        let mut p = Problems::new(&source.name);
        let names: BTreeSet<&str> = raw.audience.iter().map(|a| a.name.as_str()).collect();
        let mut seen = BTreeSet::new();
        let mut audiences = Vec::new();
        let mut skipped = Vec::new();
        for (i, a) in raw.audience.iter().enumerate() {
            let unknown: Vec<String> = a
                .rule
                .as_deref()
                .and_then(|r| polars::sql::sql_expr(r).ok())
                .map(|e| {
                    e.meta()
                        .root_names()
                        .into_iter()
                        .map(|n| n.to_string())
                        .filter(|n| !columns.contains(n))
                        .collect()
                })
                .unwrap_or_default();
            if suggested && !unknown.is_empty() {
                skipped.push(format!(
                    "suggested audience {} left out: the feature set has no {}",
                    a.name,
                    unknown.join(", ")
                ));
                continue;
            }
            let key = format!("audience[{i}] ({})", a.name);
            if !seen.insert(a.name.as_str()) {
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
            if let Some(t) = a.top_percent
                && !(t > 0.0 && t <= 100.0)
            {
                p.push(
                    format!("{key}.top_percent"),
                    format!("expected a number in (0, 100], found {t}"),
                );
            }
            if a.top_percent.is_none() && a.rule.is_none() {
                p.push(&key, "expected `top_percent` or `rule` (or both)");
            }
            let rule = a.rule.as_ref().and_then(|text| {
                match polars::sql::sql_expr(text) {
                    Err(e) => {
                        p.push(
                            format!("{key}.rule"),
                            format!("expected a SQL condition, found {text:?}: {e}"),
                        );
                        None
                    }
                    Ok(expr) => {
                        for used in expr.clone().meta().root_names() {
                            if !columns.iter().any(|c| c.as_str() == used.as_str()) {
                                p.push(
                                    format!("{key}.rule"),
                                    format!(
                                        "unknown column `{used}`: a rule may use the features and score, percentile, decile{}",
                                        did_you_mean(&used, columns.iter().map(String::as_str))
                                    ),
                                );
                            }
                        }
                        Some((text.clone(), expr))
                    }
                }
            });
            for (j, other) in a.exclude.iter().enumerate() {
                if !names.contains(other.as_str()) || *other == a.name {
                    p.push(
                        format!("{key}.exclude[{j}]"),
                        format!(
                            "expected the name of another audience, found `{other}`{}",
                            did_you_mean(other, names.iter().copied())
                        ),
                    );
                }
            }
            if let (Some(lo), Some(hi)) = (a.min_size, a.max_size)
                && lo > hi
            {
                p.push(
                    format!("{key}.min_size"),
                    format!("min_size {lo} is above max_size {hi}"),
                );
            }
            let mut destinations = Vec::new();
            for (j, d) in a
                .destinations
                .clone()
                .unwrap_or_else(|| vec!["csv".into()])
                .iter()
                .enumerate()
            {
                match Destination::from_name(d) {
                    Some(dest) if !destinations.contains(&dest) => destinations.push(dest),
                    Some(_) => p.push(
                        format!("{key}.destinations[{j}]"),
                        format!("`{d}` listed twice"),
                    ),
                    None => p.push(
                        format!("{key}.destinations[{j}]"),
                        format!(
                            "unknown destination `{d}`, expected one of {}{}",
                            Destination::ALL.map(|d| d.name()).join(", "),
                            did_you_mean(d, Destination::ALL.map(|d| d.name()))
                        ),
                    ),
                }
            }
            audiences.push(AudienceDef {
                name: a.name.clone(),
                description: a.description.clone().unwrap_or_default(),
                top_percent: a.top_percent,
                rule,
                exclude: a.exclude.clone(),
                min_size: a.min_size.unwrap_or(1),
                max_size: a.max_size,
                destinations,
            });
        }
        if !p.is_empty() {
            return Err(ConfigError(p.into_vec()));
        }
        // Exclusions of audiences that were left out exclude no one.
        let kept: BTreeSet<String> = audiences.iter().map(|a| a.name.clone()).collect();
        for a in &mut audiences {
            a.exclude.retain(|e| kept.contains(e));
        }
        Ok(AudienceSet {
            source: source.name.clone(),
            audiences,
            skipped,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<AudienceSet, ConfigError> {
        let columns: Vec<String> = ["cart_adds_7d", "orders_30d", "score", "percentile"]
            .map(String::from)
            .into();
        AudienceSet::parse(&Source::embedded("a.toml", text), &columns, false)
    }

    #[test]
    fn rules_are_sql_over_known_columns() {
        let set = parse(
            "[[audience]]\nname = \"a\"\nrule = \"cart_adds_7d > 0 AND NOT (orders_30d > 0 OR percentile < 10)\"\n",
        )
        .unwrap();
        assert_eq!(set.audiences[0].destinations, [Destination::Csv]);
        let err = parse(
            "[[audience]]\nname = \"a\"\nrule = \"cart_ads_7d > 0\"\ndestinations = [\"gogle_customer_match\"]\nexclude = [\"b\"]\n\n[[audience]]\nname = \"c\"\nrule = \"score >\"\n",
        )
        .unwrap_err()
        .to_string();
        for expected in [
            "unknown column `cart_ads_7d`",
            "did you mean `cart_adds_7d`?",
            "did you mean `google_customer_match`?",
            "audience[0] (a).exclude[0]",
            "audience[1] (c).rule: expected a SQL condition",
        ] {
            assert!(err.contains(expected), "{expected}: {err}");
        }
    }
}
