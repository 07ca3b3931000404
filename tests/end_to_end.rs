//! The whole job on generated Snowplow Lake Loader data, through the binary.

mod common;

use std::collections::BTreeSet;

use common::*;
use polars::prelude::*;
use sha2::{Digest, Sha256};

#[test]
fn full_run_writes_every_output_consistently() {
    let tmp = tempfile::tempdir().unwrap();
    let events = small_events(tmp.path());
    let out = tmp.path().join("out");
    let o = propel(
        tmp.path(),
        &[
            "run",
            "--input",
            events.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let run = run_dir(&out);
    for f in [
        "scores.parquet",
        "features.parquet",
        "sessions.parquet",
        "identity.parquet",
        "metrics.json",
        "model/model.json",
        "audiences/ready_to_buy/csv.csv",
        "audiences/ready_to_buy/google_customer_match.csv",
        "validation.parquet",
        "report/index.html",
        "run.json",
        "manifest.json",
        "_SUCCESS",
    ] {
        assert!(run.join(f).is_file(), "missing {f}");
    }

    // The manifest lists every other file with its true size and checksum.
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("manifest.json")).unwrap()).unwrap();
    let files = manifest["files"].as_array().unwrap();
    assert!(files.len() >= 7);
    for f in files {
        let bytes = std::fs::read(run.join(f["path"].as_str().unwrap())).unwrap();
        assert_eq!(f["bytes"].as_u64().unwrap(), bytes.len() as u64);
        assert_eq!(
            f["sha256"].as_str().unwrap(),
            hex::encode(Sha256::digest(&bytes))
        );
    }

    // Row counts add up: every row read is used, a duplicate, quarantined or after as-of.
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("metrics.json")).unwrap()).unwrap();
    let c = &m["ingest"];
    let n = |k: &str| c[k].as_u64().unwrap();
    assert_eq!(
        n("read"),
        n("used") + n("duplicates") + n("quarantined") + n("after_as_of")
    );
    assert!(n("duplicates") > 0, "the generator plants duplicates");
    let source_rows: usize = parquet_files(&events)
        .iter()
        .map(|p| read_parquet(p).height())
        .sum();
    assert_eq!(n("read") as usize, source_rows);
    for k in [
        "auc",
        "pr_auc",
        "log_loss",
        "brier",
        "lift_top_decile",
        "n_train",
        "n_validation",
        "positive_rate",
    ] {
        assert!(m[k].is_number(), "metrics.json lacks {k}");
    }
    assert!(m["auc"].as_f64().unwrap() > 0.7, "auc {}", m["auc"]);

    // Scores: one row per customer, valid ranges, same customers as the features.
    let scores = read_parquet(&run.join("scores.parquet"));
    let features = read_parquet(&run.join("features.parquet"));
    assert_eq!(scores.height(), features.height());
    let ids: BTreeSet<String> = strings(&scores, "customer_id").into_iter().collect();
    assert_eq!(ids.len(), scores.height());
    let score = scores.column("score").unwrap().f64().unwrap();
    assert!(score.iter().flatten().all(|s| (0.0..=1.0).contains(&s)));
    let pct = scores.column("percentile").unwrap().f64().unwrap();
    assert!(pct.iter().flatten().all(|p| (0.0..=100.0).contains(&p)));
    let dec: BTreeSet<i32> = scores
        .column("decile")
        .unwrap()
        .i32()
        .unwrap()
        .iter()
        .flatten()
        .collect();
    assert_eq!(dec, (1..=10).collect());
    // Every customer in the identity map is scored.
    let identity = read_parquet(&run.join("identity.parquet"));
    let idc: BTreeSet<String> = strings(&identity, "customer_id").into_iter().collect();
    assert_eq!(idc, ids);
    // No raw e-mail anywhere in the identity map.
    assert!(
        !identity
            .column("identifier")
            .unwrap()
            .str()
            .unwrap()
            .iter()
            .flatten()
            .any(|s| s.contains('@'))
    );

    // The audience: top 20% by score, hashed identifiers only.
    let csv = std::fs::read_to_string(run.join("audiences/ready_to_buy/csv.csv")).unwrap();
    let rows = csv.lines().count() - 1;
    assert_eq!(rows, (scores.height() as f64 * 0.2).ceil() as usize);
    assert!(
        csv.lines()
            .next()
            .unwrap()
            .starts_with("customer_id,email_sha256,score,percentile,decile")
    );
    assert!(!csv.contains('@'));
    let top_min: f64 = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(2).unwrap().parse::<f64>().unwrap())
        .fold(1.0, f64::min);
    // (The CSV carries 6 decimals.) Nobody outside the audience scores above its lowest member.
    let above = score
        .iter()
        .flatten()
        .filter(|s| *s > top_min + 1e-6)
        .count();
    assert!(
        above < rows,
        "audience holds the highest scores: {above} above {top_min}"
    );

    // Sessions cover every event exactly once.
    let sessions = read_parquet(&run.join("sessions.parquet"));
    let total: i64 = sessions
        .column("events")
        .unwrap()
        .as_materialized_series()
        .cast(&DataType::Int64)
        .unwrap()
        .i64()
        .unwrap()
        .sum()
        .unwrap();
    assert_eq!(total as u64, n("used"));
}

