//! Feature snapshots: every customer's features and label at every cutoff, sorted by cutoff
//! and customer. Held, or written a bucket of customers at a time to one Parquet file and
//! read back one cutoff (validation, scoring) or a sample (training) at a time: at 100M
//! events the snapshots of ten cutoffs take 6 GB.

use std::path::{Path, PathBuf};

use polars::prelude::*;

use crate::error::{Context, Result};
use crate::schema::output;

/// How snapshot files are written: LZ4 (the 10M run's snapshots took 0.9 s to write against
/// 1.6 s with zstd, both then without statistics), with each row group's smallest and largest
/// values, which let a read of one cutoff skip the row groups of the others.
fn compression() -> ParquetCompression {
    ParquetCompression::Lz4Raw
}

fn statistics() -> StatisticsOptions {
    StatisticsOptions::default()
}

#[derive(Clone)]
pub enum Snapshots {
    Held(DataFrame),
    /// A file of the snapshots (`Writer`, or `write`).
    File {
        path: PathBuf,
        rows: usize,
    },
}

impl Snapshots {
    /// The snapshots in `path`, unread (their rows from the file's metadata).
    pub fn file(path: PathBuf) -> Result<Snapshots> {
        let rows = crate::util::parquet_rows(&path)?;
        Ok(Snapshots::File { path, rows })
    }

    pub fn rows(&self) -> usize {
        match self {
            Snapshots::Held(df) => df.height(),
            Snapshots::File { rows, .. } => *rows,
        }
    }

    pub fn lazy(&self) -> Result<LazyFrame> {
        match self {
            Snapshots::Held(df) => Ok(df.clone().lazy()),
            Snapshots::File { path, .. } => crate::util::scan_parquet(path),
        }
    }

    /// The rows at the cutoffs `micros`, in order.
    pub fn at(&self, micros: &[i64]) -> Result<DataFrame> {
        self.lazy()?
            .filter(at_cutoffs(micros))
            .collect()
            .ctx("selecting snapshots")
    }

    /// Writes the snapshots to `path` (a held frame) or links them there (a file).
    pub fn write(&self, path: &Path) -> Result<()> {
        match self {
            Snapshots::Held(df) => {
                crate::util::write_parquet_with(df, path, compression(), statistics())
            }
            Snapshots::File { path: file, .. } => crate::util::link_or_copy(file, path),
        }
    }
}

/// Whether a row's cutoff is one of `micros`: a test of each, which the row groups'
/// statistics can refute.
pub fn at_cutoffs(micros: &[i64]) -> Expr {
    micros
        .iter()
        .map(|&c| col(output::CUTOFF).eq(lit(c)))
        .reduce(Expr::or)
        .unwrap_or(lit(false))
}

/// Writes snapshots a bucket of customers at a time (`add`, the buckets ranges of customers
/// in order) into one file sorted by cutoff and customer (`finish`): each bucket's rows at
/// each cutoff go to a scratch file of their own, and `finish` appends them cutoff by cutoff,
/// bucket by bucket. The file is the one the held snapshots write (tested).
pub struct Writer {
    dir: tempfile::TempDir,
    /// The scratch files of each cutoff, in the order of the buckets.
    cutoffs: std::collections::BTreeMap<i64, Vec<PathBuf>>,
    schema: Option<SchemaRef>,
    buckets: usize,
}

impl Writer {
    pub fn create(within: &Path) -> Result<Writer> {
        let dir = crate::util::scratch_dir(within, "snapshots-")?;
        Ok(Writer {
            dir,
            cutoffs: Default::default(),
            schema: None,
            buckets: 0,
        })
    }

