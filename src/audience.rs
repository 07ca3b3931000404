//! Audiences: who is in each (score cuts, SQL rules on features, exclusions, size limits),
//! and their delivery to each destination with the consent it needs, the identifiers its
//! platform wants, and the members added and removed since the previous night.
//!
//! Layout under the run directory: `audiences/<audience>/<destination file>` (e.g.
//! `google_customer_match.csv`), plus `<stem>.added.<ext>` (new members, full rows) and
//! `<stem>.removed.<ext>` (members gone since the previous night: their identifiers only).
//! Raw e-mails and phones never appear unless `privacy.raw_email_destinations` allows it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use polars::prelude::*;
use serde::Serialize;

use crate::config::{AudienceDef, AudienceSet, Privacy};
use crate::consent::column as cc;
use crate::destinations::{self as dest, Destination, Purpose};
use crate::error::{Context, Result};
use crate::schema::{event as ev, output};
use crate::util::strings;

/// The audience members kept in the state, for the next night's deltas.
pub const MEMBERS_STATE: &str = "audience_members.parquet";
const KEY_1: &str = "key_1";
const KEY_2: &str = "key_2";

/// One audience delivered to one destination.
#[derive(Debug, Clone, Serialize)]
pub struct Delivery {
    pub destination: &'static str,
    pub file: String,
    pub count: usize,
    /// Members new since the previous night, and gone since (None on the first night).
    pub added: Option<usize>,
    pub removed: Option<usize>,
    /// Audience members left out of this destination, per reason.
    pub excluded: BTreeMap<String, usize>,
    pub sha256: String,
}

/// What happened to one audience.
#[derive(Debug, Clone, Serialize)]
pub struct AudienceReport {
    pub name: String,
    pub description: String,
    /// Members after rules, exclusions and `max_size`, before consent.
    pub size: usize,
    pub previous_size: Option<usize>,
    pub delivered: bool,
    pub note: Option<String>,
    pub deliveries: Vec<Delivery>,
}

/// The audiences of a run and the members to keep for the next one.
pub struct Delivered {
    pub reports: Vec<AudienceReport>,
    pub members: DataFrame,
    pub warnings: Vec<String>,
}

/// Members of `def` before exclusions, in ranking order. `table` is sorted by score
/// (descending, ties by customer id).
fn base_members(table: &DataFrame, def: &AudienceDef) -> Result<DataFrame> {
    let n = table.height();
    let mut mask = lit(true);
    if let Some(p) = def.top_percent {
        let take = ((n as f64) * p / 100.0).ceil() as IdxSize;
        mask = mask.and(col("_rank").lt(lit(take)));
    }
    if let Some((_, rule)) = &def.rule {
        mask = mask.and(rule.clone().fill_null(lit(false)));
    }
    table
        .clone()
        .lazy()
        .with_row_index("_rank", None)
        .filter(mask)
        .drop(cols(["_rank"]))
        .collect()
        .ctx(format!("audience {}", def.name))
}

/// The file a destination gets, its identifier columns, and who was left out and why.
struct Rows {
    file: DataFrame,
    /// customer_id and up to two identifiers (the header names of the identifier columns).
    keys: DataFrame,
    key_names: Vec<&'static str>,
    excluded: BTreeMap<String, usize>,
}

