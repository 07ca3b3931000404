//! Command-line interface: argument parsing and the commands, kept apart from the stages.

use std::path::PathBuf;

use chrono::NaiveDate;
use clap::{Parser, Subcommand};

use crate::config::{FeatureDef, FeatureKind, FeatureSet, InputDef, Job, Layout, Over, Window};
use crate::error::Result;
use crate::generate::{GenerateOptions, generate};
use crate::pipeline::{RunOptions, RunSummary, Shard, Stage, run, run_shard};

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
        /// Snowplow Lake Loader event location (directory of Parquet, optionally
        /// Hive-partitioned). Repeatable; replaces the job's inputs.
        #[arg(long)]
        input: Vec<String>,
        /// Flat-layout event location (Parquet or CSV; offline sales, CRM, ...). Repeatable.
        #[arg(long)]
        flat_input: Vec<String>,
        /// Output location; the run writes <output>/<as-of>/.
        #[arg(long)]
        output: Option<String>,
        /// Run as of this date (YYYY-MM-DD; default: the day after the newest event), or
        /// backfill the nights FROM..TO (both included) in order, stopping at the first failure.
        #[arg(long)]
        as_of: Option<AsOf>,
        /// Label horizon in days. Default: the model file's.
        #[arg(long)]
        horizon: Option<i64>,
        /// State location (identity graph). Default: the job's, else <output>/_state.
        #[arg(long)]
        state: Option<String>,
        /// Start from this stage: `features` reruns features, model, scores, audiences and
        /// publish for a night already run, from the events, identities and sessions it
        /// kept (the tuning loop). Default: `ingest`, everything from the raw events.
        #[arg(long, value_enum, default_value_t = Stage::Ingest)]
        from_stage: Stage,
        /// Run only the per-customer stages (sessions, labels, features, consent) for shard
        /// I of N of the customers (by a hash of the customer id), keeping the part in the
        /// state location for `--merge-shards N`; publishes nothing. Shards of a night run
        /// side by side, on as many machines as share the state location.
        #[arg(long, value_name = "I/N", conflicts_with = "merge_shards")]
        shard: Option<Shard>,
        /// Merge the parts of the night's N shards: train, score, publish and commit the
        /// night's state as one run over all customers would, with byte-identical outputs.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        merge_shards: Option<u32>,
        /// Read every event file. By default a night starts from the state the night before
        /// kept and reads only the files loaded since (the same outputs, at the cost of one
        /// day's events), and reads everything only when that could differ (the reason is
        /// logged and in metrics.json).
        #[arg(long, conflicts_with = "merge_shards")]
        full_refresh: bool,
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
    /// Put two runs side by side: validation metrics, model, and feature importance.
    Compare {
        /// A run directory (`<output>/<as-of>/`), e.g. before a change.
        run_a: PathBuf,
        /// Another run directory, e.g. after the change.
        run_b: PathBuf,
    },
    /// Inspect and test feature definitions.
    Features {
        #[command(subcommand)]
        command: FeaturesCommand,
    },
    /// Check the job, feature and model files (and the input schema if an input is known)
    /// without running anything heavy. Reports every problem at once.
    Validate {
        #[arg(long)]
        job: Option<PathBuf>,
        /// Lake Loader input to check (repeatable). Default: the job's inputs.
        #[arg(long)]
        input: Vec<String>,
        /// Flat-layout input to check (repeatable).
        #[arg(long)]
        flat_input: Vec<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum FeaturesCommand {
    /// Print every feature with its definition and description.
    List {
        /// Feature file. Default: the job's (or the embedded default set).
        #[arg(long)]
        features: Option<PathBuf>,
        #[arg(long)]
        job: Option<PathBuf>,
    },
    /// Run every feature's examples; fails if any gives another value than expected.
    Check {
        #[arg(long)]
        features: Option<PathBuf>,
        #[arg(long)]
        job: Option<PathBuf>,
    },
}

/// `--as-of`: one night, or a range of nights for a backfill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AsOf {
    Night(NaiveDate),
    Range(NaiveDate, NaiveDate),
}