    /// Adds the snapshots of the next bucket of customers, sorted by cutoff and customer.
    pub fn add(&mut self, bucket: &DataFrame) -> Result<()> {
        self.schema.get_or_insert_with(|| bucket.schema().clone());
        for part in bucket
            .partition_by_stable([output::CUTOFF], true)
            .ctx("snapshots by cutoff")?
        {
            let cutoff = part
                .column(output::CUTOFF)
                .ctx("cutoff")?
                .i64()
                .ctx("cutoff")?
                .get(0)
                .expect("a partition has rows");
            let path = self
                .dir
                .path()
                .join(format!("{cutoff}-{}.parquet", self.buckets));
            crate::util::write_parquet_with(
                &part,
                &path,
                ParquetCompression::Uncompressed,
                StatisticsOptions::empty(),
            )?;
            self.cutoffs.entry(cutoff).or_default().push(path);
        }
        self.buckets += 1;
        Ok(())
    }

    /// Writes the snapshots added to `path`, sorted by cutoff and customer. With no bucket
    /// added there is no customer to train on or score: the model is refused, as it is for
    /// held snapshots without rows.
    pub fn finish(self, path: &Path) -> Result<()> {
        let Some(schema) = self.schema.as_ref() else {
            return Err(crate::error::ModelError::Ineligible {
                what: "customers with a history",
                found: 0,
                needed: 1,
                hint: "every customer's events were left out (suppressed, or quarantined): \
                       there are no features to train on or score"
                    .into(),
            }
            .into());
        };
        let mut file =
            crate::util::ParquetAppender::create(path, schema, compression(), statistics())?;
        for part in self.cutoffs.values().flatten() {
            file.append(&crate::util::read_parquet(part)?)?;
            std::fs::remove_file(part).ctx(format!("removing {}", part.display()))?;
        }
        file.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::event as ev;

    fn snapshots() -> DataFrame {
        // Customers c00..c29, three cutoffs, the first cutoff without the last ten customers.
        let (mut cutoffs, mut ids, mut values) = (Vec::new(), Vec::new(), Vec::new());
        for cutoff in [10i64, 20, 30] {
            for c in 0..30 {
                if cutoff == 10 && c >= 20 {
                    continue;
                }
                cutoffs.push(cutoff);
                ids.push(format!("c{c:02}"));
                values.push((cutoff * 100 + c) as f64);
            }
        }
        df!(
            output::CUTOFF => cutoffs,
            ev::CUSTOMER_ID => ids,
            "f" => values,
        )
        .unwrap()
    }

    #[test]
    fn written_by_bucket_the_file_is_the_held_snapshots_file() {
        let dir = tempfile::tempdir().unwrap();
        let all = snapshots();
        let held = dir.path().join("held.parquet");
        Snapshots::Held(all.clone()).write(&held).unwrap();
        // Three buckets of ten customers each, the last without rows at the first cutoff.
        let mut writer = Writer::create(dir.path()).unwrap();
        for range in [("c00", "c10"), ("c10", "c20"), ("c20", "c30")] {
            let bucket = all
                .clone()
                .lazy()
                .filter(
                    col(ev::CUSTOMER_ID)
                        .gt_eq(lit(range.0))
                        .and(col(ev::CUSTOMER_ID).lt(lit(range.1))),
                )
                .collect()
                .unwrap();
            writer.add(&bucket).unwrap();
        }
        let written = dir.path().join("written.parquet");
        writer.finish(&written).unwrap();
        assert_eq!(
            std::fs::read(&held).unwrap(),
            std::fs::read(&written).unwrap()
        );
        let file = Snapshots::file(written).unwrap();
        assert_eq!(file.rows(), 80);
        let at = file.at(&[20]).unwrap();
        assert_eq!(at, Snapshots::Held(all).at(&[20]).unwrap());
        assert_eq!(at.height(), 30);
    }

    #[test]
    fn a_writer_given_no_bucket_refuses_the_model() {
        let dir = tempfile::tempdir().unwrap();
        let none = Writer::create(dir.path()).unwrap();
        let refused = none.finish(&dir.path().join("none.parquet")).unwrap_err();
        assert_eq!(refused.exit_code(), crate::error::exit_code::MODEL_REFUSED);
        assert!(!dir.path().join("none.parquet").exists());
    }
}