fn rows_for(members: &DataFrame, d: Destination, privacy: &Privacy) -> Result<Rows> {
    let mut excluded = BTreeMap::new();
    // Consent first: the destination's purpose decides which consent is needed.
    let (ok, why) = match d.purpose() {
        Purpose::Internal => (None, None),
        Purpose::Ads => (Some(cc::ADS_OK), Some(("ads_consent", cc::ADS_WHY_NOT))),
        Purpose::Email => (
            Some(cc::EMAIL_OK),
            Some(("email_consent", cc::EMAIL_WHY_NOT)),
        ),
    };
    let members = match (ok, why) {
        (Some(ok), Some((prefix, why))) => {
            for reason in strings(members, why)?.into_iter().flatten() {
                *excluded.entry(format!("{prefix}_{reason}")).or_insert(0) += 1;
            }
            members
                .clone()
                .lazy()
                .filter(col(ok))
                .collect()
                .ctx("consent filter")?
        }
        _ => members.clone(),
    };
    let ids = strings(&members, ev::CUSTOMER_ID)?;
    let emails = strings(&members, cc::EMAIL)?;
    let phones = strings(&members, cc::PHONE)?;
    let country = privacy.phone_country;
    let hashed = |f: fn(&str) -> Option<String>, h: fn(&str) -> String| {
        emails
            .iter()
            .map(|e| e.as_deref().and_then(f).map(|v| h(&v)))
            .collect::<Vec<_>>()
    };
    let phone = |f: &dyn Fn(&str) -> Option<String>, h: fn(&str) -> String| {
        phones
            .iter()
            .map(|p| p.as_deref().and_then(f).map(|v| h(&v)))
            .collect::<Vec<_>>()
    };
    let ranking = |df: &DataFrame| -> Result<DataFrame> {
        df.clone()
            .lazy()
            .select([
                col(ev::CUSTOMER_ID),
                col(output::EMAIL_SHA256),
                col(output::SCORE),
                col(output::PERCENTILE),
                col(output::DECILE),
                col("^reason_.*$"),
            ])
            .collect()
            .ctx("audience rows")
    };
    let (file, key_names, k1, k2): (DataFrame, Vec<&'static str>, Vec<Option<String>>, _) = match d
    {
        Destination::Csv | Destination::Parquet => (
            ranking(&members)?,
            vec![output::EMAIL_SHA256],
            strings(&members, output::EMAIL_SHA256)?,
            vec![None; ids.len()],
        ),
        Destination::GoogleCustomerMatch => {
            let e = hashed(dest::google_email, dest::sha256_hex);
            let p = phone(&|s| dest::e164(s, country), dest::sha256_hex);
            let file = df!("Email" => e.clone(), "Phone" => p.clone()).ctx("google rows")?;
            (file, vec!["Email", "Phone"], e, p)
        }
        Destination::MetaCustomAudience => {
            let e = hashed(dest::meta_email, dest::sha256_hex);
            let p = phone(&|s| dest::meta_phone(s, country), dest::sha256_hex);
            let file = df!("email" => e.clone(), "phone" => p.clone()).ctx("meta rows")?;
            (file, vec!["email", "phone"], e, p)
        }
        Destination::TtdUid2 => {
            let e = hashed(dest::uid2_email, dest::sha256_base64);
            let file = df!("uid2_hashed_email" => e.clone()).ctx("uid2 rows")?;
            (file, vec!["uid2_hashed_email"], e, vec![None; ids.len()])
        }
        Destination::EmailList => {
            let raw = privacy.raw_email_destinations.contains(&d);
            let (name, e): (&'static str, Vec<Option<String>>) = if raw {
                (
                    "email",
                    emails
                        .iter()
                        .map(|e| e.as_deref().and_then(dest::meta_email))
                        .collect(),
                )
            } else {
                (
                    output::EMAIL_SHA256,
                    strings(&members, output::EMAIL_SHA256)?,
                )
            };
            let file = df!(
                ev::CUSTOMER_ID => ids.clone(),
                name => e.clone(),
                output::SCORE => members.column(output::SCORE).ctx("score")?.as_materialized_series().clone(),
                output::DECILE => members.column(output::DECILE).ctx("decile")?.as_materialized_series().clone(),
            )
            .ctx("e-mail rows")?;
            (file, vec![name], e, vec![None; ids.len()])
        }
    };
    // Platforms match on e-mail or phone: a member with neither cannot be delivered.
    let usable: Vec<bool> = if d.needs_contact() {
        k1.iter()
            .zip(&k2)
            .map(|(a, b)| a.is_some() || b.is_some())
            .collect()
    } else {
        vec![true; ids.len()]
    };
    let missing = usable.iter().filter(|u| !**u).count();
    if missing > 0 {
        excluded.insert("no_match_key".into(), missing);
    }
    let mask = BooleanChunked::from_slice("usable".into(), &usable);
    let keys = df!(ev::CUSTOMER_ID => ids, KEY_1 => k1, KEY_2 => k2)
        .ctx("keys")?
        .filter(&mask)
        .ctx("keys")?;
    Ok(Rows {
        file: file.filter(&mask).ctx("rows")?,
        keys,
        key_names,
        excluded,
    })
}

fn write(df: &mut DataFrame, path: &Path, d: Destination) -> Result<String> {
    let parquet = d == Destination::Parquet;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).ctx(format!("creating {}", dir.display()))?;
    }
    if parquet {
        crate::util::write_parquet(df, path)?;
    } else {
        let mut file = std::fs::File::create(path).ctx(format!("creating {}", path.display()))?;
        // The Trade Desk's CRM upload is one value per line, without a header.
        CsvWriter::new(&mut file)
            .include_header(d != Destination::TtdUid2)
            .with_float_precision(Some(6))
            .finish(df)
            .ctx(format!("writing {}", path.display()))?;
    }
    let bytes = std::fs::read(path).ctx(format!("reading {}", path.display()))?;
    Ok(dest::sha256_hex_bytes(&bytes))
}