impl std::str::FromStr for AsOf {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<AsOf, String> {
        let date = |d: &str| {
            NaiveDate::parse_from_str(d.trim(), "%Y-%m-%d")
                .map_err(|_| format!("expected a date YYYY-MM-DD, found {d:?}"))
        };
        match s.split_once("..") {
            None => date(s).map(AsOf::Night),
            Some((from, to)) => {
                let (from, to) = (date(from)?, date(to)?);
                if from > to {
                    return Err(format!("the range {s} ends before it starts"));
                }
                Ok(AsOf::Range(from, to))
            }
        }
    }
}

impl AsOf {
    /// The nights to run, in order; `[None]` when the date is left to the data.
    pub fn nights(as_of: Option<AsOf>) -> Vec<Option<NaiveDate>> {
        match as_of {
            None => vec![None],
            Some(AsOf::Night(d)) => vec![Some(d)],
            Some(AsOf::Range(from, to)) => from
                .iter_days()
                .take_while(|d| *d <= to)
                .map(Some)
                .collect(),
        }
    }
}

fn cli_inputs(lake_loader: Vec<String>, flat: Vec<String>) -> Vec<InputDef> {
    let one = |layout: Layout| move |url: String| InputDef { url, layout };
    lake_loader
        .into_iter()
        .map(one(Layout::LakeLoader))
        .chain(flat.into_iter().map(one(Layout::Flat)))
        .collect()
}

fn feature_set(features: Option<PathBuf>, job: Option<PathBuf>) -> Result<FeatureSet> {
    Ok(match features {
        Some(path) => FeatureSet::load(&path)?,
        None => Job::load(job.as_deref())?.features,
    })
}

/// One line describing a feature's definition.
pub fn describe(f: &FeatureDef) -> String {
    match &f.kind {
        FeatureKind::Aggregate(a) => {
            let mut s = a.agg.name().to_string();
            if let Some(field) = &a.field {
                s += &format!("({field})");
            }
            if a.over == Over::Sessions {
                s += " over sessions";
            }
            if !a.events.is_empty() {
                s += &format!(
                    " of {}",
                    a.events
                        .iter()
                        .map(|e| e.name())
                        .collect::<Vec<_>>()
                        .join("|")
                );
            }
            s += &match a.window {
                Window::All => " in all history".to_string(),
                Window::Range {
                    from_days,
                    to_days: 0,
                } => format!(" in the last {from_days}d"),
                Window::Range { from_days, to_days } => {
                    format!(" in [t-{from_days}d, t-{to_days}d)")
                }
            };
            if !a.filters.is_empty() {
                s += &format!(
                    " where {}",
                    a.filters
                        .iter()
                        .map(|f| format!("{} {:?}", f.field, f.op))
                        .collect::<Vec<_>>()
                        .join(" and ")
                );
            }
            if let Some(w) = &a.weight {
                s += &format!(" weighted by {w}");
            }
            if let Some(v) = a.fill {
                s += &format!("; empty = {v}");
            }
            s
        }
        FeatureKind::Derived { op, inputs } => format!("{op:?}({})", inputs.join(", ")),
    }
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
        let to: Vec<String> = a
            .deliveries
            .iter()
            .map(|d| match d.added {
                Some(added) => format!(
                    "{} {} (+{added} -{})",
                    d.destination,
                    d.count,
                    d.removed.unwrap_or(0)
                ),
                None => format!("{} {}", d.destination, d.count),
            })
            .collect();
        println!(
            "  audience:   {:<22} {:>6} customers{}",
            a.name,
            a.size,
            if a.delivered {
                format!(" -> {}", to.join(", "))
            } else {
                " (not delivered)".into()
            }
        );
    }
    for w in &s.warnings {
        println!("  warning:    {w}");
    }
    println!("  outputs:    {}", s.output_dir.display());
}

