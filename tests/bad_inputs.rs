//! Bad inputs, one kind per case: each either stops the run with a one-line error that names
//! the file, the column, what was expected and what was found (exit code 3, nothing
//! published), or quarantines exactly the bad rows with their reason, while the counts
//! still add up (read = used + duplicates + quarantined + after as-of).

mod common;

use std::path::{Path, PathBuf};

use common::*;
use polars::prelude::*;
use propel::config::{InputDef, Layout, Quality};
use propel::ingest::{Ingested, ingest};

const T0: i64 = 1_780_000_000_000_000; // 2026-05-28 20:26:40 UTC
const MIN: i64 = 60_000_000;

fn utc(name: &str, v: Vec<Option<i64>>) -> Column {
    Column::new(name.into(), v)
        .cast(&propel::util::utc())
        .unwrap()
}

/// Five good Lake Loader page views of one visitor, a minute apart.
fn good() -> DataFrame {
    let n = 5;
    let times: Vec<Option<i64>> = (0..n).map(|i| Some(T0 + i as i64 * MIN)).collect();
    DataFrame::new(
        n,
        vec![
            Column::new(
                "event_id".into(),
                (0..n).map(|i| format!("e{i}")).collect::<Vec<_>>(),
            ),
            utc("collector_tstamp", times.clone()),
            utc("dvce_created_tstamp", times.clone()),
            utc("dvce_sent_tstamp", times),
            Column::new("event".into(), vec!["page_view"; n]),
            Column::new("domain_userid".into(), vec![Some("cookie-1"); n]),
            Column::new("domain_sessionid".into(), vec![Some("session-1"); n]),
            Column::new(
                "useragent".into(),
                vec!["Mozilla/5.0 (X11; Linux x86_64) Firefox/120.0"; n],
            ),
            Column::new("ti_quantity".into(), vec![None::<f64>; n]),
            Column::new("ti_price".into(), vec![None::<f64>; n]),
        ],
    )
    .unwrap()
}

/// `good()` with one column replaced.
fn with(column: Column) -> DataFrame {
    let mut df = good();
    df.with_column(column).unwrap();
    df
}

fn write(dir: &Path, rel: &str, df: &mut DataFrame) -> PathBuf {
    let path = dir.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    ParquetWriter::new(std::fs::File::create(&path).unwrap())
        .finish(df)
        .unwrap();
    path
}

fn lake(dir: &Path) -> Vec<InputDef> {
    vec![InputDef {
        url: dir.display().to_string(),
        layout: Layout::LakeLoader,
    }]
}

fn ingested(inputs: &[InputDef]) -> Ingested {
    let got = ingest(inputs, None, &Quality::default()).unwrap();
    let c = &got.counts;
    assert_eq!(
        c.read,
        c.used + c.duplicates + c.quarantined + c.after_as_of,
        "{c:?}"
    );
    got
}

/// The run fails with exit code 3 and one line containing every `expected` text.
fn fails(dir: &Path, flat: bool, expected: &[&str]) {
    let out = dir.join("_out");
    let flag = if flat { "--flat-input" } else { "--input" };
    let o = propel(
        dir,
        &[
            "run",
            flag,
            dir.join("in").to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "{err}");
    for e in expected {
        assert!(err.contains(e), "expected {e:?} in: {err}");
    }
    assert!(
        !out.exists() || run_dirs(&out).is_empty(),
        "nothing may be published"
    );
}

/// Exactly the rows `ids` are quarantined, each with a reason containing `reason`.
fn quarantines(got: &Ingested, ids: &[&str], reason: &str) {
    let q = &got.quarantine;
    // Kept between nights and published as text, whatever ingest holds in memory.
    for c in ["event_type", "useragent", "page_path"] {
        assert_eq!(q.column(c).unwrap().dtype(), &DataType::String, "{c}");
    }
    let reasons = strings(q, "quarantine_reason");
    assert_eq!(q.height(), ids.len(), "{reasons:?}");
    assert!(reasons.iter().all(|r| r.contains(reason)), "{reasons:?}");
    let got_ids: Vec<Option<String>> = q
        .column("event_id")
        .unwrap()
        .str()
        .unwrap()
        .iter()
        .map(|v| v.map(str::to_string))
        .collect();
    for id in ids {
        assert!(
            got_ids
                .iter()
                .any(|g| g.as_deref() == Some(*id) || (id.is_empty() && g.is_none())),
            "{id} not quarantined: {got_ids:?}"
        );
    }
    assert!(
        strings(q, "source_file")
            .iter()
            .all(|f| f.ends_with(".parquet") || f.ends_with(".csv"))
    );
}

#[test]
fn a_truncated_file_is_an_error_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let path = write(
        tmp.path(),
        "in/load_tstamp_date=2026-05-28/part-0.parquet",
        &mut good(),
    );
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    fails(tmp.path(), false, &["part-0.parquet", "cannot read"]);
}

