//! Identity through real inputs: Snowplow's own fixtures, on- and offline sources, deletion,
//! and ids that hold across runs.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use common::*;
use polars::prelude::*;
use propel::config::{InputDef, Layout};
use propel::identity::{IdentityState, Suppression, default_limits, resolve};
use propel::util::sha256_hex;

fn shared_reference() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/reference/snowplow")
}

/// Converts a Snowplow dbt fixture (one CSV row per enriched event, text columns) into
/// Lake Loader Parquet: timestamps typed as UTC, the atomic columns propel reads kept.
fn fixture_to_lake_loader(csv: &Path, out: &Path) {
    let ts = |c: &str| {
        col(c)
            .str()
            .to_datetime(
                Some(TimeUnit::Microseconds),
                Some(TimeZone::UTC),
                StrptimeOptions {
                    format: Some("%Y-%m-%d %H:%M:%S%.f".into()),
                    strict: true,
                    exact: true,
                    cache: true,
                },
                lit("raise"),
            )
            .alias(c)
    };
    let raw = LazyCsvReader::new(PlRefPath::new(csv.to_str().unwrap()))
        .with_has_header(true)
        .with_infer_schema_length(Some(0))
        .finish()
        .unwrap()
        .collect()
        .unwrap();
    // Mobile events carry their user and session in a JSON client_session context; the Lake
    // Loader writes it as a list of structs with snake_case fields.
    let context = raw
        .get_column_names()
        .into_iter()
        .find(|c| c.starts_with("contexts_com_snowplowanalytics_snowplow_client_session_1"))
        .map(|c| c.to_string());
    let (mut cs_user, mut cs_session) = (Vec::new(), Vec::new());
    for i in 0..raw.height() {
        let json = context
            .as_ref()
            .and_then(|c| raw.column(c).unwrap().str().unwrap().get(i));
        let entity = json
            .and_then(|j| serde_json::from_str::<serde_json::Value>(j).ok())
            .and_then(|v| v.get(0).cloned());
        let field = |k: &str| {
            entity
                .as_ref()
                .and_then(|e| e.get(k))
                .and_then(|v| v.as_str())
                .map(str::to_string)
        };
        cs_user.push(field("userId"));
        cs_session.push(field("sessionId"));
    }
    let mut raw = raw;
    raw.with_column(Column::new("_cs_user".into(), cs_user))
        .unwrap();
    raw.with_column(Column::new("_cs_session".into(), cs_session))
        .unwrap();
    let client_session = when(
        col("_cs_user")
            .is_not_null()
            .or(col("_cs_session").is_not_null()),
    )
    .then(
        concat_list([as_struct(vec![
            lit("1-0-0").alias("_schema_version"),
            col("_cs_session").alias("session_id"),
            col("_cs_user").alias("user_id"),
        ])])
        .unwrap(),
    )
    .otherwise(lit(NULL))
    .alias("contexts_com_snowplowanalytics_snowplow_client_session_1");
    let mut df = raw
        .lazy()
        .select([
            client_session,
            col("event_id"),
            ts("collector_tstamp"),
            ts("derived_tstamp"),
            col("event"),
            col("event_name"),
            col("user_id"),
            col("domain_userid"),
            col("network_userid"),
            col("domain_sessionid"),
            col("page_url"),
            col("page_urlpath"),
        ])
        .collect()
        .unwrap();
    std::fs::create_dir_all(out).unwrap();
    ParquetWriter::new(std::fs::File::create(out.join("events.parquet")).unwrap())
        .finish(&mut df)
        .unwrap();
}

fn identity_map(identity: &DataFrame) -> BTreeMap<(String, String), String> {
    let s = |c: &str| {
        identity
            .column(c)
            .unwrap()
            .str()
            .unwrap()
            .iter()
            .map(|v| v.unwrap().to_string())
            .collect::<Vec<_>>()
    };
    s("kind")
        .into_iter()
        .zip(s("identifier"))
        .zip(s("customer_id"))
        .collect()
}

/// Converts a Snowplow fixture, ingests it and resolves identities: (kind, identifier) ->
/// customer id.
fn resolve_fixture(csv: &Path) -> BTreeMap<(String, String), String> {
    let tmp = tempfile::tempdir().unwrap();
    fixture_to_lake_loader(csv, tmp.path());
    let inputs = vec![InputDef {
        url: tmp.path().display().to_string(),
        layout: Layout::LakeLoader,
    }];
    let ingested = propel::ingest::ingest(
        &inputs,
        Some(chrono::NaiveDate::from_ymd_opt(2030, 1, 1).unwrap()),
        &propel::config::Quality::default(),
    )
    .unwrap();
    let (r, _) = resolve(
        &ingested.events.frame().unwrap(),
        None,
        &default_limits(),
        &Suppression::default(),
    )
    .unwrap();
    identity_map(&r.identity)
}

