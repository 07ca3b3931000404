//! The feature language end to end: the default set's examples, point-in-time correctness
//! as properties, and editing a feature file without rebuilding.

mod common;

use common::*;
use polars::prelude::*;
use propel::config::{FeatureSet, ModelDef, Population, Source};
use propel::features::{check_examples, compute};
use propel::labels::{label_days, positives};
use propel::util::{MICROS_PER_DAY, utc};
use proptest::prelude::*;

fn default_set() -> FeatureSet {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("features/default.toml");
    FeatureSet::load(&path).expect("features/default.toml is valid")
}

#[test]
fn every_example_in_the_default_feature_file_holds() {
    let set = default_set();
    let outcomes = check_examples(&set).unwrap();
    assert!(outcomes.len() >= 15, "the default set carries examples");
    let failed: Vec<_> = outcomes.iter().filter(|o| !o.passed()).collect();
    assert!(failed.is_empty(), "{failed:#?}");
    // The examples cover every aggregation kind the default set uses... and can fail.
    let mut wrong = set.clone();
    for f in &mut wrong.features {
        for ex in &mut f.examples {
            ex.expect = Some(ex.expect.unwrap_or(0.0) + 1.0);
        }
    }
    assert!(check_examples(&wrong).unwrap().iter().all(|o| !o.passed()));
}

const CUSTOMERS: [&str; 3] = ["a", "b", "c"];
const TYPES: [&str; 6] = [
    "page_view",
    "search",
    "cart_add",
    "cart_remove",
    "order",
    "order_line",
];

/// (customer, type, minutes from the cutoff (negative = before), session, value, results)
type Ev = (usize, usize, i64, usize, f64, i64);

fn frame(rows: &[Ev], t: i64) -> DataFrame {
    let n = rows.len();
    let s = |f: &dyn Fn(&Ev) -> Option<String>| {
        Column::new("x".into(), rows.iter().map(f).collect::<Vec<_>>())
    };
    let cols = vec![
        s(&|r| Some(CUSTOMERS[r.0].to_string())).with_name("customer_id".into()),
        s(&|r| Some(TYPES[r.1].to_string())).with_name("event_type".into()),
        Column::new(
            "tstamp".into(),
            rows.iter()
                .map(|r| t + r.2 * 60_000_000)
                .collect::<Vec<_>>(),
        )
        .cast(&utc())
        .unwrap(),
        s(&|r| Some(format!("{}-{}", CUSTOMERS[r.0], r.3))).with_name("session_id".into()),
        s(&|r| Some(format!("e{}-{}", r.2, r.4))).with_name("event_id".into()),
        s(&|r| (TYPES[r.1].starts_with("order")).then(|| format!("o{}", r.3)))
            .with_name("order_id".into()),
        Column::new(
            "line_value".into(),
            rows.iter().map(|r| Some(r.4)).collect::<Vec<_>>(),
        ),
        Column::new(
            "order_total".into(),
            rows.iter().map(|r| Some(r.4 * 2.0)).collect::<Vec<_>>(),
        ),
        Column::new(
            "order_tax".into(),
            rows.iter().map(|r| Some(r.4 / 6.0)).collect::<Vec<_>>(),
        ),
        Column::new(
            "order_shipping".into(),
            rows.iter().map(|_| Some(4.95)).collect::<Vec<_>>(),
        ),
        Column::new(
            "order_discount".into(),
            rows.iter().map(|r| Some(r.4 / 10.0)).collect::<Vec<_>>(),
        ),
        s(&|r| (r.3 % 2 == 0).then(|| "VIP".to_string())).with_name("coupon_code".into()),
        s(&|r| Some(["garden", "toys", "bath"][r.3 % 3].to_string())).with_name("category".into()),
        s(&|r| Some(format!("SKU{}", (r.4 as usize) % 7))).with_name("sku".into()),
        Column::new(
            "search_total_results".into(),
            rows.iter().map(|r| Some(r.5 as f64)).collect::<Vec<_>>(),
        ),
        Column::new(
            "search_page_results".into(),
            rows.iter()
                .map(|r| Some(r.5.min(24) as f64))
                .collect::<Vec<_>>(),
        ),
    ];
    DataFrame::new(n, cols).unwrap()
}