/// Builds every audience from `table` (ranked scores joined with the scoring features and
/// [`crate::consent::contacts`]) and writes them under `dir`. `previous` is the members state
/// of the night before (None on the first night).
pub fn deliver(
    table: &DataFrame,
    set: &AudienceSet,
    privacy: &Privacy,
    previous: Option<&DataFrame>,
    dir: &Path,
) -> Result<Delivered> {
    let mut base = BTreeMap::new();
    for def in &set.audiences {
        base.insert(def.name.clone(), base_members(table, def)?);
    }
    let mut reports = Vec::new();
    let mut warnings = Vec::new();
    let mut state = Vec::new();
    for def in &set.audiences {
        let excluded_ids: BTreeSet<String> = def
            .exclude
            .iter()
            .map(|other| strings(&base[other], ev::CUSTOMER_ID))
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .flatten()
            .flatten()
            .collect();
        let mut members = base[&def.name]
            .clone()
            .lazy()
            .filter(
                col(ev::CUSTOMER_ID)
                    .is_in(
                        lit(Series::new(
                            "x".into(),
                            excluded_ids.into_iter().collect::<Vec<_>>(),
                        ))
                        .implode(false),
                        false,
                    )
                    .not(),
            )
            .collect()
            .ctx(format!("audience {}", def.name))?;
        if let Some(max) = def.max_size {
            members = members.head(Some(max));
        }
        let previous_of = |d: Destination| -> Result<Option<DataFrame>> {
            previous
                .map(|p| {
                    p.clone()
                        .lazy()
                        .filter(
                            col("audience")
                                .eq(lit(def.name.clone()))
                                .and(col("destination").eq(lit(d.name()))),
                        )
                        .collect()
                        .ctx("previous members")
                })
                .transpose()
        };
        let previous_size = match previous {
            Some(_) => Some(
                def.destinations
                    .first()
                    .map(|d| previous_of(*d).map(|p| p.map_or(0, |p| p.height())))
                    .transpose()?
                    .unwrap_or(0),
            ),
            None => None,
        };
        let mut report = AudienceReport {
            name: def.name.clone(),
            description: def.description.clone(),
            size: members.height(),
            previous_size,
            delivered: members.height() >= def.min_size,
            note: None,
            deliveries: Vec::new(),
        };
        if !report.delivered {
            let note = format!(
                "audience {} has {} members, below its min_size {}: not delivered",
                def.name,
                members.height(),
                def.min_size
            );
            warnings.push(note.clone());
            report.note = Some(note);
            reports.push(report);
            continue;
        }
        for &d in &def.destinations {
            let mut rows = rows_for(&members, d, privacy)?;
            let stem = d.file_name();
            let (stem, ext) = stem.rsplit_once('.').expect("has an extension");
            let rel = |suffix: &str| format!("audiences/{}/{stem}{suffix}.{ext}", def.name);
            let sha256 = write(&mut rows.file, &dir.join(rel("")), d)?;
            let (added, removed) = match previous_of(d)? {
                None => (None, None),
                Some(prev) => {
                    let before: BTreeSet<String> = strings(&prev, ev::CUSTOMER_ID)?
                        .into_iter()
                        .flatten()
                        .collect();
                    let now: BTreeSet<String> = strings(&rows.keys, ev::CUSTOMER_ID)?
                        .into_iter()
                        .flatten()
                        .collect();
                    let is_new: Vec<bool> = strings(&rows.keys, ev::CUSTOMER_ID)?
                        .iter()
                        .map(|c| !c.as_ref().is_some_and(|c| before.contains(c)))
                        .collect();
                    let mut added = rows
                        .file
                        .filter(&BooleanChunked::from_slice("new".into(), &is_new))
                        .ctx("added members")?;
                    let gone: Vec<bool> = strings(&prev, ev::CUSTOMER_ID)?
                        .iter()
                        .map(|c| !c.as_ref().is_some_and(|c| now.contains(c)))
                        .collect();
                    let prev = prev
                        .filter(&BooleanChunked::from_slice("gone".into(), &gone))
                        .ctx("removed members")?;
                    let mut removed = prev
                        .clone()
                        .lazy()
                        .select(
                            rows.key_names
                                .iter()
                                .enumerate()
                                .map(|(i, name)| col([KEY_1, KEY_2][i]).alias(*name))
                                .collect::<Vec<_>>(),
                        )
                        .collect()
                        .ctx("removed members")?;
                    write(&mut added, &dir.join(rel(".added")), d)?;
                    write(&mut removed, &dir.join(rel(".removed")), d)?;
                    (Some(added.height()), Some(removed.height()))
                }
            };
            let n = rows.keys.height();
            state.push(
                rows.keys
                    .lazy()
                    .select([
                        lit(def.name.clone()).alias("audience"),
                        lit(d.name()).alias("destination"),
                        col(ev::CUSTOMER_ID),
                        col(KEY_1).cast(DataType::String),
                        col(KEY_2).cast(DataType::String),
                    ])
                    .collect()
                    .ctx("members state")?,
            );
            report.deliveries.push(Delivery {
                destination: d.name(),
                file: rel(""),
                count: n,
                added,
                removed,
                excluded: rows.excluded,
                sha256,
            });
        }
        reports.push(report);
    }
    let members = if state.is_empty() {
        df!(
            "audience" => Vec::<String>::new(),
            "destination" => Vec::<String>::new(),
            ev::CUSTOMER_ID => Vec::<String>::new(),
            KEY_1 => Vec::<String>::new(),
            KEY_2 => Vec::<String>::new(),
        )
        .ctx("members state")?
    } else {
        concat(
            state.into_iter().map(IntoLazy::lazy).collect::<Vec<_>>(),
            UnionArgs::default(),
        )
        .ctx("members state")?
        .collect()
        .ctx("members state")?
    };
    Ok(Delivered {
        reports,
        members,
        warnings,
    })
}

