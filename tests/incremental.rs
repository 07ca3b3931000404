//! Incremental nights: a night that reads only the files loaded since the night before
//! publishes what reading every file publishes, and reads everything when it could not.

mod common;

use std::path::Path;

use common::*;
use polars::prelude::*;

/// The one file that differs between the two ways of reading: `run.json` (timings, and how
/// the night read, with its counts).
const READ_DEPENDENT: [&str; 1] = ["run.json"];

/// The files of a run, relative to it.
fn files(dir: &Path) -> Vec<String> {
    files_under(dir)
        .iter()
        .map(|p| p.strip_prefix(dir).unwrap().display().to_string())
        .collect()
}

fn json(run: &Path, file: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(run.join(file)).unwrap()).unwrap()
}

/// How the night read (`run.json`'s `read`).
fn read(run: &Path) -> serde_json::Value {
    json(run, "run.json")["read"].clone()
}

fn night(tmp: &Path, job: &Path, events: &Path, out: &Path, as_of: &str, extra: &[&str]) {
    let mut args = run_args(job, events, out, as_of);
    args.extend(extra);
    let o = propel(tmp, &args);
    assert!(o.status.success(), "{as_of} {extra:?}: {}", stderr(&o));
}

/// Nights over the small data set with the quick job, publishing into `out`.
struct Nights {
    tmp: tempfile::TempDir,
    events: std::path::PathBuf,
    job: std::path::PathBuf,
    out: std::path::PathBuf,
}

impl Nights {
    /// The data, the job, and the first night (2026-05-13) run.
    fn after_the_first() -> Nights {
        let tmp = tempfile::tempdir().unwrap();
        let events = small_events(tmp.path());
        let job = quick_job(tmp.path());
        let out = tmp.path().join("out");
        let nights = Nights {
            tmp,
            events,
            job,
            out,
        };
        nights.run("2026-05-13");
        nights
    }

    fn run(&self, as_of: &str) {
        night(
            self.tmp.path(),
            &self.job,
            &self.events,
            &self.out,
            as_of,
            &[],
        );
    }

    /// How the night of `as_of` read (`run.json`'s `read`).
    fn read(&self, as_of: &str) -> serde_json::Value {
        read(&self.out.join(as_of))
    }

    /// Runs the night of `as_of`, which must read every file; returns why it did.
    fn reason_to_read_every_file(&self, as_of: &str) -> String {
        self.run(as_of);
        let m = self.read(as_of);
        assert_eq!(m["read"], "full");
        m["reason"].as_str().unwrap().to_string()
    }
}