#[test]
fn identical_runs_give_byte_identical_outputs() {
    let tmp = tempfile::tempdir().unwrap();
    let events = small_events(tmp.path());
    let mut digests = Vec::new();
    for name in ["a", "b"] {
        let out = tmp.path().join(name);
        let o = propel(
            tmp.path(),
            &[
                "run",
                "--input",
                events.to_str().unwrap(),
                "--output",
                out.to_str().unwrap(),
                "--as-of",
                "2026-05-15",
            ],
        );
        assert!(o.status.success(), "{}", stderr(&o));
        let run = run_dir(&out);
        let files = [
            "scores.parquet",
            "features.parquet",
            "sessions.parquet",
            "identity.parquet",
            "model/model.json",
            "audiences/ready_to_buy/csv.csv",
            "audiences/ready_to_buy/ttd_uid2.txt",
            "report/index.html",
            "metrics.json",
            "manifest.json",
        ];
        digests.push(files.map(|f| {
            (
                f,
                hex::encode(Sha256::digest(std::fs::read(run.join(f)).unwrap())),
            )
        }));
    }
    assert_eq!(digests[0], digests[1]);
}

#[test]
fn the_generator_is_deterministic_for_a_seed() {
    let tmp = tempfile::tempdir().unwrap();
    let mut all = Vec::new();
    for name in ["a", "b"] {
        let out = tmp.path().join(name);
        let o = propel(
            tmp.path(),
            &[
                "generate",
                "--customers",
                "50",
                "--days",
                "10",
                "--seed",
                "3",
                "--out",
                out.to_str().unwrap(),
            ],
        );
        assert!(o.status.success(), "{}", stderr(&o));
        let files: Vec<(String, Vec<u8>)> = parquet_files(&out)
            .into_iter()
            .map(|p| {
                (
                    p.strip_prefix(&out).unwrap().display().to_string(),
                    std::fs::read(&p).unwrap(),
                )
            })
            .collect();
        assert!(
            files
                .iter()
                .all(|(p, _)| p.starts_with("load_tstamp_date=2026-05-")),
            "{:?}",
            files.iter().map(|f| &f.0).collect::<Vec<_>>()
        );
        all.push(files);
    }
    assert_eq!(all[0], all[1]);
}

