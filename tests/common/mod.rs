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

/// Every Parquet file under `dir`, sorted.
pub fn parquet_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "parquet") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The single run directory under an output root.
pub fn run_dir(root: &Path) -> PathBuf {
    let dirs: Vec<PathBuf> = std::fs::read_dir(root)
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
        .collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    dirs[0].clone()
}

/// The non-null values of a text column, in row order.
pub fn strings(df: &DataFrame, column: &str) -> Vec<String> {
    df.column(column)
        .unwrap_or_else(|e| panic!("{column}: {e}"))
        .str()
        .unwrap()
        .iter()
        .flatten()
        .map(str::to_string)
        .collect()
}