#[test]
fn a_file_that_is_not_parquet_is_an_error_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("in")).unwrap();
    std::fs::write(
        tmp.path().join("in/events.parquet"),
        "event_id,collector_tstamp\n",
    )
    .unwrap();
    fails(tmp.path(), false, &["events.parquet", "cannot read"]);
}

#[test]
fn a_wrong_column_type_is_an_error_with_expected_and_found() {
    let tmp = tempfile::tempdir().unwrap();
    let mut df = with(Column::new(
        "collector_tstamp".into(),
        vec!["2026-05-28 10:00:00"; 5],
    ));
    write(tmp.path(), "in/part-0.parquet", &mut df);
    fails(
        tmp.path(),
        false,
        &[
            "part-0.parquet",
            "`collector_tstamp`",
            "expected timestamp",
            "has type str",
        ],
    );
}

#[test]
fn a_missing_mandatory_column_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let mut df = good().drop("event_id").unwrap();
    write(tmp.path(), "in/part-0.parquet", &mut df);
    fails(
        tmp.path(),
        false,
        &["part-0.parquet", "missing mandatory column `event_id`"],
    );
    // Neither `event` nor `event_name`: nothing says what happened.
    let tmp = tempfile::tempdir().unwrap();
    let mut df = good().drop("event").unwrap();
    write(tmp.path(), "in/part-0.parquet", &mut df);
    fails(tmp.path(), false, &["`event or event_name`"]);
}

#[test]
fn an_empty_input_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("in/load_tstamp_date=2026-05-28")).unwrap();
    fails(tmp.path(), false, &["no Parquet files found"]);
    // Files with no rows at all: read, but nothing to run on.
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "in/part-0.parquet", &mut good().head(Some(0)));
    fails(tmp.path(), false, &["no usable events", "0 rows read"]);
}

#[test]
fn empty_partitions_beside_full_ones_lose_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("in/load_tstamp_date=2026-05-27")).unwrap();
    write(
        tmp.path(),
        "in/load_tstamp_date=2026-05-28/part-0.parquet",
        &mut good().head(Some(0)),
    );
    write(
        tmp.path(),
        "in/load_tstamp_date=2026-05-29/part-0.parquet",
        &mut good(),
    );
    let got = ingested(&lake(&tmp.path().join("in")));
    assert_eq!((got.counts.files, got.counts.used), (2, 5));
}

#[test]
fn nulls_in_mandatory_columns_are_quarantined() {
    let tmp = tempfile::tempdir().unwrap();
    let mut df = with(Column::new(
        "event_id".into(),
        [Some("e0"), None, Some("e2"), Some("e3"), Some("e4")],
    ));
    write(tmp.path(), "a/part-0.parquet", &mut df);
    quarantines(
        &ingested(&lake(&tmp.path().join("a"))),
        &[""],
        "missing event_id",
    );
    let mut df = with(utc(
        "collector_tstamp",
        vec![Some(T0), Some(T0), None, Some(T0), Some(T0)],
    ));
    write(tmp.path(), "b/part-0.parquet", &mut df);
    quarantines(
        &ingested(&lake(&tmp.path().join("b"))),
        &["e2"],
        "missing collector_tstamp",
    );
}

#[test]
fn a_quarantined_row_names_the_file_it_came_from() {
    // Three files of different ids; the first and the last each have one row without an
    // identifier (rows 3 and 1).
    let tmp = tempfile::tempdir().unwrap();
    let mut paths = Vec::new();
    for (day, bad) in [(28, Some(3)), (29, None), (30, Some(1))] {
        let mut df = with(Column::new(
            "domain_userid".into(),
            (0..5)
                .map(|i| (Some(i) != bad).then_some("c"))
                .collect::<Vec<_>>(),
        ));
        df.with_column(Column::new(
            "event_id".into(),
            (0..5).map(|i| format!("d{day}-e{i}")).collect::<Vec<_>>(),
        ))
        .unwrap();
        let rel = format!("in/load_tstamp_date=2026-05-{day}/part-0.parquet");
        paths.push(write(tmp.path(), &rel, &mut df));
    }
    let got = ingested(&lake(&tmp.path().join("in")));
    quarantines(&got, &["d28-e3", "d30-e1"], "no identifier");
    let ids = strings(&got.quarantine, "event_id");
    let files = strings(&got.quarantine, "source_file");
    let named = |id: &str| files[ids.iter().position(|i| i == id).unwrap()].clone();
    assert_eq!(named("d28-e3"), paths[0].display().to_string());
    assert_eq!(named("d30-e1"), paths[2].display().to_string());
}