/// dbt-snowplow-web stitches each cookie to the latest `user_id` seen on it. propel's graph
/// contains that as a special case: every cookie lands with its stitched user; cookies never
/// stitched carry no user id. propel goes further: a cookie seen with two user ids (the
/// fixture's "user stitch - session: 1st id / 2nd id") makes them one customer, where dbt
/// keeps the earlier user id apart.
#[test]
fn reproduces_dbt_snowplow_web_stitched_users() {
    let base = shared_reference().join("dbt-snowplow-web/integration_tests/data");
    let map = resolve_fixture(&base.join("source/snowplow_web_events.csv"));
    let customer = |kind: &str, id: &str| map.get(&(kind.to_string(), id.to_string())).cloned();

    let expected = CsvReadOptions::default()
        .with_infer_schema_length(Some(0))
        .try_into_reader_with_file_path(Some(
            base.join("expected/snowplow_web_page_views_expected.csv"),
        ))
        .unwrap()
        .finish()
        .unwrap();
    let cookies = expected.column("domain_userid").unwrap().str().unwrap();
    let stitched = expected.column("stitched_user_id").unwrap().str().unwrap();
    let mut checked = 0;
    for (cookie, user) in cookies.iter().zip(stitched.iter()) {
        let Some(cookie) = cookie else { continue };
        let c = customer("domain_userid", cookie)
            .unwrap_or_else(|| panic!("cookie {cookie} not in the identity map"));
        match user {
            Some(u) => {
                assert_eq!(
                    customer("user_id", u).as_ref(),
                    Some(&c),
                    "cookie {cookie} should be with user {u}"
                );
                checked += 1;
            }
            None => assert!(
                !map.iter().any(|((k, _), v)| k == "user_id" && *v == c),
                "cookie {cookie} was never stitched by dbt, yet its customer has a user id"
            ),
        }
    }
    assert!(checked >= 30, "only {checked} stitched page views checked");
    // Further than dbt: both ids seen on the one cookie are one customer.
    let ids: Vec<&String> = map
        .keys()
        .filter(|(k, id)| k == "user_id" && id.starts_with("user stitch - session"))
        .map(|(_, id)| id)
        .collect();
    assert!(ids.len() >= 2, "{ids:?}");
    let first = customer("user_id", ids[0]).unwrap();
    assert!(
        ids.iter()
            .all(|id| customer("user_id", id).as_ref() == Some(&first))
    );
}

/// Web events and store sales (flat layout) unify through the e-mail, then the loyalty id.
fn first_email(events: &Path) -> String {
    for p in parquet_files(events) {
        let df = read_parquet(&p);
        if let Some(e) = df
            .column("user_id")
            .unwrap()
            .str()
            .unwrap()
            .iter()
            .flatten()
            .find(|u| u.contains('@'))
        {
            return e.trim().to_lowercase();
        }
    }
    panic!("no e-mail in the generated events");
}

fn store_sales(dir: &Path, email: &str) -> PathBuf {
    let path = dir.join("store.csv");
    std::fs::write(
        &path,
        format!(
            "event_id,tstamp,event_type,loyalty_id,email,order_id,order_total\n\
             s1,2026-04-01T12:00:00Z,order,L-9,{},S1,20\n\
             s2,2026-04-20T12:00:00Z,order,L-9,,S2,35\n",
            email.to_uppercase()
        ),
    )
    .unwrap();
    path
}

/// dbt-snowplow-unified: web and mobile. A mobile event's user identifier is the
/// client_session context's `userId`; propel reads it as a `client_session_userid` node.
#[test]
fn reproduces_dbt_snowplow_unified_stitched_users() {
    let base = shared_reference().join("dbt-snowplow-unified/integration_tests/data");
    let map = resolve_fixture(&base.join("source/snowplow_unified_events.csv"));
    let customer = |id: &str| {
        ["domain_userid", "client_session_userid"]
            .iter()
            .find_map(|k| map.get(&(k.to_string(), id.to_string())).cloned())
    };
    let expected = CsvReadOptions::default()
        .with_infer_schema_length(Some(0))
        .try_into_reader_with_file_path(Some(
            base.join("expected/snowplow_unified_views_expected.csv"),
        ))
        .unwrap()
        .finish()
        .unwrap();
    let ids = expected.column("user_identifier").unwrap().str().unwrap();
    let stitched = expected.column("stitched_user_id").unwrap().str().unwrap();
    let platform = expected.column("platform").unwrap().str().unwrap();
    let (mut web, mut mobile) = (0, 0);
    for ((id, user), p) in ids.iter().zip(stitched.iter()).zip(platform.iter()) {
        let (Some(id), Some(user)) = (id, user) else {
            continue;
        };
        let c = customer(id).unwrap_or_else(|| panic!("identifier {id} not in the identity map"));
        assert_eq!(
            map.get(&("user_id".to_string(), user.to_string())),
            Some(&c),
            "{id} should be with {user}"
        );
        if p == Some("mob") {
            mobile += 1
        } else {
            web += 1
        }
    }
    assert!(web >= 20 && mobile >= 20, "web {web}, mobile {mobile}");
}