fn event(before: bool) -> impl Strategy<Value = Ev> {
    // Future events land exactly on the cutoff a third of the time: the boundary case.
    let minutes = if before {
        (-200 * 24 * 60..0i64).boxed()
    } else {
        prop_oneof![Just(0i64), 0..60 * 24 * 60i64, 0..60i64].boxed()
    };
    (
        0..3usize,
        0..6usize,
        minutes,
        0..5usize,
        0.0..100.0f64,
        0..3i64,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Appending any events at or after a cutoff never changes any feature at that cutoff,
    /// for every feature of the default set (sessions spanning the cutoff included: the
    /// later events reuse the earlier events' session ids).
    #[test]
    fn events_at_or_after_the_cutoff_never_change_features(
        past in prop::collection::vec(event(true), 1..40),
        future in prop::collection::vec(event(false), 1..20),
    ) {
        let t = 400 * MICROS_PER_DAY;
        let set = default_set();
        let all: Vec<Ev> = past.iter().chain(&future).cloned().collect();
        let x = compute(&frame(&past, t), &[t], &set, Population::AllSeen).unwrap().collect().unwrap();
        let y = compute(&frame(&all, t), &[t], &set, Population::AllSeen).unwrap().collect().unwrap();
        // Exact equality: feature sums are fixed-point, so no ulp may move.
        prop_assert_eq!(x.height(), y.height());
        let differing: Vec<String> = x
            .columns()
            .iter()
            .filter(|c| !y.column(c.name()).is_ok_and(|d| d.as_materialized_series().equals_missing(c.as_materialized_series())))
            .map(|c| c.name().to_string())
            .collect();
        prop_assert!(differing.is_empty(), "{differing:?}\n{x}\n{y}");
    }

    /// Labels change only through events in [t, t + H).
    #[test]
    fn labels_change_only_through_the_label_window(
        past in prop::collection::vec(event(true), 1..30),
        extra in prop::collection::vec(event(false), 1..20),
    ) {
        let t = 400 * MICROS_PER_DAY;
        let h = 14;
        let label = ModelDef::parse(&Source::embedded("m", "")).unwrap().label;
        let labels = |rows: &[Ev]| {
            positives(&label_days(&frame(rows, t), &label).unwrap(), &[t], h, &label).unwrap().sort(["customer_id"], Default::default()).collect().unwrap()
        };
        let base = labels(&past);
        // Extra events outside [t, t + H) (shifted past the window) change nothing.
        let outside: Vec<Ev> = extra.iter().map(|e| (e.0, e.1, e.2 + h * 24 * 60, e.3, e.4, e.5)).collect();
        let with_outside: Vec<Ev> = past.iter().chain(&outside).cloned().collect();
        prop_assert!(base.equals_missing(&labels(&with_outside)));
        // Inside the window, a customer is positive exactly when an order event is there.
        let with_inside: Vec<Ev> = past.iter().chain(&extra).cloned().collect();
        let got: Vec<String> = labels(&with_inside).column("customer_id").unwrap().str().unwrap().iter().flatten().map(str::to_string).collect();
        let mut want: Vec<String> = extra
            .iter()
            .filter(|e| e.2 < h * 24 * 60 && TYPES[e.1].starts_with("order"))
            .map(|e| CUSTOMERS[e.0].to_string())
            .collect();
        want.sort();
        want.dedup();
        prop_assert_eq!(got, want);
    }
}

#[test]
fn the_population_can_be_limited_to_recently_active_customers() {
    let t = 400 * MICROS_PER_DAY;
    let day = 24 * 60;
    // a: active 5 days ago; b: last seen 40 days ago.
    let rows: Vec<Ev> = vec![(0, 0, -5 * day, 0, 1.0, 0), (1, 0, -40 * day, 0, 1.0, 0)];
    let set = default_set();
    let all = compute(&frame(&rows, t), &[t], &set, Population::AllSeen)
        .unwrap()
        .collect()
        .unwrap();
    let active = compute(&frame(&rows, t), &[t], &set, Population::ActiveDays(30))
        .unwrap()
        .collect()
        .unwrap();
    assert_eq!(all.height(), 2);
    assert_eq!(
        active.column("customer_id").unwrap().str().unwrap().get(0),
        Some("a")
    );
    assert_eq!(active.height(), 1);
}

#[test]
fn editing_a_feature_file_changes_the_run_without_a_rebuild() {
    let tmp = tempfile::tempdir().unwrap();
    let events = small_events(tmp.path());
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::copy(
        root.join("models/propensity.toml"),
        tmp.path().join("model.toml"),
    )
    .unwrap();
    let features = tmp.path().join("features.toml");
    std::fs::write(
        &features,
        "[[feature]]\nname = \"page_views_30d\"\nagg = \"count\"\nevents = [\"page_view\"]\nwindow = \"30d\"\n",
    )
    .unwrap();
    let job = tmp.path().join("job.toml");
    std::fs::write(
        &job,
        "features = \"features.toml\"\nmodel = \"model.toml\"\n",
    )
    .unwrap();
    let columns = |out: &str| {
        let o = propel(
            tmp.path(),
            &[
                "run",
                "--job",
                job.to_str().unwrap(),
                "--input",
                events.to_str().unwrap(),
                "--output",
                out,
            ],
        );
        assert!(o.status.success(), "{}", stderr(&o));
        let df = read_parquet(&run_dir(&tmp.path().join(out)).join("features.parquet"));
        df.get_column_names()
            .iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(columns("one"), ["customer_id", "page_views_30d"]);
    let mut text = std::fs::read_to_string(&features).unwrap();
    text += "\n[[feature]]\nname = \"cart_adds_7d\"\nagg = \"count\"\nevents = [\"add_to_cart\"]\nwindow = \"7d\"\n";
    std::fs::write(&features, text).unwrap();
    assert_eq!(
        columns("two"),
        ["customer_id", "page_views_30d", "cart_adds_7d"]
    );
}