#[test]
fn events_without_any_identifier_are_quarantined() {
    let tmp = tempfile::tempdir().unwrap();
    let mut df = with(Column::new(
        "domain_userid".into(),
        [Some("c"), Some("c"), Some("c"), None, Some("c")],
    ));
    write(tmp.path(), "in/part-0.parquet", &mut df);
    quarantines(
        &ingested(&lake(&tmp.path().join("in"))),
        &["e3"],
        "no identifier",
    );
}

#[test]
fn negative_quantities_and_nan_prices_are_quarantined() {
    let tmp = tempfile::tempdir().unwrap();
    let mut df = with(Column::new(
        "ti_quantity".into(),
        [None, Some(-2.0), None, None, None],
    ));
    df.with_column(Column::new("event".into(), vec!["transaction_item"; 5]))
        .unwrap();
    df.with_column(Column::new(
        "ti_price".into(),
        [Some(1.0), Some(1.0), Some(f64::NAN), None, None],
    ))
    .unwrap();
    write(tmp.path(), "in/part-0.parquet", &mut df);
    let got = ingested(&lake(&tmp.path().join("in")));
    let reasons = strings(&got.quarantine, "quarantine_reason");
    assert_eq!(reasons, ["negative quantity", "NaN price or total"]);
}

#[test]
fn late_events_bots_and_overlong_sessions_are_quarantined_as_snowplow_does() {
    let day = 24 * 60 * MIN;
    // Late: sent 4 days after it was created (Snowplow's limit: 3).
    let tmp = tempfile::tempdir().unwrap();
    let mut df = with(utc(
        "dvce_sent_tstamp",
        (0..5)
            .map(|i| Some(T0 + i * MIN + if i == 1 { 4 * day } else { 0 }))
            .collect(),
    ));
    write(tmp.path(), "in/part-0.parquet", &mut df);
    quarantines(
        &ingested(&lake(&tmp.path().join("in"))),
        &["e1"],
        "late: sent by the device more than 3 days",
    );
    // A crawler.
    let tmp = tempfile::tempdir().unwrap();
    let ua = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)";
    let mut df = with(Column::new(
        "useragent".into(),
        (0..5)
            .map(|i| {
                if i == 4 {
                    ua
                } else {
                    "Mozilla/5.0 Firefox/120.0"
                }
            })
            .collect::<Vec<_>>(),
    ));
    write(tmp.path(), "in/part-0.parquet", &mut df);
    quarantines(
        &ingested(&lake(&tmp.path().join("in"))),
        &["e4"],
        "bot or spider",
    );
    // A session whose last two events come 3 and 4 days after its start: the one exactly
    // at start + 3 days stays (Snowplow's bound is inclusive), the later one goes.
    let tmp = tempfile::tempdir().unwrap();
    let t = |i: i64| match i {
        3 => T0 + 3 * day,
        4 => T0 + 4 * day,
        i => T0 + i * MIN,
    };
    let times: Vec<Option<i64>> = (0..5).map(|i| Some(t(i))).collect();
    let mut df = good();
    for name in [
        "collector_tstamp",
        "dvce_created_tstamp",
        "dvce_sent_tstamp",
    ] {
        df.with_column(utc(name, times.clone())).unwrap();
    }
    write(tmp.path(), "in/part-0.parquet", &mut df);
    quarantines(
        &ingested(&lake(&tmp.path().join("in"))),
        &["e4"],
        "session longer than 3 days",
    );
}

#[test]
fn the_quality_rules_follow_the_job_file() {
    let tmp = tempfile::tempdir().unwrap();
    let ua = "Mozilla/5.0 (compatible; bingbot/2.0)";
    let mut df = with(Column::new("useragent".into(), vec![ua; 5]));
    write(tmp.path(), "in/part-0.parquet", &mut df);
    let lenient = Quality {
        bot_pattern: None,
        ..Quality::default()
    };
    let got = ingest(&lake(&tmp.path().join("in")), None, &lenient).unwrap();
    assert_eq!(
        got.counts.used, 5,
        "no bot filter when the job turns it off"
    );
}

#[test]
fn a_duplicated_file_is_deduplicated_not_double_counted() {
    let tmp = tempfile::tempdir().unwrap();
    write(
        tmp.path(),
        "in/load_tstamp_date=2026-05-28/part-0.parquet",
        &mut good(),
    );
    write(
        tmp.path(),
        "in/load_tstamp_date=2026-05-28/part-0-copy.parquet",
        &mut good(),
    );
    let got = ingested(&lake(&tmp.path().join("in")));
    assert_eq!(
        (got.counts.read, got.counts.used, got.counts.duplicates),
        (10, 5, 5)
    );
}