#[test]
fn nights_that_read_only_new_files_publish_what_reading_every_file_does() {
    let tmp = tempfile::tempdir().unwrap();
    let events = small_events(tmp.path());
    let job = quick_job(tmp.path());
    // The incremental nights start from a night that read every file in buckets of 5,000
    // events (about five) written aside, never holding the night's events (its keys, kept
    // events, sessions and history written by bucket), the full reads in one, held. The
    // second and the last night read the history and sessions of the nights before a bucket
    // at a time, as a night does when they are too large to hold (the last from a base and
    // the days changed since); the others hold them.
    let bucketed = tmp.path().join("bucketed.toml");
    std::fs::write(
        &bucketed,
        std::fs::read_to_string(&job).unwrap()
            + "[sessions]\nevents_per_bucket = 5000\nwrite_buckets_above_mib = 0\n",
    )
    .unwrap();
    let (inc, full) = (tmp.path().join("inc"), tmp.path().join("full"));
    let nights = [
        "2026-05-13",
        "2026-05-14",
        "2026-05-15",
        "2026-05-16",
        "2026-05-17",
    ];
    let (mut merges, mut carried, mut changes_kept) = (0, 0, 0);
    let (mut by_bucket, mut merges_by_bucket) = (0, 0);
    for (i, as_of) in nights.iter().enumerate() {
        if *as_of == "2026-05-15" {
            // A late copy of a day already read, loaded with the new day: its events are
            // duplicates of events used before, as in a full read.
            let old = parquet_files(&events.join("load_tstamp_date=2026-05-02"))[0].clone();
            std::fs::copy(
                &old,
                events.join("load_tstamp_date=2026-05-15/zz-late-copy.parquet"),
            )
            .unwrap();
        }
        let by_buckets = [0, 1, nights.len() - 1].contains(&i);
        night(
            tmp.path(),
            if by_buckets { &bucketed } else { &job },
            &events,
            &inc,
            as_of,
            &[],
        );
        night(tmp.path(), &job, &events, &full, as_of, &["--full-refresh"]);
        let (a, b) = (inc.join(as_of), full.join(as_of));
        let (ra, rb) = (read(&a), read(&b));
        if i > 0 {
            assert_eq!(ra["read"], "incremental", "{as_of}: {ra}");
            assert_eq!(ra["from"], nights[i - 1]);
            assert_eq!(ra["counts"]["files"], 1 + (*as_of == "2026-05-15") as u64);
            let merged = json(&a, "metrics.json")["rows"]["identity_merges"]
                .as_u64()
                .unwrap();
            merges += merged;
            carried += ra["counts"]["carried"].as_u64().unwrap();
            // The history kept as the base of a night before and the days changed since.
            let history = inc.join(format!("_state/night-{as_of}/increment/history"));
            changes_kept += history.join("changed").exists() as usize;
            // A night that added its history by bucket writes it whole, by bucket.
            let added_by_bucket =
                history.join("parts.json").exists() && !history.join("changed").exists();
            assert_eq!(added_by_bucket, by_buckets, "{as_of}");
            by_bucket += by_buckets as usize;
            merges_by_bucket += merged * by_buckets as u64;
        }
        assert_eq!(rb["reason"], "--full-refresh");
        if i == 0 {
            assert_eq!(ra["read"], "full");
            // Written aside: its event keys are a file per bucket of events.
            let keys = inc.join(format!("_state/night-{as_of}/increment/keys"));
            let keys: Vec<String> = std::fs::read_dir(&keys)
                .unwrap_or_else(|e| panic!("{}: {e}", keys.display()))
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            assert!(
                keys.len() > 1 && keys.iter().all(|k| k.starts_with(&format!("{as_of}-"))),
                "{keys:?}"
            );
            let used = json(&a, "metrics.json")["rows"]["events"].as_u64().unwrap();
            assert!(used > 15_000, "{used} events: too few for several buckets");
        }
        // The ingest state kept for the next night is the one a full read keeps: the tracker
        // sessions' starts (written from the night before's file and the sessions the night
        // has, never held whole) and the orders. (The events after the as-of date are kept in
        // the order the night read them.)
        for frame in ["session_starts", "orders"] {
            let kept = |out: &std::path::Path| {
                let f = out.join(format!("_state/night-{as_of}/increment/{frame}.parquet"));
                std::fs::read(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()))
            };
            assert!(
                kept(&inc) == kept(&full),
                "{as_of}: the kept {frame} differ"
            );
        }
        assert_eq!(files(&a), files(&b), "{as_of}");
        for f in files(&a) {
            if READ_DEPENDENT.contains(&f.as_str()) {
                continue;
            }
            assert!(
                std::fs::read(a.join(&f)).unwrap() == std::fs::read(b.join(&f)).unwrap(),
                "{as_of}: {f} differs"
            );
        }
    }
    // The nights exercised what makes them hard: customers merged by identity, and events
    // after the night before's as-of date carried into the next night.
    assert!(merges > 0, "no identity merge on an incremental night");
    assert!(carried > 0, "no event carried from a night before");
    // And histories kept as a base and the days changed since, which the next nights
    // started from (`history::Changes`).
    assert!(
        changes_kept >= 2,
        "{changes_kept} nights kept their history as changes"
    );
    // And nights that read the history kept (a base and changes) and the sessions a bucket
    // at a time, one of them with customers merged.
    assert_eq!(by_bucket, 2, "nights that added their history by bucket");
    assert!(
        merges_by_bucket > 0,
        "no identity merge on a night read by bucket"
    );
}

#[test]
fn a_night_reads_every_file_when_one_was_added_before_files_already_read() {
    let nights = Nights::after_the_first();
    let events = &nights.events;
    let old = parquet_files(&events.join("load_tstamp_date=2026-05-02"))[0].clone();
    std::fs::copy(
        &old,
        events.join("load_tstamp_date=2026-05-03/late-copy.parquet"),
    )
    .unwrap();
    let reason = nights.reason_to_read_every_file("2026-05-14");
    assert!(
        reason.contains("late-copy.parquet") && reason.contains("added before files already read"),
        "{reason}"
    );
    // The night after starts from this one again.
    nights.run("2026-05-15");
    assert_eq!(nights.read("2026-05-15")["read"], "incremental");
}