/// A store's offline sales: only `transaction` and `transaction_item` events.
#[test]
fn runs_on_transactions_only_and_scores_every_customer_in_them() {
    let tmp = tempfile::tempdir().unwrap();
    let events = small_events(tmp.path());
    let only_tx = tmp.path().join("tx");
    for p in parquet_files(&events) {
        let mut df = read_parquet(&p)
            .lazy()
            .filter(
                col("event")
                    .eq(lit("transaction"))
                    .or(col("event").eq(lit("transaction_item"))),
            )
            // An offline source has no web cookies: identity comes from the customer number.
            .select([all()
                .exclude_cols([
                    "domain_userid",
                    "domain_sessionid",
                    "network_userid",
                    "^unstruct_.*$",
                    "^contexts_.*$",
                    "^page_.*$",
                ])
                .as_expr()])
            .collect()
            .unwrap();
        let rel = p.strip_prefix(&events).unwrap();
        let target = only_tx.join(rel);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        ParquetWriter::new(std::fs::File::create(&target).unwrap())
            .finish(&mut df)
            .unwrap();
    }
    let out = tmp.path().join("out");
    let o = propel(
        tmp.path(),
        &[
            "run",
            "--input",
            only_tx.to_str().unwrap(),
            "--as-of",
            "2026-05-20",
            "--horizon",
            "7",
            "--output",
            out.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let run = run_dir(&out);
    // Every distinct buyer (by normalised user id) before the as-of date is scored once.
    let mut buyers = BTreeSet::new();
    for p in parquet_files(&only_tx) {
        let df = read_parquet(&p)
            .lazy()
            .filter(col("derived_tstamp").lt(NaiveDateLit::parse("2026-05-20")))
            .collect()
            .unwrap();
        for u in df
            .column("user_id")
            .unwrap()
            .str()
            .unwrap()
            .iter()
            .flatten()
        {
            buyers.insert(u.trim().to_lowercase());
        }
    }
    let scores = read_parquet(&run.join("scores.parquet"));
    assert_eq!(scores.height(), buyers.len());
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(m["horizon_days"], 7);
    assert!(m["n_train"].as_u64().unwrap() > 0);
}

/// Timestamp literal helper for filters in tests.
struct NaiveDateLit;

impl NaiveDateLit {
    fn parse(date: &str) -> Expr {
        let d = chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d").unwrap();
        lit(propel::util::date_to_micros(d)).cast(propel::util::utc())
    }
}

#[test]
fn bad_inputs_and_configs_fail_with_one_line_and_an_exit_code() {
    let tmp = tempfile::tempdir().unwrap();
    // Missing input: input error (3), one line naming the location.
    let o = propel(tmp.path(), &["run", "--input", "no/such/dir"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("no/such/dir") && err.lines().count() == 1,
        "{err}"
    );
    // A file without the mandatory event_id column.
    let bad = tmp.path().join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    let mut df = df!("collector_tstamp" => [1i64], "event" => ["page_view"]).unwrap();
    ParquetWriter::new(std::fs::File::create(bad.join("x.parquet")).unwrap())
        .finish(&mut df)
        .unwrap();
    let o = propel(tmp.path(), &["run", "--input", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(3));
    assert!(
        stderr(&o).contains("missing mandatory column `event_id`"),
        "{}",
        stderr(&o)
    );
    // A broken job file: config error (2), every problem listed.
    let job = tmp.path().join("job.toml");
    std::fs::write(&job, "features = \"f.toml\"\n").unwrap();
    std::fs::write(tmp.path().join("f.toml"), "[[feature]]\nname = \"x\"\nagg = \"sum\"\n\n[[feature]]\nname = \"y\"\nagg = \"count\"\nevents = [\"add_to_crat\"]\n").unwrap();
    let o = propel(tmp.path(), &["validate", "--job", job.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(
        err.contains("`sum` needs a `field`") && err.contains("did you mean `add_to_cart`?"),
        "{err}"
    );
}

#[test]
fn too_little_data_is_refused_with_exit_4_and_the_previous_model_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let events = small_events(tmp.path());
    let out = tmp.path().join("out");
    let ok = propel(
        tmp.path(),
        &[
            "run",
            "--input",
            events.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
            "--as-of",
            "2026-05-10",
        ],
    );
    assert!(ok.status.success(), "{}", stderr(&ok));
    // The model in production: in the state of the night run.
    let model_state = || out.join("_state/night-2026-05-10/model.json");
    let before = std::fs::read(model_state()).unwrap();
    // A model definition that needs far more positives than the data has.
    std::fs::write(
        tmp.path().join("strict.toml"),
        "[label]\nhorizon_days = 14\n[eligibility]\nmin_positives = 1000000\n",
    )
    .unwrap();
    std::fs::write(tmp.path().join("job.toml"), "model = \"strict.toml\"\n").unwrap();
    let o = propel(
        tmp.path(),
        &[
            "run",
            "--job",
            "job.toml",
            "--input",
            events.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
            "--as-of",
            "2026-05-11",
        ],
    );
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("not enough training data") && err.contains("need at least 1000000"),
        "{err}"
    );
    assert!(!out.join("2026-05-11").exists(), "nothing published");
    assert_eq!(
        std::fs::read(model_state()).unwrap(),
        before,
        "the previous model stays in production"
    );
}

#[test]
fn one_run_at_a_time_and_a_dead_holder_never_blocks() {
    let tmp = tempfile::tempdir().unwrap();
    let events = small_events(tmp.path());
    let out = tmp.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    // Another run holds the lock (here: this test process).
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(out.join(".propel.lock"))
        .unwrap();
    lock.try_lock().unwrap();
    std::fs::write(out.join(".propel.lock"), "pid 4242").unwrap();
    let args = [
        "run",
        "--input",
        events.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--as-of",
        "2026-05-10",
    ];
    let o = propel(tmp.path(), &args);
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("another propel run holds the lock")
            && err.contains("pid 4242")
            && err.lines().count() == 1,
        "{err}"
    );
    assert!(!out.join("2026-05-10").exists());
    // The holder dies: the kernel releases its lock; the lock file left behind is harmless.
    drop(lock);
    assert!(out.join(".propel.lock").exists());
    let o = propel(tmp.path(), &args);
    assert!(o.status.success(), "{}", stderr(&o));
}
