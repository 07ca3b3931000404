//! Nightly operations through the binary: crash safety under `kill -9`, reruns, backfills,
//! exit codes, and the scheduler examples.

mod common;

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::Path;
use std::process::{Command, Stdio};

use common::*;
use sha2::{Digest, Sha256};

/// Every file of a published run, relative path -> SHA-256, checked against its manifest.
fn published(run: &Path) -> BTreeMap<String, String> {
    assert!(
        run.join("_SUCCESS").exists(),
        "{} has no _SUCCESS",
        run.display()
    );
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("manifest.json")).unwrap()).unwrap();
    let mut files = BTreeMap::new();
    for entry in manifest["files"].as_array().unwrap() {
        let rel = entry["path"].as_str().unwrap();
        let digest = hex::encode(Sha256::digest(std::fs::read(run.join(rel)).unwrap()));
        assert_eq!(
            digest,
            entry["sha256"].as_str().unwrap(),
            "{rel} differs from the manifest"
        );
        files.insert(rel.to_string(), digest);
    }
    files.insert(
        "manifest.json".into(),
        hex::encode(Sha256::digest(
            std::fs::read(run.join("manifest.json")).unwrap(),
        )),
    );
    files
}

/// Every state file under `state`, relative path -> bytes.
fn state_files(state: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![state.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(state).unwrap().to_string_lossy().to_string();
            if rel.starts_with('.') || rel.starts_with("cache") {
                // The lock file and a killed run's leftovers (never read); the cache (entries
                // are named by their content and written aside first).
                continue;
            }
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// The visible (not hidden) directories of an output root: runs and the state (the
/// activation log beside them is a file).
fn visible(root: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .map(|p| p.file_name().unwrap().to_string_lossy().to_string())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    names
}

/// Starts a run and kills it (SIGKILL) as soon as its JSON log reports `message` (with
/// `stage` when given). Returns whether the kill happened before the run ended by itself.
fn kill_when(args: &[&str], cwd: &Path, message: &str, stage: Option<&str>) -> bool {
    let mut child = Command::new(env!("CARGO_BIN_EXE_propel"))
        .args(args)
        .current_dir(cwd)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    for line in stderr.lines() {
        let line = line.unwrap();
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        let fields = &v["fields"];
        if fields["message"] == message && stage.is_none_or(|s| fields["stage"] == s) {
            child.kill().unwrap(); // SIGKILL: no destructor, no cleanup runs
            child.wait().unwrap();
            return true;
        }
    }
    child.wait().unwrap();
    false
}

#[test]
fn kill_9_at_any_stage_leaves_the_last_outputs_and_state_intact() {
    let tmp = tempfile::tempdir().unwrap();
    let events = small_events(tmp.path());
    let job = quick_job(tmp.path());
    let out = tmp.path().join("out");
    let state = out.join("_state");
    // Night 1 succeeds: its outputs and state are what every crash below must leave intact.
    let o = propel(tmp.path(), &run_args(&job, &events, &out, "2026-05-14"));
    assert!(o.status.success(), "{}", stderr(&o));
    let night1 = published(&out.join("2026-05-14"));
    let state1 = state_files(&state);

    // Night 2 is killed at every stage, and after publishing but before the state commit.
    let night2 = run_args(&job, &events, &out, "2026-05-15");
    let mut points: Vec<(&str, Option<&str>)> = propel::pipeline::STAGES
        .iter()
        .map(|s| ("stage done", Some(*s)))
        .collect();
    points.insert(0, ("ingest", None)); // while reading
    points.push(("published", None));
    for (message, stage) in points {
        let what = format!("{message} {stage:?}");
        assert!(
            kill_when(&night2, tmp.path(), message, stage),
            "{what}: the run ended first"
        );
        assert_eq!(
            published(&out.join("2026-05-14")),
            night1,
            "{what}: night 1 changed"
        );
        let night2_published = match visible(&out).as_slice() {
            [a, b] if a == "2026-05-14" && b == "_state" => false,
            [a, b, c] if a == "2026-05-14" && b == "2026-05-15" && c == "_state" => {
                // Killed after the rename: night 2 is complete, never half there.
                published(&out.join("2026-05-15"));
                true
            }
            other => panic!("{what}: partial output visible: {other:?}"),
        };
        // The state moves on only after the night is published. A kill sent at a late
        // stage's log line can land after that on a loaded machine (the run goes on until
        // the signal arrives), so what is checked is the order, not how fast the kill was.
        let now = state_files(&state);
        let advanced = now != state1;
        assert!(
            !advanced || (night2_published && now.keys().any(|k| k.contains("2026-05-15"))),
            "{what}: state changed: {:?}",
            now.keys().collect::<Vec<_>>()
        );
        if advanced {
            // The state commit may or may not have finished; either way night 1's state holds.
            for (k, v) in &state1 {
                assert_eq!(now.get(k), Some(v), "{what}: {k} changed");
            }
        }
    }

    // A night that reads every file keeps its events as it sessionises them: killed then,
    // it leaves them aside.
    let mut full = night2.clone();
    full.push("--full-refresh");
    assert!(kill_when(&full, tmp.path(), "stage done", Some("history")));
    assert_eq!(state_files(&state), state1, "killed after the history");
    assert!(
        std::fs::read_dir(&state).unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with(".events-writing-")),
        "the killed night's events are not aside in the state location"
    );

    // A cache entry a killed run was writing (the snapshots, say) is left under its
    // temporary name.
    let torn = state.join("cache/snapshots-0123456789abcdef.tmp-4194304");
    std::fs::create_dir_all(torn.parent().unwrap()).unwrap();
    std::fs::write(&torn, b"half a Parquet file").unwrap();

    // The next run succeeds and gives exactly what an uninterrupted run gives.
    let o = propel(tmp.path(), &night2);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!torn.exists(), "the torn cache entry is left");
    // What the killed runs were writing aside (the events kept bucket by bucket, the night's
    // state) is gone with them: the next run cleared it.
    let aside: Vec<String> = std::fs::read_dir(&state)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with(".events-writing-") || n.starts_with(".stage-writing-"))
        .collect();
    assert!(aside.is_empty(), "left aside: {aside:?}");
    let clean = tmp.path().join("clean");
    for night in ["2026-05-14", "2026-05-15"] {
        let o = propel(tmp.path(), &run_args(&job, &events, &clean, night));
        assert!(o.status.success(), "{}", stderr(&o));
    }
    assert_eq!(
        published(&out.join("2026-05-15")),
        published(&clean.join("2026-05-15")),
        "after the crashes, night 2 equals an uninterrupted run"
    );
    assert_eq!(state_files(&state), state_files(&clean.join("_state")));
}

