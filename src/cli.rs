//! Command-line interface: argument parsing and the commands, kept apart from the stages.

use std::path::PathBuf;

use chrono::NaiveDate;
use clap::{Parser, Subcommand};

use crate::config::Job;
use crate::error::Result;
use crate::generate::{GenerateOptions, generate};
use crate::pipeline::{RunOptions, RunSummary, run};

/// Where the embedded demo writes.
pub const DEMO_DIR: &str = "propel-demo";
pub const DEMO_CUSTOMERS: usize = 3000;
pub const DEMO_DAYS: u32 = 120;
pub const DEMO_SEED: u64 = 42;

#[derive(Parser, Debug)]
#[command(
    name = "propel",
    version,
    about = "Snowplow events -> scored customer audiences, nightly"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log format: human-readable text, or JSON lines for schedulers.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the job. With no arguments: generate the demo data set and run on it.
    Run {
        /// Job file (TOML). Default: the embedded default job.
        #[arg(long)]
        job: Option<PathBuf>,
        /// Event location (directory of Parquet, optionally Hive-partitioned).
        #[arg(long)]
        input: Option<String>,
        /// Output location; the run writes <output>/<as-of>/.
        #[arg(long)]
        output: Option<String>,
        /// Run as of this date (YYYY-MM-DD). Default: the day after the newest event.
        #[arg(long)]
        as_of: Option<NaiveDate>,
        /// Label horizon in days. Default: the model file's.
        #[arg(long)]
        horizon: Option<i64>,
    },
    /// Write synthetic Snowplow Lake Loader Parquet with planted purchase behaviour.
    Generate {
        #[arg(long, default_value_t = DEMO_CUSTOMERS)]
        customers: usize,
        #[arg(long, default_value_t = DEMO_DAYS)]
        days: u32,
        #[arg(long, default_value_t = DEMO_SEED)]
        seed: u64,
        /// First simulated day.
        #[arg(long, default_value = "2026-05-01")]
        start: NaiveDate,
        #[arg(long)]
        out: PathBuf,
    },
    /// Check the job, feature and model files (and the input schema if an input is known)
    /// without running anything heavy. Reports every problem at once.
    Validate {
        #[arg(long)]
        job: Option<PathBuf>,
        #[arg(long)]
        input: Option<String>,
    },
}

fn print_summary(s: &RunSummary) {
    println!("propel run as of {}", s.as_of);
    println!(
        "  events:     {} read, {} used, {} duplicates, {} quarantined, {} after as-of",
        s.counts.read,
        s.counts.used,
        s.counts.duplicates,
        s.counts.quarantined,
        s.counts.after_as_of
    );
    println!("  customers:  {} scored", s.customers_scored);
    println!(
        "  validation: AUC {:.3}, PR-AUC {:.3}, lift@10% {:.2}, base rate {:.3} (n = {})",
        s.validation.auc,
        s.validation.pr_auc,
        s.validation.lift_top_decile,
        s.validation.positive_rate,
        s.validation.n
    );
    for a in &s.audiences {
        println!(
            "  audience:   {} = {} customers ({})",
            a.name, a.size, a.file
        );
    }
    println!("  outputs:    {}", s.output_dir.display());
}

/// Runs a parsed command line.
pub fn execute(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Run {
            job,
            input,
            output,
            as_of,
            horizon,
        } => {
            let demo = job.is_none() && input.is_none();
            let mut opts = RunOptions {
                job,
                input,
                output,
                as_of,
                horizon_days: horizon,
            };
            if demo {
                let events = PathBuf::from(DEMO_DIR).join("events");
                if events.exists() {
                    std::fs::remove_dir_all(&events).map_err(|e| crate::error::Error::Io {
                        context: format!("clearing {}", events.display()),
                        source: e,
                    })?;
                }
                println!(
                    "demo: generating {DEMO_CUSTOMERS} customers over {DEMO_DAYS} days into {}",
                    events.display()
                );
                let g = generate(&GenerateOptions {
                    customers: DEMO_CUSTOMERS,
                    days: DEMO_DAYS,
                    seed: DEMO_SEED,
                    start: NaiveDate::from_ymd_opt(2026, 5, 1).expect("valid"),
                    out: events.clone(),
                })?;
                println!(
                    "demo: {} events ({} duplicated), {} orders, {} files",
                    g.events, g.duplicates, g.orders, g.files
                );
                opts.input = Some(events.display().to_string());
                opts.output = opts.output.or(Some(
                    PathBuf::from(DEMO_DIR).join("out").display().to_string(),
                ));
            }
            let summary = run(&opts)?;
            print_summary(&summary);
            Ok(())
        }
        Command::Generate {
            customers,
            days,
            seed,
            start,
            out,
        } => {
            let g = generate(&GenerateOptions {
                customers,
                days,
                seed,
                start,
                out: out.clone(),
            })?;
            println!(
                "wrote {} events ({} duplicated, {} orders) in {} files under {}",
                g.events,
                g.duplicates,
                g.orders,
                g.files,
                out.display()
            );
            Ok(())
        }
        Command::Validate { job, input } => {
            let job = Job::load(job.as_deref())?;
            println!(
                "job ok: {} features ({}), horizon {} days, {} audience(s)",
                job.features.features.len(),
                job.features.source,
                job.model.horizon_days,
                job.model.audiences.len()
            );
            if let Some(location) = input.or(job.input) {
                let n = crate::ingest::check_schemas(&location)?;
                println!("input ok: {n} file(s) at {location} have the columns propel needs");
            }
            Ok(())
        }
    }
}