#[test]
fn web_and_store_events_become_one_customer_and_ids_hold_across_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let events = small_events(tmp.path());
    let email = first_email(&events);
    let store = store_sales(tmp.path(), &email);
    let out = tmp.path().join("out");
    let run = |as_of: &str| {
        let o = propel(
            tmp.path(),
            &[
                "run",
                "--input",
                events.to_str().unwrap(),
                "--flat-input",
                store.to_str().unwrap(),
                "--output",
                out.to_str().unwrap(),
                "--as-of",
                as_of,
            ],
        );
        assert!(o.status.success(), "{}", stderr(&o));
        out.join(as_of)
    };
    let first = run("2026-05-15");
    let map = identity_map(&read_parquet(&first.join("identity.parquet")));
    let hash = sha256_hex(&email);
    let c = map[&("email_sha256".to_string(), hash.clone())].clone();
    assert_eq!(map[&("loyalty_id".to_string(), "L-9".to_string())], c);
    assert!(
        map.iter()
            .any(|((k, _), v)| k == "domain_userid" && *v == c),
        "a web cookie joins the store customer"
    );

    // The next night (one more day of data): every known identifier keeps its customer id,
    // except ids merged into an older one, which the run logs.
    let second = run("2026-05-16");
    let map2 = identity_map(&read_parquet(&second.join("identity.parquet")));
    let changes = read_parquet(&second.join("identity_changes.parquet"));
    let merged: BTreeSet<String> = strings(&changes, "previous_id").into_iter().collect();
    for (key, id) in &map {
        if !merged.contains(id) {
            assert_eq!(map2.get(key), Some(id), "{key:?} changed id");
        }
    }
    // Rerunning the same night starts from the same state (the night before it), so it
    // applies the night once, not twice: same outputs, byte-identical state.
    let state = out.join("_state");
    let before: Vec<Vec<u8>> = parquet_files(&state)
        .iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    let outputs = |dir: &std::path::Path| {
        ["identity.parquet", "identity_changes.parquet"]
            .map(|f| std::fs::read(dir.join(f)).unwrap())
    };
    let second_outputs = outputs(&second);
    let third = run("2026-05-16");
    assert_eq!(outputs(&third), second_outputs);
    let after: Vec<Vec<u8>> = parquet_files(&state)
        .iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    assert_eq!(before, after);
}