#[test]
fn a_rerun_of_a_night_replaces_it_with_byte_identical_files() {
    let tmp = tempfile::tempdir().unwrap();
    let events = small_events(tmp.path());
    let job = quick_job(tmp.path());
    let out = tmp.path().join("out");
    for night in ["2026-05-14", "2026-05-15"] {
        let o = propel(tmp.path(), &run_args(&job, &events, &out, night));
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let first = published(&out.join("2026-05-15"));
    let record = std::fs::read_to_string(out.join("2026-05-15/run.json")).unwrap();
    assert!(
        record.contains("\"timings_ms\"") && record.contains("\"features\""),
        "{record}"
    );
    // The rerun starts from the state of the night before, as the first run did.
    let o = propel(tmp.path(), &run_args(&job, &events, &out, "2026-05-15"));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(published(&out.join("2026-05-15")), first);
    assert!(first.contains_key("scores.parquet") && first.contains_key("metrics.json"));
    assert!(
        !first.contains_key("run.json"),
        "the run record is outside the manifest"
    );
}

#[test]
fn a_backfill_runs_the_nights_in_order_and_stops_at_the_first_failure() {
    let tmp = tempfile::tempdir().unwrap();
    let events = small_events(tmp.path());
    let job = quick_job(tmp.path());
    let out = tmp.path().join("out");
    let o = propel(
        tmp.path(),
        &run_args(&job, &events, &out, "2026-05-12..2026-05-14"),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    let order: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("propel run as of "))
        .collect();
    assert_eq!(order, ["2026-05-12", "2026-05-13", "2026-05-14"]);
    assert_eq!(
        visible(&out),
        ["2026-05-12", "2026-05-13", "2026-05-14", "_state"]
    );
    // Each night started from the one before: the same as three single runs.
    let single = tmp.path().join("single");
    for night in ["2026-05-12", "2026-05-13", "2026-05-14"] {
        let o = propel(tmp.path(), &run_args(&job, &events, &single, night));
        assert!(o.status.success(), "{}", stderr(&o));
    }
    assert_eq!(
        published(&out.join("2026-05-14")),
        published(&single.join("2026-05-14"))
    );

    // A night that cannot run stops the backfill with that night's exit code; the nights
    // before it stay published. Here a corrupt file was loaded on 05-16: the nights before
    // do not read that partition, the night of 05-16 does.
    let partition = events.join("load_tstamp_date=2026-05-16");
    std::fs::write(partition.join("zz-corrupt.parquet"), "not parquet").unwrap();
    let broken = tmp.path().join("broken");
    let o = propel(
        tmp.path(),
        &run_args(&job, &events, &broken, "2026-05-14..2026-05-17"),
    );
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("backfill stopped at --as-of 2026-05-16")
            && err.contains("zz-corrupt.parquet"),
        "{err}"
    );
    assert_eq!(visible(&broken), ["2026-05-14", "2026-05-15", "_state"]);
    // Nights older than the state keeps: refused rather than started afresh.
    let pruned = tmp.path().join("pruned");
    std::fs::write(
        tmp.path().join("keep1.toml"),
        "model = \"quick_model.toml\"\n[state]\nkeep_nights = 1\n",
    )
    .unwrap();
    let keep1 = tmp.path().join("keep1.toml");
    let o = propel(
        tmp.path(),
        &run_args(&keep1, &events, &pruned, "2026-05-12..2026-05-13"),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = propel(
        tmp.path(),
        &run_args(&keep1, &events, &pruned, "2026-05-13"),
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("no state before --as-of 2026-05-13"),
        "{}",
        stderr(&o)
    );
    // Bad ranges are usage errors from the command line.
    let o = propel(tmp.path(), &["run", "--as-of", "2026-05-14..2026-05-01"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("ends before it starts"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn an_unexpected_failure_exits_1_with_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let events = small_events(tmp.path());
    // The output location is a file: nothing to do with config or data, an I/O failure.
    let out = tmp.path().join("occupied");
    std::fs::write(&out, "not a directory").unwrap();
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
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.lines().count() == 1 && err.contains("occupied"),
        "{err}"
    );
}

#[test]
fn the_airflow_dag_loads_in_a_real_dagbag() {
    let Some(python) = python_from("PROPEL_AIRFLOW_PYTHON") else {
        return;
    };
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let o = Command::new(python)
        .arg(repo.join("tests/airflow/check_dagbag.py"))
        .current_dir(repo)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && out.contains("OK propel_nightly"),
        "{out}\n{}",
        stderr(&o)
    );
}

#[test]
fn a_memory_override_that_is_not_a_number_is_a_configuration_error() {
    // polars would stop the run with a panic midway, when it first reads the variable.
    let tmp = tempfile::tempdir().unwrap();
    let events = small_events(tmp.path());
    let o = Command::new(env!("CARGO_BIN_EXE_propel"))
        .args([
            "run",
            "--input",
            events.to_str().unwrap(),
            "--output",
            "out",
        ])
        .env("POLARS_OVERRIDE_TOTAL_MEMORY", "3GiB")
        .current_dir(tmp.path())
        .output()
        .unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("POLARS_OVERRIDE_TOTAL_MEMORY")
            && err.contains("whole number of bytes")
            && err.contains("\"3GiB\""),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert!(!tmp.path().join("out").exists(), "nothing is written");
}