/// Runs a parsed command line.
pub fn execute(cli: Cli) -> Result<()> {
    crate::buckets::check_memory_override()?;
    match cli.command {
        Command::Run {
            job,
            input,
            flat_input,
            output,
            as_of,
            horizon,
            state,
            from_stage,
            shard,
            merge_shards,
            full_refresh,
        } => {
            // No job and no input: the embedded demo (rerun from its features with
            // `--from-stage features`, without generating it again).
            let demo = job.is_none() && input.is_empty() && flat_input.is_empty();
            let mut opts = RunOptions {
                job,
                inputs: cli_inputs(input, flat_input),
                output,
                as_of: None,
                horizon_days: horizon,
                state,
                from_stage,
                merge_shards: merge_shards.map(|n| n as usize),
                full_refresh,
            };
            if demo {
                opts.output = opts.output.or(Some(
                    PathBuf::from(DEMO_DIR).join("out").display().to_string(),
                ));
            }
            let sharded = shard.is_some() || merge_shards.is_some();
            if demo && from_stage == Stage::Ingest {
                let events = PathBuf::from(DEMO_DIR).join("events");
                // Shards and the merge read the demo events that a whole demo run generated.
                if sharded {
                    opts.inputs = cli_inputs(vec![events.display().to_string()], vec![]);
                } else {
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
                    opts.inputs = cli_inputs(vec![events.display().to_string()], vec![]);
                }
            }
            let nights = AsOf::nights(as_of);
            let backfill = nights.len() > 1;
            if backfill && sharded {
                // Each night's shards start from the state its predecessor's merge commits.
                return Err(crate::error::ConfigError::one(
                    "--as-of",
                    "--shard and --merge-shards take one night, not FROM..TO: run each \
                              night's shards, then its merge, then the next night's",
                )
                .into());
            }
            for night in nights {
                opts.as_of = night;
                if let Some(shard) = shard {
                    let s = run_shard(&opts, shard)?;
                    println!(
                        "propel shard {} as of {}: {} customers, {} events; part kept in {}",
                        s.shard,
                        s.as_of,
                        s.customers,
                        s.events,
                        s.part.display()
                    );
                    continue;
                }
                let summary = run(&opts).map_err(|e| match (backfill, night) {
                    (true, Some(d)) => e.during_backfill(d),
                    _ => e,
                })?;
                print_summary(&summary);
            }
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
        Command::Features {
            command: FeaturesCommand::List { features, job },
        } => {
            let set = feature_set(features, job)?;
            println!(
                "{} features from {} (hash {})",
                set.features.len(),
                set.source,
                &set.hash[..12]
            );
            for f in &set.features {
                println!("{:<28} {}", f.name, describe(f));
                if !f.description.is_empty() {
                    println!("{:<28} {}", "", f.description);
                }
            }
            Ok(())
        }
        Command::Features {
            command: FeaturesCommand::Check { features, job },
        } => {
            let set = feature_set(features, job)?;
            let outcomes = crate::features::check_examples(&set)?;
            let failed: Vec<_> = outcomes.iter().filter(|o| !o.passed()).collect();
            for o in &failed {
                println!(
                    "FAIL {} example {}: expected {:?}, got {:?}",
                    o.feature, o.index, o.expected, o.got
                );
            }
            println!(
                "{} passed, {} failed",
                outcomes.len() - failed.len(),
                failed.len()
            );
            if failed.is_empty() {
                Ok(())
            } else {
                Err(crate::error::ConfigError(
                    failed
                        .iter()
                        .map(|o| crate::error::ConfigProblem {
                            file: set.source.clone(),
                            key: format!("{}.example[{}]", o.feature, o.index),
                            message: format!("expected {:?}, got {:?}", o.expected, o.got),
                        })
                        .collect(),
                )
                .into())
            }
        }
        Command::Compare { run_a, run_b } => {
            print!("{}", compare(&run_a, &run_b)?);
            Ok(())
        }
        Command::Validate {
            job,
            input,
            flat_input,
        } => {
            let job = Job::load(job.as_deref())?;
            println!(
                "job ok: {} features ({}), horizon {} days, {} audience(s)",
                job.features.features.len(),
                job.features.source,
                job.model.horizon_days,
                job.audiences.audiences.len()
            );
            for note in &job.audiences.skipped {
                println!("note: {note}");
            }
            let inputs = cli_inputs(input, flat_input);
            for i in if inputs.is_empty() {
                &job.inputs
            } else {
                &inputs
            } {
                let n = crate::ingest::check_schemas(i)?;
                println!(
                    "input ok: {n} file(s) at {} ({:?}) have the columns propel needs",
                    i.url, i.layout
                );
            }
            Ok(())
        }
    }
}

fn read_metrics(run: &std::path::Path) -> Result<serde_json::Value> {
    let path = run.join("metrics.json");
    let text = std::fs::read_to_string(&path).map_err(|e| {
        crate::error::ConfigError::one(
            path.display().to_string(),
            format!("expected a run directory with metrics.json: {e}"),
        )
    })?;
    serde_json::from_str(&text).map_err(|e| {
        crate::error::ConfigError::one(
            path.display().to_string(),
            format!("not a propel metrics file: {e}"),
        )
        .into()
    })
}

/// The side-by-side comparison `propel compare` prints.
pub fn compare(a: &std::path::Path, b: &std::path::Path) -> Result<String> {
    let (ma, mb) = (read_metrics(a)?, read_metrics(b)?);
    let mut out = String::new();
    let name = |m: &serde_json::Value, p: &std::path::Path| {
        format!("{} ({})", p.display(), m["as_of"].as_str().unwrap_or("?"))
    };
    out += &format!("A: {}\nB: {}\n\n", name(&ma, a), name(&mb, b));
    out += &format!("{:<24} {:>12} {:>12} {:>10}\n", "metric", "A", "B", "B - A");
    let number = |m: &serde_json::Value, k: &str| m[k].as_f64();
    for k in [
        "auc",
        "pr_auc",
        "log_loss",
        "brier",
        "ece",
        "lift_top_decile",
        "precision_at_5",
        "precision_at_10",
        "precision_at_20",
        "positive_rate",
        "n_train",
        "n_validation",
    ] {
        let (x, y) = (number(&ma, k), number(&mb, k));
        let counts = k.starts_with("n_");
        let cell = |v: Option<f64>| {
            v.map_or("-".to_string(), |v| {
                if counts {
                    format!("{v:.0}")
                } else {
                    format!("{v:.4}")
                }
            })
        };
        let delta = match (x, y) {
            (Some(x), Some(y)) if counts => format!("{:+.0}", y - x),
            (Some(x), Some(y)) => format!("{:+.4}", y - x),
            _ => "-".into(),
        };
        out += &format!("{k:<24} {:>12} {:>12} {delta:>10}\n", cell(x), cell(y));
    }
    let model = |m: &serde_json::Value| {
        format!(
            "{} l2={}",
            m["model"]["kind"].as_str().unwrap_or("?"),
            m["model"]["l2"]
        )
    };
    out += &format!(
        "{:<24} A: {}\n{:<24} B: {}\n",
        "model",
        model(&ma),
        "",
        model(&mb)
    );
    out += &format!(
        "\n{:<32} {:>12} {:>12} {:>10}\n",
        "feature importance", "A", "B", "B - A"
    );
    let drivers = |m: &serde_json::Value| -> std::collections::BTreeMap<String, f64> {
        m["drivers"]
            .as_array()
            .map(|d| {
                d.iter()
                    .filter_map(|x| {
                        Some((
                            x["feature"].as_str()?.to_string(),
                            x["importance"].as_f64()?,
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let (da, db) = (drivers(&ma), drivers(&mb));
    let mut features: Vec<&String> = da.keys().chain(db.keys()).collect();
    features.sort_by(|x, y| {
        let w = |f: &String| {
            da.get(f)
                .copied()
                .unwrap_or(0.0)
                .max(db.get(f).copied().unwrap_or(0.0))
        };
        w(y).total_cmp(&w(x)).then(x.cmp(y))
    });
    features.dedup();
    for f in features {
        let cell = |v: Option<&f64>| v.map_or("-".to_string(), |v| format!("{v:.4}"));
        let delta = match (da.get(f), db.get(f)) {
            (Some(x), Some(y)) => format!("{:+.4}", y - x),
            _ => "-".into(),
        };
        out += &format!(
            "{f:<32} {:>12} {:>12} {delta:>10}\n",
            cell(da.get(f)),
            cell(db.get(f))
        );
    }
    Ok(out)
}