#[test]
fn a_suppressed_person_appears_in_no_output() {
    let tmp = tempfile::tempdir().unwrap();
    let events = small_events(tmp.path());
    let email = first_email(&events);
    let hash = sha256_hex(&email);
    // Find the customer first, without suppression.
    let o = propel(
        tmp.path(),
        &[
            "run",
            "--input",
            events.to_str().unwrap(),
            "--output",
            "plain",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let map = identity_map(&read_parquet(
        &run_dir(&tmp.path().join("plain")).join("identity.parquet"),
    ));
    let customer = map[&("email_sha256".to_string(), hash.clone())].clone();

    std::fs::write(
        tmp.path().join("forget.csv"),
        format!("email\n  {}  \n", email.to_uppercase()),
    )
    .unwrap();
    std::fs::write(
        tmp.path().join("job.toml"),
        "[privacy]\nsuppression = \"forget.csv\"\n",
    )
    .unwrap();
    let o = propel(
        tmp.path(),
        &[
            "run",
            "--job",
            "job.toml",
            "--input",
            events.to_str().unwrap(),
            "--output",
            "forgot",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let run = run_dir(&tmp.path().join("forgot"));
    let mut files = vec![];
    let mut stack = vec![run.clone(), tmp.path().join("forgot/_state")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p)
            } else {
                files.push(p)
            }
        }
    }
    for f in &files {
        let text = if f.extension().is_some_and(|x| x == "parquet") {
            read_parquet(f).get_columns_string()
        } else {
            String::from_utf8_lossy(&std::fs::read(f).unwrap()).to_string()
        };
        assert!(
            !text.contains(&customer) && !text.contains(&hash),
            "{} still mentions the person",
            f.display()
        );
    }
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(m["rows"]["suppressed_customers"], 1);
    assert!(m["rows"]["suppressed_events"].as_u64().unwrap() > 0);
}

/// A night whose every event belongs to a suppressed customer stops with an input error that
/// says so, whether its rows are held or written aside (held, it used to panic).
#[test]
fn a_night_of_suppressed_customers_only_is_an_input_error() {
    let tmp = tempfile::tempdir().unwrap();
    let example = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("jobs/examples/store_sales.csv"),
    )
    .unwrap();
    // The header and one customer's order with its lines.
    let rows: Vec<&str> = example.lines().take(4).collect();
    std::fs::write(tmp.path().join("in.csv"), rows.join("\n") + "\n").unwrap();
    std::fs::write(
        tmp.path().join("forget.csv"),
        "email\nanna.smith3@example.com\n",
    )
    .unwrap();
    for (name, memory) in [
        ("held", ""),
        (
            "aside",
            "\n[sessions]\nevents_per_bucket = 1\nwrite_buckets_above_mib = 0\n",
        ),
    ] {
        let job = format!("{name}.toml");
        std::fs::write(
            tmp.path().join(&job),
            format!(
                "[input]\nurl = \"in.csv\"\nlayout = \"flat\"\n\n[privacy]\nsuppression = \"forget.csv\"\n{memory}"
            ),
        )
        .unwrap();
        let o = propel(
            tmp.path(),
            &[
                "run",
                "--job",
                &job,
                "--output",
                name,
                "--log-format",
                "json",
            ],
        );
        let err = stderr(&o);
        assert_eq!(
            o.status.code(),
            Some(propel::error::exit_code::INPUT),
            "{name}: {err}"
        );
        assert!(
            err.contains(
                "every one of the 3 events used belongs to a customer on the suppression list"
            ) && !err.contains("panicked"),
            "{name}: {err}"
        );
        assert_eq!(err.contains("rows written aside"), name == "aside", "{err}");
    }
}

/// Helper: every string value of a frame, for searching.
trait AllStrings {
    fn get_columns_string(&self) -> String;
}

impl AllStrings for DataFrame {
    fn get_columns_string(&self) -> String {
        let mut out = String::new();
        for c in self.columns() {
            if let Ok(s) = c.as_materialized_series().cast(&DataType::String) {
                for v in s.str().unwrap().iter().flatten() {
                    out.push_str(v);
                    out.push('\n');
                }
            }
        }
        out
    }
}

#[test]
fn the_state_round_trips() {
    let tmp = tempfile::tempdir().unwrap();
    assert!(IdentityState::load(tmp.path()).unwrap().is_none());
}

mod properties {
    use super::*;
    use propel::schema::event as ev;
    use proptest::prelude::*;

    /// (cookie 0..6, user 0..4 or none, loyalty 0..3 or none, minute)
    type E = (usize, Option<usize>, Option<usize>, i64);

    fn frame(rows: &[E]) -> DataFrame {
        let n = rows.len();
        let s = |name: &str, v: Vec<Option<String>>| Column::new(name.into(), v);
        DataFrame::new(
            n,
            vec![
                s(
                    ev::EVENT_ID,
                    rows.iter()
                        .enumerate()
                        .map(|(i, r)| Some(format!("e{}-{i}", r.3)))
                        .collect(),
                ),
                s(
                    ev::DOMAIN_USERID,
                    rows.iter()
                        .map(|r| Some(format!("cookie{}", r.0)))
                        .collect(),
                ),
                s(
                    ev::USER_ID,
                    rows.iter()
                        .map(|r| r.1.map(|u| format!("user{u}")))
                        .collect(),
                ),
                s(
                    ev::LOYALTY_ID,
                    rows.iter().map(|r| r.2.map(|l| format!("L{l}"))).collect(),
                ),
                s(ev::NETWORK_USERID, vec![None; n]),
                s(ev::CLIENT_USERID, vec![None; n]),
                s(ev::EMAIL, vec![None; n]),
                Column::new(
                    ev::TSTAMP.into(),
                    rows.iter().map(|r| r.3 * 60_000_000).collect::<Vec<_>>(),
                )
                .cast(&propel::util::utc())
                .unwrap(),
            ],
        )
        .unwrap()
    }