/// The append-only activation log beside the runs.
pub const ACTIVATION_LOG: &str = "activations.jsonl";

/// Appends one line per delivered audience file to `<output>/activations.jsonl`: which night,
/// audience and destination, how many members, and the file's checksum, so that what was
/// sent where can be audited later. Called after publishing; a rerun logs again.
pub fn log_activations(
    root: &Path,
    as_of: chrono::NaiveDate,
    reports: &[AudienceReport],
) -> Result<()> {
    use std::io::Write;
    let logged = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let mut lines = String::new();
    for r in reports {
        for d in &r.deliveries {
            let line = serde_json::json!({
                "logged_utc": logged,
                "run": as_of.to_string(),
                "audience": r.name,
                "destination": d.destination,
                "file": format!("{as_of}/{}", d.file),
                "count": d.count,
                "added": d.added,
                "removed": d.removed,
                "sha256": d.sha256,
            });
            lines += &(line.to_string() + "\n");
        }
    }
    let path = root.join(ACTIVATION_LOG);
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .ctx(format!("opening {}", path.display()))?;
    // One write call: lines of one run are never interleaved with another's.
    file.write_all(lines.as_bytes())
        .ctx(format!("appending to {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Source;

    /// Six customers, best first, with one feature, contacts and consent.
    fn table() -> DataFrame {
        df!(
            ev::CUSTOMER_ID => ["a", "b", "c", "d", "e", "f"],
            output::EMAIL_SHA256 => ["ha", "hb", "hc", "hd", "he", "hf"],
            output::SCORE => [0.9, 0.8, 0.7, 0.4, 0.2, 0.1],
            output::PERCENTILE => [83.3, 66.7, 50.0, 33.3, 16.7, 0.0],
            output::DECILE => [1, 2, 4, 5, 7, 9],
            "reason_1" => ["x", "x", "x", "x", "x", "x"],
            "carts" => [0, 2, 1, 3, 0, 1],
            cc::EMAIL => [Some("A@x.com"), Some("b@x.com"), None, Some("d@x.com"), Some("e@x.com"), Some("f@x.com")],
            cc::PHONE => [None::<&str>, None, None, None, None, None],
            cc::ADS_OK => [true, false, true, true, true, true],
            cc::ADS_WHY_NOT => [None, Some("refused"), None, None, None, None],
            cc::EMAIL_OK => [true, true, true, false, true, true],
            cc::EMAIL_WHY_NOT => [None, None, None, Some("unknown"), None, None],
        )
        .unwrap()
    }

    fn set(text: &str) -> AudienceSet {
        let columns: Vec<String> = ["carts", "score", "percentile", "decile"]
            .map(String::from)
            .into();
        AudienceSet::parse(&Source::embedded("a.toml", text), &columns, false).unwrap()
    }

    fn ids(df: &DataFrame) -> Vec<String> {
        strings(df, ev::CUSTOMER_ID)
            .unwrap()
            .into_iter()
            .flatten()
            .collect()
    }

    #[test]
    fn rules_exclusions_sizes_consent_and_deltas() {
        let dir = tempfile::tempdir().unwrap();
        let audiences = set(r#"
[[audience]]
name = "top"
top_percent = 50
destinations = ["csv", "google_customer_match", "email_list"]

[[audience]]
name = "carts"
rule = "carts > 0 AND NOT (percentile > 60)"
exclude = ["top"]
max_size = 1

[[audience]]
name = "tiny"
rule = "carts > 2"
min_size = 2
"#);
        let d = deliver(&table(), &audiences, &Privacy::default(), None, dir.path()).unwrap();
        let top = &d.reports[0];
        assert_eq!(top.size, 3, "top 50% of 6");
        let by = |name: &str| {
            top.deliveries
                .iter()
                .find(|x| x.destination == name)
                .unwrap()
        };
        assert_eq!(by("csv").count, 3);
        // b refused advertising: not in the Google file; c has no e-mail: nothing to match on.
        assert_eq!(by("google_customer_match").count, 1);
        assert_eq!(
            by("google_customer_match").excluded,
            BTreeMap::from([
                ("ads_consent_refused".into(), 1),
                ("no_match_key".into(), 1)
            ])
        );
        let google =
            std::fs::read_to_string(dir.path().join("audiences/top/google_customer_match.csv"))
                .unwrap();
        assert_eq!(
            google,
            format!("Email,Phone\n{},\n", dest::sha256_hex("a@x.com"))
        );
        // c, d are not in top; d wins the single seat (best score); a, b are excluded via top.
        assert_eq!(d.reports[1].size, 1);
        let carts = crate::util::read_csv_strings(
            &dir.path().join("audiences/carts/csv.csv"),
            ev::CUSTOMER_ID,
        );
        assert_eq!(carts, ["d"]);
        assert!(!d.reports[2].delivered && d.warnings[0].contains("below its min_size 2"));
        assert_eq!(d.reports[0].previous_size, None);

        // Next night: a leaves the top, d joins it.
        let mut t2 = table();
        t2.with_column(Column::new(
            output::SCORE.into(),
            [0.1, 0.8, 0.7, 0.95, 0.2, 0.05],
        ))
        .unwrap();
        let t2 = t2
            .sort(
                [output::SCORE],
                SortMultipleOptions::default().with_order_descending(true),
            )
            .unwrap();
        let dir2 = tempfile::tempdir().unwrap();
        let d2 = deliver(
            &t2,
            &audiences,
            &Privacy::default(),
            Some(&d.members),
            dir2.path(),
        )
        .unwrap();
        let csv = d2.reports[0]
            .deliveries
            .iter()
            .find(|x| x.destination == "csv")
            .unwrap();
        assert_eq!((csv.added, csv.removed), (Some(1), Some(1)));
        assert_eq!(d2.reports[0].previous_size, Some(3));
        let added = crate::util::read_csv_strings(
            &dir2.path().join("audiences/top/csv.added.csv"),
            ev::CUSTOMER_ID,
        );
        assert_eq!(added, ["d"]);
        let removed =
            std::fs::read_to_string(dir2.path().join("audiences/top/csv.removed.csv")).unwrap();
        assert_eq!(removed, "email_sha256\nha\n");
        assert_eq!(
            ids(&d2
                .members
                .clone()
                .lazy()
                .filter(
                    col("audience")
                        .eq(lit("top"))
                        .and(col("destination").eq(lit("csv")))
                )
                .collect()
                .unwrap()),
            ["d", "b", "c"]
        );
    }
}