#[test]
fn a_job_with_a_suppression_list_reads_every_file() {
    // The identity graph forgets suppressed people, so only every file tells whether an
    // identifier seen tonight was one of theirs.
    let tmp = tempfile::tempdir().unwrap();
    let events = small_events(tmp.path());
    let job = quick_job(tmp.path());
    std::fs::write(tmp.path().join("forget.csv"), "email\nnobody@example.com\n").unwrap();
    let with_list = tmp.path().join("forgetting.toml");
    std::fs::write(
        &with_list,
        std::fs::read_to_string(&job).unwrap() + "[privacy]\nsuppression = \"forget.csv\"\n",
    )
    .unwrap();
    let out = tmp.path().join("out");
    for as_of in ["2026-05-13", "2026-05-14"] {
        night(tmp.path(), &with_list, &events, &out, as_of, &[]);
    }
    let m = read(&out.join("2026-05-14"));
    assert_eq!(m["read"], "full");
    assert_eq!(m["reason"], "a suppression list is configured");
}

#[test]
fn nights_between_trainings_score_with_the_model_in_production_read_either_way() {
    let tmp = tempfile::tempdir().unwrap();
    let events = small_events(tmp.path());
    let job = quick_job(tmp.path());
    let model_file = tmp.path().join("quick_model.toml");
    let quick = std::fs::read_to_string(&model_file).unwrap();
    let every_three_days = quick.replace("retrain_every_days = 1", "retrain_every_days = 3");
    std::fs::write(&model_file, &every_three_days).unwrap();
    let (inc, full) = (tmp.path().join("inc"), tmp.path().join("full"));
    let nights = [
        ("2026-05-13", "trained"),
        ("2026-05-14", "reused"),
        ("2026-05-15", "reused"),
        ("2026-05-16", "trained"),
    ];
    let model = |night: &Path| {
        let mut m = json(night, "model/model.json");
        // What the night measured the model on, not the model.
        m.as_object_mut().unwrap().remove("validation");
        m
    };
    for (as_of, decision) in nights {
        night(tmp.path(), &job, &events, &inc, as_of, &[]);
        if as_of == "2026-05-14" {
            // Shards read every file too, and decide as the merge does: no training snapshots.
            for shard in ["--shard=0/2", "--shard=1/2", "--merge-shards=2"] {
                night(tmp.path(), &job, &events, &full, as_of, &[shard]);
            }
        } else {
            night(tmp.path(), &job, &events, &full, as_of, &["--full-refresh"]);
        }
        let (a, b) = (inc.join(as_of), full.join(as_of));
        for f in files(&a) {
            if !READ_DEPENDENT.contains(&f.as_str()) {
                assert!(
                    std::fs::read(a.join(&f)).unwrap() == std::fs::read(b.join(&f)).unwrap(),
                    "{as_of}: {f} differs"
                );
            }
        }
        let metrics = json(&a, "metrics.json");
        assert_eq!(metrics["training"]["decision"], decision, "{as_of}");
        if decision == "reused" {
            assert_eq!(metrics["training"]["last_trained"], "2026-05-13");
            assert_eq!(metrics["training"]["due"], "2026-05-16");
            assert!(metrics["gate"].is_null());
            // No snapshot to train on: the validation and scoring cutoffs only.
            assert_eq!(metrics["cutoffs"]["training"], serde_json::json!([]));
            assert_eq!(model(&a), model(&inc.join("2026-05-13")), "{as_of}");
            // Measured on this night's validation cutoff (horizon 14 days), not the training
            // night's.
            let validation = chrono::NaiveDate::parse_from_str(as_of, "%Y-%m-%d").unwrap()
                - chrono::Duration::days(14);
            assert_eq!(metrics["cutoffs"]["validation"], validation.to_string());
            assert!(metrics["n_validation"].as_u64().unwrap() > 0);
            assert!(metrics["auc"].as_f64().unwrap() > 0.5);
        } else {
            assert_eq!(metrics["gate"]["promoted"], true, "{as_of}");
        }
        assert_eq!(
            read(&a)["read"],
            if as_of == "2026-05-13" {
                "full"
            } else {
                "incremental"
            }
        );
    }
    assert_ne!(
        model(&inc.join("2026-05-16")),
        model(&inc.join("2026-05-13"))
    );
    // Other definitions are a new model's: the night after a training retrains when they change.
    std::fs::write(
        &model_file,
        every_three_days.replace("l2 = 1.0", "l2 = 0.5"),
    )
    .unwrap();
    night(tmp.path(), &job, &events, &inc, "2026-05-17", &[]);
    let training = &json(&inc.join("2026-05-17"), "metrics.json")["training"];
    assert_eq!(training["decision"], "trained");
    assert!(
        training["reason"]
            .as_str()
            .unwrap()
            .contains("other feature or model definitions"),
        "{training}"
    );
}

