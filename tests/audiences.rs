//! Audiences through the binary: consent and suppression hold in every destination, and the
//! marketers' report draws its charts in a real browser.

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use common::*;
use propel::destinations as dest;

/// Every value in every file under `dir` whose name starts with one of `prefixes` (all
/// audiences, deltas too).
fn values(dir: &Path, prefixes: &[&str]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        if p.is_dir() {
            out.extend(values(&p, prefixes));
        } else if prefixes.iter().any(|x| name.starts_with(x)) {
            for line in std::fs::read_to_string(&p).unwrap().lines() {
                out.extend(line.split(',').map(str::to_string));
            }
        }
    }
    out
}

fn google_lines(run: &Path) -> BTreeSet<String> {
    let text =
        std::fs::read_to_string(run.join("audiences/ready_to_buy/google_customer_match.csv"))
            .unwrap();
    text.lines()
        .skip(1)
        .flat_map(|l| l.split(','))
        .map(str::to_string)
        .collect()
}

/// The e-mails people typed as their login, as written in the events.
fn typed_emails(events: &Path) -> BTreeSet<String> {
    parquet_files(events)
        .iter()
        .flat_map(|p| strings(&read_parquet(p), "user_id"))
        .filter(|u| u.contains('@'))
        .collect()
}

#[test]
fn no_refused_or_suppressed_customer_reaches_a_platform() {
    let tmp = tempfile::tempdir().unwrap();
    let events = small_events(tmp.path());
    let job = quick_job(tmp.path());
    // Without intervention: find three people whose e-mails reach Google's file.
    let first_out = tmp.path().join("first");
    let o = propel(
        tmp.path(),
        &run_args(&job, &events, &first_out, "2026-05-15"),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let first = first_out.join("2026-05-15");
    let google = google_lines(&first);
    let reached: Vec<String> = typed_emails(&events)
        .into_iter()
        .filter(|e| google.contains(&dest::sha256_hex(&dest::google_email(e).unwrap())))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    // The same person may have typed the address in several spellings: one per normal form.
    let mut people: Vec<String> = Vec::new();
    for e in reached {
        if !people
            .iter()
            .any(|p| dest::google_email(p) == dest::google_email(&e))
        {
            people.push(e);
        }
    }
    assert!(people.len() >= 3, "{people:?}");
    let (refuser, forgotten, keeper) = (&people[0], &people[1], &people[2]);

    // The CRM says the first withdrew advertising consent; the second asked to be forgotten.
    let crm = tmp.path().join("crm.csv");
    std::fs::write(
        &crm,
        format!(
            "event_id,tstamp,event_type,email,consent_ads\ncrm-1,2026-05-14T09:00:00Z,other,{refuser},false\n"
        ),
    )
    .unwrap();
    std::fs::write(
        tmp.path().join("forget.csv"),
        format!("email\n{forgotten}\n"),
    )
    .unwrap();
    let privacy_job = tmp.path().join("privacy.toml");
    std::fs::write(
        &privacy_job,
        "model = \"quick_model.toml\"\n[privacy]\nsuppression = \"forget.csv\"\n",
    )
    .unwrap();
    let second = {
        let out = tmp.path().join("second");
        let o = propel(
            tmp.path(),
            &[
                "run",
                "--job",
                privacy_job.to_str().unwrap(),
                "--input",
                events.to_str().unwrap(),
                "--flat-input",
                crm.to_str().unwrap(),
                "--output",
                out.to_str().unwrap(),
                "--as-of",
                "2026-05-15",
            ],
        );
        assert!(o.status.success(), "{}", stderr(&o));
        out.join("2026-05-15")
    };
    let everything = values(&second.join("audiences"), &[""]);
    let ad_platforms = values(
        &second.join("audiences"),
        &["google_customer_match", "meta_custom_audience", "ttd_uid2"],
    );
    assert!(!ad_platforms.is_empty());
    let ad_keys = |e: &str| {
        [
            dest::sha256_hex(&dest::google_email(e).unwrap()),
            dest::sha256_hex(&dest::meta_email(e).unwrap()),
            dest::sha256_base64(&dest::uid2_email(e).unwrap()),
        ]
    };
    for key in ad_keys(refuser) {
        assert!(
            !ad_platforms.contains(&key),
            "the refuser reached an ad platform: {key}"
        );
    }
    let hashed = |e: &str| dest::sha256_hex(&e.trim().to_lowercase());
    for key in ad_keys(forgotten).into_iter().chain([hashed(forgotten)]) {
        assert!(
            !everything.contains(&key),
            "a suppressed customer is in an output: {key}"
        );
    }
    // The refuser is still in the internal file (no consent needed there); the keeper is
    // still delivered to Google: the test would see a leak.
    assert!(values(&second.join("audiences/ready_to_buy"), &["csv"]).contains(&hashed(refuser)));
    assert!(google_lines(&second).contains(&ad_keys(keeper)[0]));
    let metrics: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(second.join("metrics.json")).unwrap())
            .unwrap();
    let google = metrics["audiences"][0]["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["destination"] == "google_customer_match")
        .unwrap()
        .clone();
    assert!(
        google["excluded"]["ads_consent_refused"].as_u64().unwrap() >= 1,
        "{google}"
    );
    assert!(metrics["rows"]["suppressed_customers"].as_u64().unwrap() >= 1);
}

#[test]
fn the_report_draws_its_charts_in_chromium() {
    let tmp = tempfile::tempdir().unwrap();
    let events = small_events(tmp.path());
    let job = quick_job(tmp.path());
    let out = tmp.path().join("out");
    for night in ["2026-05-14", "2026-05-15"] {
        let o = propel(tmp.path(), &run_args(&job, &events, &out, night));
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let report = out.join("2026-05-15/report/index.html");
    let html = std::fs::read_to_string(&report).unwrap();
    for outside in [
        "__PROPEL_REPORT_DATA__",
        "src=\"http",
        "href=\"http",
        "@import",
        "<link",
    ] {
        assert!(!html.contains(outside), "not self-contained: {outside}");
    }
    let Some(chromium) = external("chromium") else {
        return;
    };
    let profile = tempfile::tempdir().unwrap();
    let o = std::process::Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            &format!("--user-data-dir={}", profile.path().display()),
            "--dump-dom",
            &format!("file://{}", report.display()),
        ])
        .output()
        .unwrap();
    let dom = String::from_utf8_lossy(&o.stdout);
    assert!(
        dom.contains("data-charts-drawn=\"6\""),
        "not every chart was drawn: {}",
        &dom[..dom.len().min(2000)]
    );
    assert!(
        !dom.contains("data-charts-error"),
        "the report's script failed"
    );
    for chart in [
        "score_distribution",
        "gains",
        "lift",
        "calibration",
        "audiences",
        "drivers",
    ] {
        let at = dom
            .find(&format!("data-chart=\"{chart}\""))
            .unwrap_or_else(|| panic!("{chart} missing"));
        let tag = &dom[dom[..at].rfind('<').unwrap()..at + dom[at..].find('>').unwrap()];
        let marks: usize = tag
            .split("data-marks=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        assert!(marks > 0, "{chart} has no marks: {tag}");
    }
}
