//! Incremental nights: a night that reads only the files loaded since the night before
//! publishes what reading every file publishes, and reads everything when it could not.

mod common;

use std::path::Path;

use common::*;

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

#[test]
fn nights_that_read_only_new_files_publish_what_reading_every_file_does() {
    let tmp = tempfile::tempdir().unwrap();
    let events = small_events(tmp.path());
    let job = quick_job(tmp.path());
    let (inc, full) = (tmp.path().join("inc"), tmp.path().join("full"));
    let nights = ["2026-05-13", "2026-05-14", "2026-05-15", "2026-05-16"];
    let (mut merges, mut carried) = (0, 0);
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
        night(tmp.path(), &job, &events, &inc, as_of, &[]);
        night(tmp.path(), &job, &events, &full, as_of, &["--full-refresh"]);
        let (a, b) = (inc.join(as_of), full.join(as_of));
        let (ra, rb) = (read(&a), read(&b));
        if i > 0 {
            assert_eq!(ra["read"], "incremental", "{as_of}: {ra}");
            assert_eq!(ra["from"], nights[i - 1]);
            assert_eq!(ra["counts"]["files"], 1 + (*as_of == "2026-05-15") as u64);
            merges += json(&a, "metrics.json")["rows"]["identity_merges"]
                .as_u64()
                .unwrap();
            carried += ra["counts"]["carried"].as_u64().unwrap();
        }
        assert_eq!(rb["reason"], "--full-refresh");
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
}

#[test]
fn a_night_reads_every_file_when_one_was_added_before_files_already_read() {
    let tmp = tempfile::tempdir().unwrap();
    let events = small_events(tmp.path());
    let job = quick_job(tmp.path());
    let out = tmp.path().join("out");
    night(tmp.path(), &job, &events, &out, "2026-05-13", &[]);
    let old = parquet_files(&events.join("load_tstamp_date=2026-05-02"))[0].clone();
    std::fs::copy(
        &old,
        events.join("load_tstamp_date=2026-05-03/late-copy.parquet"),
    )
    .unwrap();
    night(tmp.path(), &job, &events, &out, "2026-05-14", &[]);
    let m = read(&out.join("2026-05-14"));
    assert_eq!(m["read"], "full");
    let reason = m["reason"].as_str().unwrap();
    assert!(
        reason.contains("late-copy.parquet") && reason.contains("added before files already read"),
        "{reason}"
    );
    // The night after starts from this one again.
    night(tmp.path(), &job, &events, &out, "2026-05-15", &[]);
    assert_eq!(read(&out.join("2026-05-15"))["read"], "incremental");
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