#[test]
fn a_night_reads_every_file_when_the_night_before_kept_its_state_in_another_format() {
    // A state kept by a propel from before its format was recorded: its event keys, say, lack
    // the columns this one reads.
    let nights = Nights::after_the_first();
    let record = nights
        .out
        .join("_state/night-2026-05-13/increment/increment.json");
    let mut kept: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&record).unwrap()).unwrap();
    assert!(kept.as_object_mut().unwrap().remove("format").is_some());
    std::fs::write(&record, kept.to_string()).unwrap();
    let reason = nights.reason_to_read_every_file("2026-05-14");
    assert!(reason.contains("another format (0;"), "{reason}");
    nights.run("2026-05-15");
    assert_eq!(nights.read("2026-05-15")["read"], "incremental");
}

/// A night whose new file has an event of a tracker session the nights before used, earlier
/// than that session's first one and more than the session cap (3 days) before its last:
/// the cap would now quarantine events already used, so the night reads every file.
#[test]
fn a_night_reads_every_file_when_a_session_gains_an_event_before_its_first_one() {
    use propel::schema::snowplow as sp;
    let nights = Nights::after_the_first();
    let events = &nights.events;
    // The first event of the data (so the first of its session), again under a new id four
    // days earlier, loaded with the next night's files.
    let first = read_parquet(&parquet_files(events)[0]);
    let four_days = 4 * 24 * 3_600_000_000i64;
    let schema = first.schema().clone();
    let earlier = |c: &str| {
        (col(c).cast(DataType::Int64) - lit(four_days))
            .cast(schema.get(c).unwrap().clone())
            .alias(c)
    };
    let mut again = first
        .lazy()
        .filter(col(sp::DOMAIN_SESSIONID).is_not_null())
        .sort([sp::COLLECTOR_TSTAMP], Default::default())
        .limit(1)
        .with_columns([
            (col(sp::EVENT_ID) + lit("-earlier")).alias(sp::EVENT_ID),
            earlier(sp::COLLECTOR_TSTAMP),
            earlier(sp::DERIVED_TSTAMP),
            earlier(sp::DVCE_CREATED_TSTAMP),
            earlier(sp::DVCE_SENT_TSTAMP),
        ])
        .collect()
        .unwrap();
    assert_eq!(again.height(), 1);
    let file = events.join("load_tstamp_date=2026-05-14/zz-earlier.parquet");
    ParquetWriter::new(std::fs::File::create(file).unwrap())
        .finish(&mut again)
        .unwrap();
    let reason = nights.reason_to_read_every_file("2026-05-14");
    assert!(
        reason.contains("gained an event before its first one"),
        "{reason}"
    );
}

/// A state whose history has a customer the night's identity does not (a state edited by
/// hand, or kept by a propel that resolved identity otherwise): the night reads every file
/// rather than publish a history that is not one run's.
#[test]
fn a_night_reads_every_file_when_the_history_kept_has_a_customer_unknown_to_identity() {
    let nights = Nights::after_the_first();
    let labels = nights
        .out
        .join("_state/night-2026-05-13/increment/history/label_days.parquet");
    let kept = read_parquet(&labels);
    let mut ghost = kept
        .clone()
        .lazy()
        .limit(1)
        .with_column(lit("ghost-customer").alias("customer_id"))
        .collect()
        .unwrap();
    assert_eq!(ghost.height(), 1);
    ghost = kept.vstack(&ghost).unwrap();
    ParquetWriter::new(std::fs::File::create(&labels).unwrap())
        .finish(&mut ghost)
        .unwrap();
    let reason = nights.reason_to_read_every_file("2026-05-14");
    assert!(
        reason.contains(
            "1 customers of the history (such as ghost-customer) are not among the night's"
        ),
        "{reason}"
    );
    nights.run("2026-05-15");
    assert_eq!(nights.read("2026-05-15")["read"], "incremental");
}
