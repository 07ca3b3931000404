//! Shared fixtures for the integration tests: small generated data sets and helpers to run
//! the binary and read outputs.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Output;

use chrono::NaiveDate;
use polars::prelude::*;
use propel::generate::{GenerateOptions, generate};

/// A small but model-able data set: 400 people over 80 days.
pub fn small_events(dir: &Path) -> PathBuf {
    let out = dir.join("events");
    generate(&GenerateOptions {
        customers: 400,
        days: 80,
        seed: 7,
        start: NaiveDate::from_ymd_opt(2026, 3, 1).unwrap(),
        out: out.clone(),
    })
    .expect("generate");
    out
}

/// Runs the `propel` binary with `args`, in `cwd`.
pub fn propel(cwd: &Path, args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_propel"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("run propel")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

pub fn read_parquet(path: &Path) -> DataFrame {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    ParquetReader::new(file).finish().unwrap()
}

/// Every file under `dir`, sorted.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Every Parquet file under `dir`, sorted.
pub fn parquet_files(dir: &Path) -> Vec<PathBuf> {
    files_under(dir)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
        .collect()
}

/// The published run directories under an output root (not the state, not hidden staging).
pub fn run_dirs(root: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.is_dir()
                && !p
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with(['.', '_'])
        })
        .collect()
}

/// The single run directory under an output root.
pub fn run_dir(root: &Path) -> PathBuf {
    let dirs = run_dirs(root);
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    dirs[0].clone()
}

/// The non-null values of a text column (or of a categorical one, as the events hold their
/// descriptive columns), in row order.
pub fn strings(df: &DataFrame, column: &str) -> Vec<String> {
    df.column(column)
        .unwrap_or_else(|e| panic!("{column}: {e}"))
        .cast(&DataType::String)
        .unwrap()
        .str()
        .unwrap()
        .iter()
        .flatten()
        .map(str::to_string)
        .collect()
}

/// A job whose model is quick to fit (a fixed penalty, few iterations), so that many runs
/// fit in a test; trained every night (not weekly, the default), so that nights compare the
/// features at every training cutoff.
pub fn quick_job(dir: &Path) -> PathBuf {
    std::fs::write(
        dir.join("quick_model.toml"),
        "[label]\nhorizon_days = 14\n[model]\nl2 = 1.0\nmax_iterations = 60\nretrain_every_days = 1\n",
    )
    .unwrap();
    let job = dir.join("quick.toml");
    std::fs::write(&job, "model = \"quick_model.toml\"\n").unwrap();
    job
}

pub fn run_args<'a>(
    job: &'a Path,
    events: &'a Path,
    out: &'a Path,
    as_of: &'a str,
) -> Vec<&'a str> {
    vec![
        "--log-format",
        "json",
        "run",
        "--job",
        job.to_str().unwrap(),
        "--input",
        events.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--as-of",
        as_of,
    ]
}

/// An external program a test needs (chromium, python with packages, ...): its path, or
/// `None` when it is missing and the run does not require it. CI sets
/// `PROPEL_REQUIRE_EXTERNAL=1` after installing everything, so there a missing tool fails.
pub fn external(program: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(program))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        if std::env::var("PROPEL_REQUIRE_EXTERNAL").is_ok_and(|v| v == "1") {
            panic!("{program} is required (PROPEL_REQUIRE_EXTERNAL=1) but not on PATH");
        }
        eprintln!("SKIPPED: {program} not on PATH (.ci/run installs it)");
    }
    found
}

/// A Python interpreter named by the environment variable `var` (a venv `.ci/run` builds,
/// e.g. with Airflow or the notebook packages), or `None` (skipped) when unset and the run
/// does not require it.
pub fn python_from(var: &str) -> Option<PathBuf> {
    match std::env::var_os(var) {
        Some(p) => Some(PathBuf::from(p)),
        None if std::env::var("PROPEL_REQUIRE_EXTERNAL").is_ok_and(|v| v == "1") => {
            panic!("{var} is required (PROPEL_REQUIRE_EXTERNAL=1) but not set")
        }
        None => {
            eprintln!("SKIPPED: {var} not set (.ci/run sets it)");
            None
        }
    }
}
