//! Out-of-time evaluation on the UCI Online Retail data (see `EVALUATION.md`).
//!
//! ```sh
//! cargo run --release --example online_retail -- ../shared/data/online_retail/online_retail_II_2009-2010.parquet 2010-11-01 30
//! ```
//!
//! Each invoice becomes an `order` event (total = sum of its lines) and one `order_line`
//! event per line, in propel's flat layout, with the customer number as `loyalty_id` and
//! the offline channel. As in the peer baselines, cancellations (invoices starting with `C`)
//! and lines without a customer are left out (they cannot be attributed). The job then runs
//! as of T + H, so that its validation cutoff is T: features from invoices strictly before
//! T, label = an invoice in [T, T + H), training on 8 earlier cutoffs spaced H apart.

use std::path::PathBuf;

use chrono::{Duration, NaiveDate};
use polars::prelude::*;
use propel::config::{InputDef, Layout};
use propel::pipeline::{RunOptions, run};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [path, t, h] = args.as_slice() else {
        anyhow::bail!(
            "usage: online_retail <invoices.parquet> <T: YYYY-MM-DD> <H: days> [job.toml]"
        );
    };
    let t: NaiveDate = t.parse()?;
    let h: i64 = h.parse()?;
    let job = args.get(3).map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("jobs/evaluation/online_retail.toml")
    });
    let work = tempfile::tempdir()?;
    let events = work.path().join("events");
    std::fs::create_dir_all(&events)?;

    let raw = LazyFrame::scan_parquet(PlRefPath::new(path.as_str()), ScanArgsParquet::default())?;
    let schema = raw.clone().collect_schema()?;
    // The two UCI files name their columns differently.
    let pick = |a: &str, b: &str| {
        if schema.get(a).is_some() {
            col(a)
        } else {
            col(b)
        }
    };
    let lines = raw
        .select([
            pick("Invoice", "InvoiceNo")
                .cast(DataType::String)
                .alias("invoice"),
            pick("StockCode", "StockCode").alias("sku"),
            pick("Description", "Description").alias("product_name"),
            pick("Quantity", "Quantity")
                .cast(DataType::Float64)
                .alias("quantity"),
            pick("Price", "UnitPrice")
                .cast(DataType::Float64)
                .alias("unit_price"),
            pick("Customer ID", "CustomerID")
                .cast(DataType::Int64)
                .alias("customer"),
            pick("InvoiceDate", "InvoiceDate")
                .str()
                .to_datetime(
                    Some(TimeUnit::Microseconds),
                    Some(TimeZone::UTC),
                    StrptimeOptions {
                        format: Some("%Y-%m-%d %H:%M:%S".into()),
                        strict: true,
                        exact: true,
                        cache: true,
                    },
                    lit("raise"),
                )
                .alias("tstamp"),
        ])
        .with_row_index("line", None)
        .collect()?;
    let total = lines.height();
    let lines = lines
        .lazy()
        .filter(
            col("customer")
                .is_not_null()
                .and(col("customer").neq(lit(0i64)))
                .and(col("invoice").str().starts_with(lit("C")).not()),
        )
        .collect()?;
    println!(
        "{total} invoice lines; {} attributable (customer known, not a cancellation)",
        lines.height()
    );
    let order_lines = lines.clone().lazy().select([
        concat_str(
            [col("invoice"), col("line").cast(DataType::String)],
            "-",
            false,
        )
        .alias("event_id"),
        col("tstamp"),
        lit("order_line").alias("event_type"),
        lit("offline").alias("channel"),
        col("customer").cast(DataType::String).alias("loyalty_id"),
        col("invoice").alias("order_id"),
        col("sku"),
        col("product_name"),
        col("quantity"),
        col("unit_price"),
    ]);
    let orders = lines
        .lazy()
        .group_by([col("invoice")])
        .agg([
            col("tstamp").min(),
            col("customer").first(),
            (col("quantity") * col("unit_price"))
                .sum()
                .alias("order_total"),
        ])
        .select([
            (col("invoice") + lit("-order")).alias("event_id"),
            col("tstamp"),
            lit("order").alias("event_type"),
            lit("offline").alias("channel"),
            col("customer").cast(DataType::String).alias("loyalty_id"),
            col("invoice").alias("order_id"),
            col("order_total"),
        ]);
    let mut all = concat(
        [orders, order_lines],
        UnionArgs {
            diagonal: true,
            ..Default::default()
        },
    )?
    .sort(["tstamp", "event_id"], Default::default())
    .collect()?;
    let file = events.join("invoices.parquet");
    ParquetWriter::new(std::fs::File::create(&file)?).finish(&mut all)?;

    let summary = run(&RunOptions {
        job: Some(job),
        inputs: vec![InputDef {
            url: events.display().to_string(),
            layout: Layout::Flat,
        }],
        output: Some(work.path().join("out").display().to_string()),
        as_of: Some(t + Duration::days(h)),
        horizon_days: Some(h),
        state: Some(work.path().join("state").display().to_string()),
        ..RunOptions::default()
    })?;
    let metrics: serde_json::Value =
        serde_json::from_slice(&std::fs::read(summary.output_dir.join("metrics.json"))?)?;
    let keep = [
        "auc",
        "pr_auc",
        "log_loss",
        "brier",
        "ece",
        "lift_top_decile",
        "positive_rate",
        "n_train",
        "n_validation",
        "model",
    ];
    let out: serde_json::Map<String, serde_json::Value> = keep
        .iter()
        .filter_map(|k| metrics.get(*k).map(|v| (k.to_string(), v.clone())))
        .collect();
    println!("{}", serde_json::to_string(&out)?);
    Ok(())
}
