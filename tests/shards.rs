//! Sharded nights: `--shard I/N` runs and a `--merge-shards N` step publish what one run over
//! all customers publishes, byte for byte, and leave the same state for the next night.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::*;
use sha2::{Digest, Sha256};

/// Every file of a published run (except `run.json`, the record of how it went) by its path
/// inside the run, with its SHA-256.
fn digests(run: &Path) -> BTreeMap<String, String> {
    fn walk(dir: &Path, root: &Path, out: &mut BTreeMap<String, String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, root, out);
            } else if path.file_name().unwrap() != "run.json" {
                let rel = path.strip_prefix(root).unwrap().display().to_string();
                out.insert(
                    rel,
                    hex::encode(Sha256::digest(std::fs::read(&path).unwrap())),
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(run, run, &mut out);
    out
}

#[test]
fn three_shards_and_a_merge_publish_what_one_run_publishes() {
    let tmp = tempfile::tempdir().unwrap();
    let events = small_events(tmp.path());
    let events = events.to_str().unwrap();
    let (whole, sharded) = (tmp.path().join("whole"), tmp.path().join("sharded"));
    let run = |out: &Path, night: &str, extra: &[&str]| {
        let mut args = vec![
            "run",
            "--input",
            events,
            "--output",
            out.to_str().unwrap(),
            "--as-of",
            night,
        ];
        args.extend(extra);
        propel(tmp.path(), &args)
    };
    let ok = |o: std::process::Output| {
        assert!(o.status.success(), "{}", stderr(&o));
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    ok(run(&whole, "2026-05-15", &[]));

    // A backfill runs nights in order, each from its predecessor's merge: not sharded.
    let o = run(&sharded, "2026-05-14..2026-05-15", &["--shard", "0/3"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("take one night"), "{}", stderr(&o));

    let mut customers = 0;
    for i in 0..3 {
        if i == 2 {
            // A merge before every shard has finished names the missing one.
            let o = run(&sharded, "2026-05-15", &["--merge-shards", "3"]);
            assert!(!o.status.success());
            assert!(
                stderr(&o).contains("shard 2/3 of the night 2026-05-15 has not completed"),
                "{}",
                stderr(&o)
            );
        }
        let shard = format!("{i}/3");
        let said = ok(run(&sharded, "2026-05-15", &["--shard", &shard]));
        customers += said
            .split(": ")
            .nth(1)
            .and_then(|s| s.split(' ').next())
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or_else(|| panic!("customers in {said:?}"));
    }
    // Shards publish nothing: only the merge does.
    assert!(!sharded.join("2026-05-15").exists());
    ok(run(&sharded, "2026-05-15", &["--merge-shards", "3"]));

    let (a, b) = (
        digests(&whole.join("2026-05-15")),
        digests(&sharded.join("2026-05-15")),
    );
    assert!(a.contains_key("scores.parquet") && a.contains_key("manifest.json"));
    assert_eq!(a, b, "sharded and whole runs differ");
    // Each customer is in exactly one shard.
    let scored = read_parquet(&whole.join("2026-05-15/features.parquet")).height();
    assert_eq!(customers, scored);

    // The merge committed the state a whole run commits: the next night agrees too.
    ok(run(&whole, "2026-05-16", &[]));
    ok(run(&sharded, "2026-05-16", &[]));
    assert_eq!(
        digests(&whole.join("2026-05-16")),
        digests(&sharded.join("2026-05-16"))
    );

    // Shards of the 17th start from the 16th; the 16th rerun since (other horizon, another
    // model in state): the merge refuses their parts.
    for i in 0..2 {
        ok(run(&sharded, "2026-05-17", &["--shard", &format!("{i}/2")]));
    }
    ok(run(&sharded, "2026-05-16", &["--horizon", "10"]));
    let o = run(&sharded, "2026-05-17", &["--merge-shards", "2"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("started from another state"),
        "{}",
        stderr(&o)
    );

    // A sharded night's events stay with its shards: the tuning loop says how to rerun it.
    let o = run(&sharded, "2026-05-15", &["--from-stage", "features"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("ran in 3 shards"), "{}", stderr(&o));
}

/// Runs a scheduler example's check script (`script`, with `args`) with the Airflow
/// environment's Python on a job over small events; returns the job's output directory
/// (in the temporary directory that holds everything) after asserting the script passed.
/// `None` when that Python is not available.
fn check_example(
    script: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> Option<(tempfile::TempDir, PathBuf)> {
    let python = python_from("PROPEL_AIRFLOW_PYTHON")?;
    let tmp = tempfile::tempdir().unwrap();
    let events = small_events(tmp.path());
    let out = tmp.path().join("out");
    let job = tmp.path().join("job.toml");
    std::fs::write(
        &job,
        format!(
            "[[input]]\nurl = {:?}\n[output]\nurl = {:?}\n",
            events.display().to_string(),
            out.display().to_string()
        ),
    )
    .unwrap();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let o = std::process::Command::new(python)
        .arg(repo.join(script))
        .args(args)
        .args(["--bin", env!("CARGO_BIN_EXE_propel")])
        .arg("--job")
        .arg(&job)
        .envs(env.iter().copied())
        .current_dir(repo)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        stderr(&o)
    );
    assert!(out.join("2026-05-15/_SUCCESS").exists());
    Some((tmp, out))
}

#[test]
fn the_sharded_airflow_dag_runs_its_shards_and_merge() {
    let Some((_tmp, out)) = check_example(
        "tests/airflow/check_sharded.py",
        &["--date", "2026-05-15"],
        &[("PROPEL_SHARDS", "2")],
    ) else {
        return;
    };
    for i in 0..2 {
        assert!(
            out.join(format!("_state/shards/2026-05-15/2/{i}/part/part.json"))
                .exists()
        );
    }
}

#[test]
fn the_kubernetes_indexed_job_runs_its_shards_and_merge() {
    // PyYAML comes with Airflow's environment.
    check_example(
        "tests/kubernetes/check_indexed_job.py",
        &["--as-of", "2026-05-15"],
        &[],
    );
}