    fn mapping(state: &IdentityState) -> BTreeMap<String, String> {
        let n = state.nodes.column("node").unwrap().str().unwrap();
        let c = state.nodes.column("customer_id").unwrap().str().unwrap();
        n.iter()
            .zip(c.iter())
            .map(|(a, b)| (a.unwrap().to_string(), b.unwrap().to_string()))
            .collect()
    }

    fn run(rows: &[E], prev: Option<&IdentityState>) -> IdentityState {
        resolve(
            &frame(rows),
            prev,
            &default_limits(),
            &Suppression::default(),
        )
        .unwrap()
        .0
        .state
    }

    fn event() -> impl Strategy<Value = E> {
        (
            0..6usize,
            prop::option::of(0..4usize),
            prop::option::weighted(0.2, 0..3usize),
            0..(10 * 24 * 60i64),
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// The identity map does not depend on the order of the input rows.
        #[test]
        fn independent_of_input_order(rows in prop::collection::vec(event(), 1..40), seed in any::<u64>()) {
            let mut shuffled = rows.clone();
            let len = shuffled.len();
            for i in 0..len {
                let j = (seed as usize).wrapping_mul(i + 7) % len;
                shuffled.swap(i, j);
            }
            prop_assert_eq!(mapping(&run(&rows, None)), mapping(&run(&shuffled, None)));
        }

        /// One run over all days gives the same ids as nightly runs day by day with state.
        #[test]
        fn nightly_runs_equal_one_full_run(rows in prop::collection::vec(event(), 1..40)) {
            let full = mapping(&run(&rows, None));
            let mut state: Option<IdentityState> = None;
            for day in 0..10 {
                let night: Vec<E> = rows.iter().filter(|r| r.3 / (24 * 60) == day).cloned().collect();
                if !night.is_empty() {
                    state = Some(run(&night, state.as_ref()));
                }
            }
            prop_assert_eq!(full, mapping(&state.unwrap()));
        }

        /// Every event lands in exactly one session, with or without tracker session ids.
        #[test]
        fn every_event_in_exactly_one_session(
            rows in prop::collection::vec((0..3usize, prop::option::of(0..4usize), 0..(3 * 24 * 60i64)), 1..60),
            gap in 1..120i64,
        ) {
            let n = rows.len();
            let s = |name: &str, v: Vec<Option<String>>| Column::new(name.into(), v);
            let df = DataFrame::new(n, vec![
                s(ev::EVENT_ID, (0..n).map(|i| Some(format!("e{i}"))).collect()),
                s(ev::CUSTOMER_ID, rows.iter().map(|r| Some(format!("c{}", r.0))).collect()),
                s(ev::DOMAIN_SESSIONID, rows.iter().map(|r| r.1.map(|x| format!("s{}-{x}", r.0))).collect()),
                s(ev::CLIENT_SESSIONID, vec![None; n]),
                Column::new(ev::TSTAMP.into(), rows.iter().map(|r| r.2 * 60_000_000).collect::<Vec<_>>()).cast(&propel::util::utc()).unwrap(),
                s(ev::EVENT_TYPE, vec![Some("page_view".into()); n]),
                s(ev::PAGE_PATH, vec![Some("/".into()); n]),
                s(ev::PAGE_REFERRER, vec![None; n]),
                s(ev::REFR_MEDIUM, vec![None; n]),
                s(ev::MKT_SOURCE, vec![None; n]),
                s(ev::MKT_MEDIUM, vec![None; n]),
                s(ev::MKT_CAMPAIGN, vec![None; n]),
                s(ev::USERAGENT, vec![None; n]),
            ]).unwrap();
            let (events, sessions) = propel::sessions::sessionize(df.clone(), gap, None).unwrap();
            prop_assert_eq!(events.height(), n);
            prop_assert_eq!(events.column(ev::SESSION_ID).unwrap().null_count(), 0);
            let ids: BTreeSet<&str> = events.column(ev::EVENT_ID).unwrap().str().unwrap().iter().flatten().collect();
            prop_assert_eq!(ids.len(), n);
            let total: i64 = sessions.column("events").unwrap().as_materialized_series().cast(&DataType::Int64).unwrap().i64().unwrap().sum().unwrap();
            prop_assert_eq!(total as usize, n);
            // A session belongs to one customer.
            let per: DataFrame = events.clone().lazy().group_by([col(ev::SESSION_ID)]).agg([col(ev::CUSTOMER_ID).n_unique().alias("k")]).collect().unwrap();
            prop_assert!(per.column("k").unwrap().as_materialized_series().cast(&DataType::UInt32).unwrap().u32().unwrap().iter().all(|k| k == Some(1)));
        }
    }
}