#[test]
fn naive_and_offset_timestamps() {
    // Flat CSV: a naive time is ambiguous and quarantined; an offset time is converted.
    let tmp = tempfile::tempdir().unwrap();
    let csv = tmp.path().join("in.csv");
    std::fs::write(
        &csv,
        "event_id,tstamp,event_type,loyalty_id\n\
         a,2026-05-28T10:00:00,order,L1\n\
         b,2026-05-28T12:00:00+02:00,order,L1\n\
         c,28/05/2026 10:00,order,L1\n",
    )
    .unwrap();
    let got = ingested(&[InputDef {
        url: csv.display().to_string(),
        layout: Layout::Flat,
    }]);
    let reasons = strings(&got.quarantine, "quarantine_reason");
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(
        reasons
            .iter()
            .all(|r| r.contains("expected an RFC 3339 time with offset"))
    );
    let t = got
        .events
        .frame()
        .unwrap()
        .column("tstamp")
        .unwrap()
        .datetime()
        .unwrap()
        .physical()
        .get(0);
    assert_eq!(t, Some(1_779_962_400_000_000), "12:00+02:00 is 10:00 UTC");
    // Lake Loader Parquet: Snowplow writes UTC; a timestamp without a zone is read as UTC,
    // one in another zone is converted to UTC (same instant).
    let tmp = tempfile::tempdir().unwrap();
    let naive = Column::new("collector_tstamp".into(), vec![Some(T0); 5])
        .cast(&DataType::Datetime(TimeUnit::Microseconds, None))
        .unwrap();
    write(tmp.path(), "a/part-0.parquet", &mut with(naive));
    let paris = Column::new("collector_tstamp".into(), vec![Some(T0); 5])
        .cast(&DataType::Datetime(
            TimeUnit::Microseconds,
            Some(
                TimeZone::opt_try_new(Some("Europe/Paris"))
                    .unwrap()
                    .unwrap(),
            ),
        ))
        .unwrap();
    write(tmp.path(), "b/part-0.parquet", &mut with(paris));
    for dir in ["a", "b"] {
        let got = ingested(&lake(&tmp.path().join(dir)));
        let t = got
            .events
            .frame()
            .unwrap()
            .column("collector_tstamp")
            .unwrap()
            .datetime()
            .unwrap()
            .physical()
            .get(0);
        assert_eq!(t, Some(T0), "{dir}");
    }
}

#[test]
fn unparseable_values_in_a_flat_file_are_quarantined_with_the_column() {
    let tmp = tempfile::tempdir().unwrap();
    let csv = tmp.path().join("in.csv");
    std::fs::write(
        &csv,
        "event_id,tstamp,event_type,loyalty_id,order_total,consent_ads\n\
         a,2026-05-28T10:00:00Z,order,L1,ten,\n\
         b,2026-05-28T10:00:00Z,purchase_maybe,L1,1,\n\
         c,2026-05-28T10:00:00Z,order,L1,1,perhaps\n\
         d,2026-05-28T10:00:00Z,order,L1,1,yes\n",
    )
    .unwrap();
    let got = ingested(&[InputDef {
        url: csv.display().to_string(),
        layout: Layout::Flat,
    }]);
    let reasons = strings(&got.quarantine, "quarantine_reason");
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert!(
        reasons[0].contains("order_total: expected a number"),
        "{reasons:?}"
    );
    assert!(
        reasons[1].contains("event_type: expected one of"),
        "{reasons:?}"
    );
    assert!(
        reasons[2].contains("consent_ads: expected true or false"),
        "{reasons:?}"
    );
    assert_eq!(got.counts.used, 1);
}

#[test]
fn a_wrong_type_in_a_flat_parquet_file_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let mut df = df!(
        "event_id" => ["a"],
        "tstamp" => ["2026-05-28T10:00:00Z"],
        "event_type" => ["order"],
        "loyalty_id" => ["L1"],
        "order_total" => [true],
    )
    .unwrap();
    write(tmp.path(), "in/pos.parquet", &mut df);
    fails(
        tmp.path(),
        true,
        &[
            "pos.parquet",
            "`order_total`",
            "expected a number",
            "has type bool",
        ],
    );
}

#[test]
fn an_as_of_before_every_event_is_an_input_error() {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "in/part-0.parquet", &mut good());
    let o = propel(
        tmp.path(),
        &["run", "--input", "in", "--as-of", "2020-01-01"],
    );
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("--as-of 2020-01-01"), "{}", stderr(&o));
}
