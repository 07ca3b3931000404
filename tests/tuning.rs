//! The data scientist's loop: rerun from the features stage without the raw events, the
//! feature report with drift against the previous night, and `propel compare`.

mod common;

use common::*;

fn metrics(run: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(run.join("metrics.json")).unwrap()).unwrap()
}

#[test]
fn rerunning_from_features_needs_no_raw_events_and_changes_only_what_was_edited() {
    let tmp = tempfile::tempdir().unwrap();
    let events = small_events(tmp.path());
    let job = quick_job(tmp.path());
    let out = tmp.path().join("out");
    for night in ["2026-05-14", "2026-05-15"] {
        let o = propel(tmp.path(), &run_args(&job, &events, &out, night));
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let night = out.join("2026-05-15");
    let manifest = std::fs::read(night.join("manifest.json")).unwrap();
    // The night read incrementally kept its history as the night before's base and the days
    // changed since (`history::Changes`), which the rerun puts back together.
    assert!(
        out.join("_state/night-2026-05-15/increment/history/changed")
            .exists()
    );
    // The raw events are gone: the rerun works from what the night kept.
    std::fs::remove_dir_all(&events).unwrap();
    from_features(tmp.path(), &job, &out, "2026-05-15");
    assert_eq!(
        std::fs::read(night.join("manifest.json")).unwrap(),
        manifest,
        "nothing changed: every output byte-identical"
    );
    let before = read_parquet(&night.join("features.parquet"));

    // Edit one feature's window; validate; rerun from features.
    let edited_job = edited_job(tmp.path(), "edited_job.toml", "");
    let o = propel(
        tmp.path(),
        &["validate", "--job", edited_job.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    from_features(tmp.path(), &edited_job, &out, "2026-05-15");
    let after = read_parquet(&night.join("features.parquet"));
    for name in before.get_column_names() {
        let same = before
            .column(name)
            .unwrap()
            .equals_missing(after.column(name).unwrap());
        assert_eq!(same, name.as_str() != "page_views_7d", "{name}");
    }

    // Compare the two versions of the night.
    let a = tmp.path().join("a");
    std::fs::create_dir_all(&a).unwrap();
    std::fs::write(
        a.join("metrics.json"),
        std::fs::read(out.join("2026-05-14/metrics.json")).unwrap(),
    )
    .unwrap();
    let o = propel(
        tmp.path(),
        &["compare", a.to_str().unwrap(), night.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    let top = metrics(&night)["drivers"][0]["feature"]
        .as_str()
        .unwrap()
        .to_string();
    for row in ["auc", "ece", "lift_top_decile", "feature importance", &top] {
        assert!(text.contains(row), "{row} missing:\n{text}");
    }

    // A night whose identity graph is gone cannot be rerun: said, not half done.
    std::fs::remove_file(out.join("_state/night-2026-05-15/identity_nodes.parquet")).unwrap();
    let o = run_from_features(tmp.path(), &job, &out, "2026-05-15");
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("--from-stage features needs the night 2026-05-15 run in full first"),
        "{}",
        stderr(&o)
    );
}

/// `propel run --from-stage features` of the night `as_of` in `out`, for `job`.
fn run_from_features(
    cwd: &std::path::Path,
    job: &std::path::Path,
    out: &std::path::Path,
    as_of: &str,
) -> std::process::Output {
    propel(
        cwd,
        &[
            "--log-format",
            "json",
            "run",
            "--job",
            job.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
            "--as-of",
            as_of,
            "--from-stage",
            "features",
        ],
    )
}

/// `run_from_features`, which must succeed; its log.
fn from_features(
    cwd: &std::path::Path,
    job: &std::path::Path,
    out: &std::path::Path,
    as_of: &str,
) -> String {
    let o = run_from_features(cwd, job, out, as_of);
    assert!(o.status.success(), "{}", stderr(&o));
    stderr(&o)
}

/// The default feature set with `page_views_7d` over 14 days, and a job `name` of it (with
/// `extra`).
fn edited_job(dir: &std::path::Path, name: &str, extra: &str) -> std::path::PathBuf {
    let features = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("features/default.toml"),
    )
    .unwrap();
    let start = features.find("name = \"page_views_7d\"").unwrap();
    let window = start + features[start..].find("window = \"7d\"").unwrap();
    let mut edited = features.clone();
    edited.replace_range(window..window + "window = \"7d\"".len(), "window = \"14d\"");
    std::fs::write(dir.join("edited.toml"), edited).unwrap();
    let job = dir.join(name);
    std::fs::write(
        &job,
        format!("model = \"quick_model.toml\"\nfeatures = \"edited.toml\"\n{extra}"),
    )
    .unwrap();
    job
}

#[test]
fn a_night_written_by_bucket_reruns_from_features_a_bucket_at_a_time() {
    let tmp = tempfile::tempdir().unwrap();
    let events = small_events(tmp.path());
    // Buckets of 5,000 events (about five) written aside: the night's history is written by
    // bucket, and kept whole with how the buckets cut it; the same nights held, beside.
    let held_job = quick_job(tmp.path());
    let bucketed = "[sessions]\nevents_per_bucket = 5000\nwrite_buckets_above_mib = 0\n";
    let job = tmp.path().join("bucketed.toml");
    std::fs::write(&job, std::fs::read_to_string(&held_job).unwrap() + bucketed).unwrap();
    let (out, held) = (tmp.path().join("out"), tmp.path().join("held"));
    // The second night reads only its new file and holds the first night's history (the
    // bucketed job would read it a bucket at a time, and keep it whole): it keeps that
    // history as its base, with the days changed since, and the first night's events as
    // kept before it.
    for night in ["2026-05-14", "2026-05-15"] {
        let first = night == "2026-05-14";
        for (job, out) in [
            (if first { &job } else { &held_job }, &out),
            (&held_job, &held),
        ] {
            let o = propel(tmp.path(), &run_args(job, &events, out, night));
            assert!(o.status.success(), "{}", stderr(&o));
        }
    }
    assert!(
        out.join("_state/night-2026-05-15/increment/history/changed")
            .exists()
    );
    assert!(
        out.join("_state/night-2026-05-15/increment/events-before")
            .exists()
    );
    let manifest = |out: &std::path::Path, night: &str| {
        std::fs::read(out.join(night).join("manifest.json")).unwrap()
    };
    // The identity graph and frames the night kept, which a rerun passes on unread.
    let identity = |night: &str| -> Vec<Vec<u8>> {
        let dir = out.join(format!("_state/night-{night}"));
        [
            "identity_nodes.parquet",
            "identity_edges.parquet",
            "stage/identity.parquet",
        ]
        .iter()
        .map(|f| std::fs::read(dir.join(f)).unwrap())
        .collect()
    };
    for night in ["2026-05-14", "2026-05-15"] {
        let before = manifest(&out, night);
        let kept = identity(night);
        // The snapshots computed again, not taken from the cache.
        std::fs::remove_dir_all(out.join("_state/cache")).unwrap();
        let log = from_features(tmp.path(), &job, &out, night);
        assert!(
            log.contains("read back a bucket at a time"),
            "{night}: {log}"
        );
        assert!(
            before == manifest(&out, night),
            "{night}: every output byte-identical"
        );
        assert!(
            kept == identity(night),
            "{night}: the identity kept as it was"
        );
        // Again, with the snapshots the rerun cached: only each bucket's signals are read
        // (for the contacts), and the outputs stay the same.
        let log = from_features(tmp.path(), &job, &out, night);
        assert!(log.contains("reused from the cache"), "{night}: {log}");
        assert!(
            before == manifest(&out, night),
            "{night}: every output byte-identical, the snapshots from the cache"
        );
    }
    // An edited feature: the history is built again from the kept events (the night's and
    // those kept before it, under today's ids), a bucket at a time, and gives what the
    // events held give.
    let log = from_features(
        tmp.path(),
        &edited_job(tmp.path(), "edited_bucketed.toml", bucketed),
        &out,
        "2026-05-15",
    );
    assert!(
        log.contains("built again from the kept events a bucket at a time"),
        "{log}"
    );
    let log = from_features(
        tmp.path(),
        &edited_job(tmp.path(), "edited_job.toml", ""),
        &held,
        "2026-05-15",
    );
    assert!(!log.contains("a bucket at a time"), "{log}");
    // Every file alike but the two that name the output directory (the model's path).
    let files = |out: &std::path::Path| {
        let m: serde_json::Value = serde_json::from_slice(&manifest(out, "2026-05-15")).unwrap();
        let mut files = m["files"].as_array().unwrap().clone();
        files.retain(|f| {
            !["metrics.json", "report/index.html"].contains(&f["path"].as_str().unwrap())
        });
        assert!(files.len() > 10, "{files:?}");
        files
    };
    assert!(
        files(&out) == files(&held),
        "the edited night's outputs differ"
    );
    assert!(manifest(&out, "2026-05-15") != manifest(&out, "2026-05-14"));
}

#[test]
fn the_feature_report_measures_drift_against_the_previous_night() {
    let tmp = tempfile::tempdir().unwrap();
    let events = small_events(tmp.path());
    let job = quick_job(tmp.path());
    let out = tmp.path().join("out");
    for night in ["2026-05-08", "2026-05-15"] {
        let o = propel(tmp.path(), &run_args(&job, &events, &out, night));
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let first = metrics(&out.join("2026-05-08"));
    let second = metrics(&out.join("2026-05-15"));
    let features = second["features"].as_array().unwrap();
    assert_eq!(features.len(), first["features"].as_array().unwrap().len());
    for f in features {
        let null_rate = f["null_rate"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&null_rate), "{f}");
        assert!(f["psi"].as_f64().unwrap() >= 0.0, "{f}");
        assert!((0.0..=1.0).contains(&f["auc"].as_f64().unwrap()), "{f}");
    }
    assert!(
        first["features"][0]["psi"].is_null(),
        "no previous night, no drift"
    );
    // A week later, tenure has moved for everyone: real drift, reported.
    let tenure = features
        .iter()
        .find(|f| f["name"] == "tenure_days")
        .unwrap();
    assert!(tenure["psi"].as_f64().unwrap() > 0.0, "{tenure}");
    // The report shows the table.
    let html = std::fs::read_to_string(out.join("2026-05-15/report/index.html")).unwrap();
    assert!(html.contains("\"psi\":"));
}
