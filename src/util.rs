//! Small shared helpers: Parquet writing, hashing, time conversions.

use std::path::Path;

use polars::prelude::*;
use sha2::{Digest, Sha256};

use crate::error::{Context, Result};

/// Writes a frame as zstd Parquet (`published`) with statistics. Output bytes depend only on
/// the frame.
pub fn write_parquet(df: &DataFrame, path: &Path) -> Result<()> {
    let mut file = ParquetAppender::published(path, df.schema())?;
    file.append(df)?;
    file.finish()
}

/// The compression of the Parquet files a run publishes: zstd at level 1, which writes in
/// about half the time of zstd's default level (3) for a few percent more bytes.
pub fn published() -> ParquetCompression {
    ParquetCompression::Zstd(Some(
        polars_utils::compression::ZstdLevel::try_new(1).expect("1 is a zstd level"),
    ))
}

/// Writes a frame of the state a night keeps for the next (the history, the identity graph,
/// the increment's frames): LZ4 and no statistics, as it is written every night and read
/// back whole.
pub fn write_state(df: &DataFrame, path: &Path) -> Result<()> {
    write_parquet_with(
        df,
        path,
        ParquetCompression::Lz4Raw,
        StatisticsOptions::empty(),
    )
}

/// Writes a frame as Parquet with `compression` and `statistics` (the state a night keeps
/// is written without either: see `pipeline::write_stage_frame`).
pub fn write_parquet_with(
    df: &DataFrame,
    path: &Path,
    compression: ParquetCompression,
    statistics: StatisticsOptions,
) -> Result<()> {
    create_parent(path)?;
    let mut file = ParquetAppender::create(path, df.schema(), compression, statistics)?;
    file.append(df)?;
    file.finish()
}

/// Writes a scratch file: one a run writes aside and reads back itself before deleting it (the
/// buckets of `buckets::BucketFiles`), as LZ4 pages without statistics, in row groups of
/// `ROW_GROUP` rows. Numbers, times and booleans are written plain. Polars' writer tries a
/// dictionary on every column, hashing each value, which on the small row groups of bucket
/// files (a 100M night writes every event three times into files of about 10,000 rows) is
/// wasted on them. Text keeps polars' choice: it gives up early on unique ids, and ids repeated
/// in a bucket (customers, sessions) share their bytes when read back from a dictionary (all
/// plain, a bucket read back took 10% more memory). 10M events through such files, in parts
/// of 10,000 rows: 116 s against 127 s.
pub fn write_scratch(df: &DataFrame, path: &Path) -> Result<()> {
    use polars_parquet::write::{self as parquet, CompressionOptions, Encoding};
    use rayon::prelude::*;
    let context = || format!("writing {}", path.display());
    let schema = df.schema().to_arrow(CompatLevel::newest());
    let encodings: Vec<Vec<Encoding>> = schema
        .iter_values()
        .map(|field| {
            use ArrowDataType as T;
            match field.dtype {
                T::Boolean
                | T::Int8
                | T::Int16
                | T::Int32
                | T::Int64
                | T::UInt8
                | T::UInt16
                | T::UInt32
                | T::UInt64
                | T::Float32
                | T::Float64
                | T::Date32
                | T::Date64
                | T::Time32(_)
                | T::Time64(_)
                | T::Timestamp(..)
                | T::Duration(_) => vec![Encoding::Plain],
                // Text, categoricals (dictionaries already) and nested columns as polars
                // writes them.
                _ => parquet::get_dtype_encoding(&field.dtype),
            }
        })
        .collect();
    let options = parquet::WriteOptions {
        statistics: StatisticsOptions::empty(),
        compression: CompressionOptions::Lz4Raw,
        version: parquet::Version::V1,
        data_page_size: None,
    };
    let file = std::fs::File::create(path).ctx(format!("creating {}", path.display()))?;
    let mut writer = parquet::FileWriter::try_new(
        std::io::BufWriter::with_capacity(1 << 20, file),
        schema,
        options,
    )
    .ctx(context())?;
    let fields = writer.parquet_schema().fields().to_vec();
    let mut offset = 0;
    // Row groups of `ROW_GROUP` rows; the loop runs once for a frame of no rows, whose file
    // still has its columns.
    while offset < df.height() || offset == 0 {
        let group = row_group(df.slice(offset as i64, ROW_GROUP)).ctx(context())?;
        offset += ROW_GROUP;
        let Some(batch) = group.iter_chunks(CompatLevel::newest(), false).next() else {
            break;
        };
        // Each column's pages encoded and compressed side by side, then written in order.
        let columns = batch
            .columns()
            .par_iter()
            .zip(&fields)
            .zip(&encodings)
            .map(|((array, field), encodings)| {
                let mut pages = Vec::new();
                for leaf in parquet::array_to_columns(array, field.clone(), options, encodings)? {
                    let leaf: Vec<parquet::CompressedPage> = leaf
                        .map(|page| Ok(parquet::compress(page?, Vec::new(), options.compression)?))
                        .collect::<PolarsResult<_>>()?;
                    pages.push(leaf);
                }
                PolarsResult::Ok(pages)
            })
            .collect::<PolarsResult<Vec<_>>>()
            .ctx(context())?;
        let columns = columns.iter().flatten().map(|pages| {
            Ok(parquet::DynStreamingIterator::new(
                parquet::fallible_streaming_iterator::convert(pages.iter().map(Ok)),
            ))
        });
        writer
            .write(batch.len() as u64, parquet::DynIter::new(columns))
            .ctx(context())?;
    }
    writer.end(None).ctx(context())?;
    use std::io::Write;
    writer.into_inner().flush().ctx(context())
}

/// `group`'s rows as a Parquet row group is written from them: one chunk per column, and a
/// list column sliced out of a larger one cut to its own values (it still holds all of them,
/// which the writer counts when it cuts pages), as those of a group put together from several
/// frames are.
fn row_group(mut group: DataFrame) -> PolarsResult<DataFrame> {
    group.rechunk_mut_par();
    let columns = group
        .columns()
        .iter()
        .map(|c| {
            c.trim_lists_to_normalized_offsets()
                .unwrap_or_else(|| c.clone())
        })
        .collect();
    DataFrame::new(group.height(), columns)
}

/// Hands the memory freed so far back to the system now rather than after the allocator's
/// purge delay (three seconds, see `main.rs`), at the end of each bucket of customers of a
/// night written aside (`buckets`): the mode a night runs in when its events would not fit in
/// memory, where what counts is the peak, and those buckets are where such a night peaks. The
/// memory freed by one bucket otherwise stays resident while the next one allocates its own.
/// 10M events through bucket files of 10,000 rows: peak 1,330 MB against 1,433 MB (ingest's
/// steps 10-17% lower), 120.0 s against 116.2 s. Each thread of polars' pool and of rayon's
/// keeps the pages it emptied in its own heap until it collects them itself, so every one is
/// asked to: 1,076 MB against 1,115 MB, 145.1 s against 146.5 s (one run each).
/// (Purging all freed memory at once, `MIMALLOC_PURGE_DELAY=0`, peaked at 1,010 MB but took
/// 164.6 s.)
/// Ingest's and identity's loops over buckets of event ids do not call it: every bucket
/// there faulted its gigabyte of fresh memory in again, 4 KiB at a time (100M events: ingest
/// took 89 million page faults and 250 s of system time of its 644 s); without the calls its
/// peak is 2.3 to 2.5 GiB instead of 2.15 GiB, still below the history stage's. Ingest
/// calls it once after its loop, before the repeated orders are decided on every bucket's.
pub fn release_freed_memory() {
    // Safety: mi_collect takes no pointer; it frees the calling thread's empty pages and
    // purges the allocator's free segments under the allocator's own locks. Without mimalloc
    // as the global allocator (the library's tests) it collects an empty heap.
    let collect = || unsafe { libmimalloc_sys::mi_collect(true) };
    polars_core::runtime::THREAD_POOL.broadcast(|_| collect());
    rayon::broadcast(|_| collect());
    collect();
}

pub fn create_parent(path: &Path) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).ctx(format!("creating {}", dir.display()))?;
    }
    Ok(())
}

/// Rows in each row group of the Parquet files propel writes (polars' default size), the
/// last group of a file fewer.
pub const ROW_GROUP: usize = 512 * 512;

/// A Parquet file written a frame at a time, in row groups of `ROW_GROUP` rows, each one
/// chunk per column: its bytes depend on its rows only, not on how they were handed in or
/// chunked in memory. A file appended a bucket at a time is the file of all the rows written
/// at once (the sessions of a night written by bucket of customers, or of merged shards, are
/// the bytes one whole run writes).
pub struct ParquetAppender {
    path: std::path::PathBuf,
    writer: polars::io::parquet::write::BatchedWriter<BufferedFile>,
    file: BufferedFile,
    schema: SchemaRef,
    /// Rows not yet written: fewer than a row group.
    pending: Vec<DataFrame>,
    pending_rows: usize,
    groups: usize,
}

/// The file a `ParquetAppender` writes, through a buffer that the appender flushes itself (and
/// so sees the flush fail): polars' writer hands the file each page and page header apart, a
/// system call each, which at 10M events written in 100 buckets was a third of ingest's time.
#[derive(Clone)]
pub struct BufferedFile(std::sync::Arc<std::sync::Mutex<std::io::BufWriter<std::fs::File>>>);

impl std::io::Write for BufferedFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("not poisoned").write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.lock().expect("not poisoned").flush()
    }
}

impl ParquetAppender {
    pub fn create(
        path: &Path,
        schema: &SchemaRef,
        compression: ParquetCompression,
        statistics: StatisticsOptions,
    ) -> Result<ParquetAppender> {
        let file = BufferedFile(std::sync::Arc::new(std::sync::Mutex::new(
            std::io::BufWriter::with_capacity(
                1 << 20,
                std::fs::File::create(path).ctx(format!("creating {}", path.display()))?,
            ),
        )));
        let writer = ParquetWriter::new(file.clone())
            .with_compression(compression)
            .with_statistics(statistics)
            .batched(schema)
            .ctx(format!("writing {}", path.display()))?;
        Ok(ParquetAppender {
            path: path.to_path_buf(),
            writer,
            file,
            schema: schema.clone(),
            pending: Vec::new(),
            pending_rows: 0,
            groups: 0,
        })
    }

    /// A file as a run publishes it (`write_parquet`), in `path`'s directory, created if
    /// need be.
    pub fn published(path: &Path, schema: &SchemaRef) -> Result<ParquetAppender> {
        create_parent(path)?;
        ParquetAppender::create(path, schema, published(), StatisticsOptions::default())
    }

    /// Appends the rows of `part` (of the file's schema).
    pub fn append(&mut self, part: &DataFrame) -> Result<()> {
        let mut offset = 0;
        while offset < part.height() {
            let take = (ROW_GROUP - self.pending_rows).min(part.height() - offset);
            self.pending.push(part.slice(offset as i64, take));
            self.pending_rows += take;
            offset += take;
            if self.pending_rows == ROW_GROUP {
                self.write_pending()?;
            }
        }
        Ok(())
    }

    fn write_pending(&mut self) -> Result<()> {
        let context = || format!("writing {}", self.path.display());
        let mut parts = std::mem::take(&mut self.pending).into_iter();
        let mut group = match parts.next() {
            Some(first) => first,
            None => DataFrame::empty_with_schema(&self.schema),
        };
        for part in parts {
            group.vstack_mut_owned(part).ctx(context())?;
        }
        let group = row_group(group).ctx(context())?;
        self.writer.write_batch(&group).ctx(context())?;
        self.pending_rows = 0;
        self.groups += 1;
        Ok(())
    }

    /// Writes the last rows and the footer; a file of no rows has one empty row group.
    pub fn finish(mut self) -> Result<()> {
        if self.pending_rows > 0 || self.groups == 0 {
            self.write_pending()?;
        }
        self.writer
            .finish()
            .ctx(format!("writing {}", self.path.display()))?;
        use std::io::Write;
        self.file
            .flush()
            .ctx(format!("writing {}", self.path.display()))
    }
}

/// The type the events hold their repeating descriptive columns in (`event::CATEGORICAL`):
/// categoricals of the process's global mapping, so that frames built apart combine.
pub fn categorical_type() -> DataType {
    DataType::from_categories(Categories::global())
}

/// `events` with the repeating descriptive columns (`event::CATEGORICAL`) that it has as
/// categoricals (a column already categorical stays as it is: events kept as text by an
/// earlier version read back the same).
pub fn categorical(mut events: DataFrame) -> Result<DataFrame> {
    let cat = categorical_type();
    for name in crate::schema::event::CATEGORICAL {
        let Ok(column) = events.column(name) else {
            continue;
        };
        if column.dtype() == &DataType::String {
            let c = column.cast(&cat).ctx(name)?;
            events.with_column(c).ctx(name)?;
        }
    }
    Ok(events)
}

/// `df` with the text of its string columns in buffers of their own. Polars filters and
/// selects text by copying each value's 16-byte view, which points into the buffers of the
/// frame it came from: a few rows kept from a bucket of a million (its quarantined rows, its
/// orders) keep all that bucket's text alive (at 100M events, gigabytes over 100 buckets).
pub fn compact_text(df: DataFrame) -> DataFrame {
    let height = df.height();
    let columns = df
        .into_columns()
        .into_iter()
        .map(|c| match c.str() {
            Ok(ca) => StringChunked::from_chunk_iter(
                ca.name().clone(),
                ca.downcast_iter().map(|a| a.clone().gc()),
            )
            .into_column(),
            Err(_) => c,
        })
        .collect();
    DataFrame::new(height, columns).expect("the same columns")
}

/// `df` with its categorical columns as text: what is kept between nights and quarantined
/// stays text, whatever ingest holds in memory.
pub fn text(mut df: DataFrame) -> Result<DataFrame> {
    let names: Vec<PlSmallStr> = df
        .columns()
        .iter()
        .filter(|c| c.dtype().is_categorical())
        .map(|c| c.name().clone())
        .collect();
    for name in names {
        let c = df
            .column(&name)
            .ctx(name.to_string())?
            .cast(&DataType::String)
            .ctx(name.to_string())?;
        df.with_column(c).ctx(name.to_string())?;
    }
    Ok(df)
}

/// Hex SHA-256 of a string.
pub fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// A customer's place on a fixed 64-bit ring: the first 8 bytes (big-endian) of the SHA-256
/// of its id. The training sample and the shards both cut this ring, so a customer's sample
/// and shard never change between nights or machines.
pub fn customer_hash(id: &str) -> u64 {
    let digest = Sha256::digest(id.as_bytes());
    u64::from_be_bytes(
        digest[..8]
            .try_into()
            .expect("a SHA-256 digest has 32 bytes"),
    )
}

/// Microseconds since the Unix epoch at midnight UTC of `date`.
pub fn date_to_micros(date: chrono::NaiveDate) -> i64 {
    date.and_hms_opt(0, 0, 0)
        .expect("midnight exists")
        .and_utc()
        .timestamp_micros()
}

pub const MICROS_PER_DAY: i64 = 86_400_000_000;

/// The UTC timestamp type used for every time column.
pub fn utc() -> DataType {
    DataType::Datetime(TimeUnit::Microseconds, Some(TimeZone::UTC))
}

/// `df` sorted by the columns `by` (ascending, nulls first), gathered column by column (see
/// `map_columns`): sorting wide rows needs memory for a few extra columns, not a second copy.
pub fn sort_by_columns(df: DataFrame, by: &[&str]) -> Result<DataFrame> {
    const ROW: &str = "_sort_row";
    let order = df
        .select(by.iter().copied())
        .ctx("sort keys")?
        .with_row_index(ROW.into(), None)
        .ctx("sort keys")?
        .sort(by.to_vec(), SortMultipleOptions::default())
        .ctx("sorting")?;
    let idx = order
        .column(ROW)
        .ctx("sort order")?
        .idx()
        .ctx("sort order")?
        .clone();
    take_by_columns(df, &idx)
}

/// The rows of `df` at `idx`, in one chunk per column, gathered column by column (see
/// `map_columns`).
pub fn take_by_columns(df: DataFrame, idx: &IdxCa) -> Result<DataFrame> {
    map_columns(df, idx.len(), |column| column.take(idx))
}

/// The rows of `df` where `mask` is true, in one chunk per column, filtered column by column
/// (see `map_columns`).
pub fn filter_by_columns(df: DataFrame, mask: &BooleanChunked) -> Result<DataFrame> {
    let height = mask.sum().unwrap_or(0) as usize;
    if height == df.height() {
        return map_columns(df, height, |column| Ok(column.rechunk()));
    }
    map_columns(df, height, |column| Ok(column.filter(mask)?.rechunk()))
}

/// `f` applied to every column of `df` (a few at once, in parallel); each old column is freed
/// as soon as its new one is made, so reshaping wide rows needs memory for a few extra
/// columns, not a second copy of the frame.
fn map_columns(
    df: DataFrame,
    height: usize,
    f: impl Fn(Column) -> PolarsResult<Column> + Sync,
) -> Result<DataFrame> {
    use rayon::prelude::*;
    let columns: Vec<Column> = df.into_columns();
    let mapped = columns
        .into_par_iter()
        .map(|column| f(column).ctx("reshaping columns"))
        .collect::<Result<Vec<Column>>>()?;
    DataFrame::new(height, mapped).ctx("reshaping columns")
}

/// Debug timings of the steps of `what` (`PROPEL_LOG=propel=debug`): each `lap` logs the
/// milliseconds since the previous one (or the start), and the process's page faults and
/// system time over them (on this project's benchmark VM, first touches of fresh memory are
/// half a run's processor time; see BENCHMARKS.md).
pub struct Laps {
    what: &'static str,
    clock: std::time::Instant,
    usage: Usage,
}

impl Laps {
    pub fn start(what: &'static str) -> Laps {
        Laps {
            what,
            clock: std::time::Instant::now(),
            usage: Usage::now(),
        }
    }

    pub fn lap(&mut self, step: &str) {
        let used = self.usage.lap();
        tracing::debug!(
            what = self.what,
            step,
            ms = self.clock.elapsed().as_millis() as u64,
            faults = used.faults,
            system_ms = used.system_ms,
            rss_mib = rss_mib("VmRSS:"),
            anon_mib = rss_mib("RssAnon:"),
            peak_mib = rss_mib("VmHWM:"),
            "step done"
        );
        self.clock = std::time::Instant::now();
    }
}

/// This process's minor page faults and system processor time so far (zero where
/// `getrusage` is not available).
#[derive(Clone, Copy, Default)]
pub struct Usage {
    pub faults: u64,
    pub system_ms: u64,
}

impl Usage {
    pub fn now() -> Usage {
        #[cfg(unix)]
        {
            // Safety: getrusage writes into the zeroed struct it is given.
            let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
            if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } == 0 {
                return Usage {
                    faults: usage.ru_minflt as u64,
                    system_ms: usage.ru_stime.tv_sec as u64 * 1000
                        + usage.ru_stime.tv_usec as u64 / 1000,
                };
            }
        }
        Usage::default()
    }

    /// What the process used since `self` was read; `self` becomes now.
    pub fn lap(&mut self) -> Usage {
        let now = Usage::now();
        let used = Usage {
            faults: now.faults.saturating_sub(self.faults),
            system_ms: now.system_ms.saturating_sub(self.system_ms),
        };
        *self = now;
        used
    }
}

/// True on each row of `df` whose `column` is one of `values`.
pub fn rows_in(df: &DataFrame, column: &str, values: Series) -> Result<BooleanChunked> {
    let marked = df
        .select([column])
        .ctx(column.to_string())?
        .lazy()
        .select([col(column).is_in(lit(values).implode(false), false)])
        .collect()
        .ctx(column.to_string())?;
    Ok(marked
        .column(column)
        .ctx(column.to_string())?
        .bool()
        .ctx(column.to_string())?
        .rechunk()
        .into_owned())
}

/// (the rows of `df` where `taken` is true, every row of `df` with the others marked
/// `KEEP`): a frame split for `merge_sorted` to put rows worked out from the first back into
/// the second, without copying the rows that stay.
pub fn split_marked(mut df: DataFrame, taken: &BooleanChunked) -> Result<(DataFrame, DataFrame)> {
    let out = df.filter(taken).ctx("splitting rows")?;
    df.with_column((!taken).with_name(KEEP.into()).into_column())
        .ctx("splitting rows")?;
    Ok((out, df))
}

/// A boolean column that marks the rows of a frame `merge_sorted` keeps: a frame split in two
/// keeps its rows in place, marked, instead of copying the ones that stay.
pub const KEEP: &str = "_keep";

/// The rows of `a` (those its `KEEP` column marks, if it has one, which is dropped) and of
/// `b`, each sorted by the columns `by` (ascending, nulls first) and with no key in both, in
/// one frame sorted by `by`: merged, not sorted again, and gathered once, column by column
/// (`take_by_columns`). `b`'s columns are taken in `a`'s order. The keys are compared as
/// polars' sort compares them (its row encoding).
pub fn merge_sorted(a: DataFrame, b: DataFrame, by: &[&str]) -> Result<DataFrame> {
    merged(a, b, by)?.gather()
}

/// `merge_sorted`'s rows, not yet gathered: a frame written once and never read again (a
/// night's sessions) is gathered a row group at a time as it is written
/// (`Merged::write_parquet`),
/// never whole (the sessions of 10M events over 180 days: 600 MB more).
pub struct Merged {
    /// The rows of both frames, one after the other.
    rows: DataFrame,
    /// The rows of `rows` in merged order.
    order: IdxCa,
}

impl Merged {
    pub fn height(&self) -> usize {
        self.order.len()
    }

    pub fn gather(self) -> Result<DataFrame> {
        take_by_columns(self.rows, &self.order)
    }

    /// Writes the rows in merged order as `write_parquet` writes a frame (the same bytes).
    pub fn write_parquet(&self, path: &Path) -> Result<()> {
        let mut file = ParquetAppender::published(path, self.rows.schema())?;
        for offset in (0..self.height()).step_by(ROW_GROUP) {
            let order = self.order.slice(offset as i64, ROW_GROUP);
            file.append(&take_by_columns(self.rows.clone(), &order)?)?;
        }
        file.finish()
    }
}

/// Each row's values of the columns `by` as one string of bytes that sorts as the rows do
/// (ascending, nulls first), in one chunk.
fn sort_keys(df: &DataFrame, by: &[&str]) -> Result<BinaryOffsetChunked> {
    use polars::chunked_array::ops::row_encode::_get_rows_encoded_ca;
    let columns = df.select(by.iter().copied()).ctx("merging sorted rows")?;
    let flags = vec![false; by.len()];
    Ok(
        _get_rows_encoded_ca(PlSmallStr::EMPTY, columns.columns(), &flags, &flags, false)
            .ctx("merging sorted rows")?
            .rechunk()
            .into_owned(),
    )
}

/// Writes the rows of the Parquet file `file` (sorted by `by`) but those `drop` marks, merged
/// with `rows` (sorted by `by`, of the file's columns), into a file `create` makes for their
/// schema: `merge_sorted` of them all, reading `file` `chunk` rows at a time, never whole.
/// Gives the rows written.
pub fn merge_file(
    file: &Path,
    rows: DataFrame,
    by: &[&str],
    drop: &dyn Fn(&DataFrame) -> Result<BooleanChunked>,
    create: impl FnOnce(&SchemaRef) -> Result<ParquetAppender>,
    chunk: usize,
) -> Result<usize> {
    let in_file = parquet_rows(file)?;
    let keys = sort_keys(&rows, by)?;
    let keys = keys.downcast_iter().next().expect("one chunk");
    let mut at = 0;
    let mut create = Some(create);
    let mut out: Option<ParquetAppender> = None;
    let mut written = 0;
    let mut write = |df: DataFrame| -> Result<()> {
        written += df.height();
        let out = match &mut out {
            Some(out) => out,
            None => out.insert(create.take().expect("created once")(df.schema())?),
        };
        out.append(&df)
    };
    let mut laps = Laps::start("merging a sorted file");
    for offset in (0..in_file).step_by(chunk) {
        let part = read_parquet_rows(file, offset, chunk)?;
        let last = sort_keys(&part.tail(Some(1)), by)?;
        let last = last.get(0).expect("a part has rows");
        let part = part.filter(&!&drop(&part)?).ctx("merging sorted rows")?;
        // The rows up to the part's last go in with it: the next part's all come after.
        let now = (at..keys.len())
            .take_while(|&i| keys.value(i) <= last)
            .count();
        write(merged(part, rows.slice(at as i64, now), by)?.gather()?)?;
        at += now;
        laps.lap("part");
    }
    if at < keys.len() || in_file == 0 {
        write(rows.slice(at as i64, keys.len() - at))?;
    }
    out.expect("a part or the rest written").finish()?;
    Ok(written)
}

/// `merge_sorted`, not gathered.
pub fn merged(mut a: DataFrame, b: DataFrame, by: &[&str]) -> Result<Merged> {
    let keep = match a.column(KEEP) {
        Ok(keep) => {
            let keep = keep
                .bool()
                .ctx("merging sorted rows")?
                .rechunk()
                .into_owned();
            a = a.drop(KEEP).ctx("merging sorted rows")?;
            Some(keep)
        }
        Err(_) => None,
    };
    let b = b
        .select(a.get_column_names_owned())
        .ctx("merging sorted rows")?;
    let (ka, kb) = (sort_keys(&a, by)?, sort_keys(&b, by)?);
    let (ka, kb) = (
        ka.downcast_iter().next().expect("one chunk"),
        kb.downcast_iter().next().expect("one chunk"),
    );
    let n = a.height();
    let kept: Vec<usize> = match &keep {
        Some(keep) => keep
            .downcast_iter()
            .next()
            .map(|k| (0..n).filter(|&i| k.value(i)).collect())
            .unwrap_or_default(),
        None => (0..n).collect(),
    };
    let m = kb.len();
    let mut order: Vec<IdxSize> = Vec::with_capacity(kept.len() + m);
    let (mut i, mut j) = (0, 0);
    while i < kept.len() && j < m {
        if kb.value(j) < ka.value(kept[i]) {
            order.push((n + j) as IdxSize);
            j += 1;
        } else {
            order.push(kept[i] as IdxSize);
            i += 1;
        }
    }
    order.extend(kept[i..].iter().map(|&i| i as IdxSize));
    order.extend((j..m).map(|j| (n + j) as IdxSize));
    // Unsorted inputs would be merged out of order without an error: tests check the order.
    debug_assert!(
        order.windows(2).all(|w| {
            let key = |i: IdxSize| match i as usize {
                i if i < n => ka.value(i),
                i => kb.value(i - n),
            };
            key(w[0]) <= key(w[1])
        }),
        "merge_sorted: an input was not sorted by {by:?}"
    );
    let mut both = a;
    both.vstack_mut_owned(b).ctx("merging sorted rows")?;
    Ok(Merged {
        rows: both,
        order: IdxCa::from_vec(PlSmallStr::EMPTY, order),
    })
}

/// Left join that keeps the left frame's row order (outputs must not depend on hash order).
pub fn left_join_ordered() -> JoinArgs {
    let mut args = JoinArgs::new(JoinType::Left);
    args.maintain_order = MaintainOrderJoin::Left;
    args
}

/// The UTC dates of the earliest and latest `tstamp` of a non-empty event frame.
pub fn event_date_range(
    events: &DataFrame,
) -> crate::error::Result<(chrono::NaiveDate, chrono::NaiveDate)> {
    let name = crate::schema::event::TSTAMP;
    let t = events
        .column(name)
        .ctx(name)?
        .as_materialized_series()
        .cast(&DataType::Int64)
        .ctx(name)?;
    let t = t.i64().ctx(name)?;
    let day = |v: Option<i64>| {
        chrono::DateTime::from_timestamp_micros(v.expect("events are not empty"))
            .expect("valid timestamp")
            .date_naive()
    };
    Ok((day(t.min()), day(t.max())))
}

/// Peak resident memory of this process in MiB (Linux `VmHWM`); `None` elsewhere.
pub fn peak_rss_mib() -> Option<u64> {
    rss_mib("VmHWM:")
}

/// A memory figure of this process (`field` of /proc/self/status: `VmRSS:` now, `VmHWM:` the
/// peak), in MiB.
fn rss_mib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024)
}

pub fn read_parquet(path: &Path) -> Result<DataFrame> {
    read_parquet_columns(path, None)
}

/// The rows of the Parquet file `path`, only `columns` of them if they are given.
pub fn read_parquet_columns(path: &Path, columns: Option<&[&str]>) -> Result<DataFrame> {
    let file = std::fs::File::open(path).ctx(format!("opening {}", path.display()))?;
    ParquetReader::new(file)
        .with_columns(columns.map(|columns| columns.iter().map(|c| c.to_string()).collect()))
        .finish()
        .ctx(format!("reading {}", path.display()))
}

/// Rows `offset..offset + len` of the Parquet file `path`: only the row groups that hold them
/// are read.
pub fn read_parquet_rows(path: &Path, offset: usize, len: usize) -> Result<DataFrame> {
    let file = std::fs::File::open(path).ctx(format!("opening {}", path.display()))?;
    ParquetReader::new(file)
        .with_slice(Some((offset, len)))
        .finish()
        .ctx(format!(
            "reading rows {offset}..{} of {}",
            offset.saturating_add(len),
            path.display()
        ))
}

/// The rows of the Parquet file `path` that `keep` keeps of each row group, read a row group at
/// a time and never whole (`filter_row_groups`). (100M events: polars' streaming engine held
/// 1.7 GB reading 15 million sessions for 9% of them.)
pub fn filter_file(
    path: &Path,
    keep: &dyn Fn(&DataFrame) -> Result<BooleanChunked>,
) -> Result<DataFrame> {
    let groups = parquet_rows(path)?.div_ceil(ROW_GROUP);
    filter_row_groups(path, 0..groups, keep)
}

/// The rows that `keep` keeps of the row groups `groups` (ascending, of `ROW_GROUP` rows, as
/// propel writes them) of the Parquet file `path`, in order, their text compacted
/// (`compact_text`): the rows kept of a group would otherwise hold all its text (100M events:
/// the kept sessions a night continues held 1.5 GB to the end of the night).
pub fn filter_row_groups(
    path: &Path,
    groups: impl IntoIterator<Item = usize>,
    keep: &dyn Fn(&DataFrame) -> Result<BooleanChunked>,
) -> Result<DataFrame> {
    let context = || format!("reading {}", path.display());
    let mut kept = read_parquet_rows(path, 0, 0)?;
    for group in groups {
        let part = read_parquet_rows(path, group * ROW_GROUP, ROW_GROUP)?;
        let part = part.filter(&keep(&part)?).ctx(context())?;
        kept.vstack_mut_owned(compact_text(part)).ctx(context())?;
    }
    kept.rechunk_mut();
    Ok(kept)
}

/// A lazy read of the Parquet file `path`.
pub fn scan_parquet(path: &Path) -> Result<LazyFrame> {
    LazyFrame::scan_parquet(
        PlRefPath::new(path.display().to_string().as_str()),
        ScanArgsParquet::default(),
    )
    .ctx(format!("reading {}", path.display()))
}

/// About how much memory the rows of the Parquet file `path` take held: polars' estimate
/// for its first rows, scaled to all of them (the file is not read whole).
pub fn held_size(path: &Path) -> Result<u64> {
    let rows = parquet_rows(path)?;
    if rows == 0 {
        return Ok(0);
    }
    let sample = read_parquet_rows(path, 0, rows.min(1 << 16))?;
    Ok(
        (sample.estimated_size() as u64).saturating_mul(rows as u64)
            / sample.height().max(1) as u64,
    )
}

/// The rows of the Parquet file `path`, from its metadata.
pub fn parquet_rows(path: &Path) -> Result<usize> {
    ParquetReader::new(std::fs::File::open(path).ctx(format!("opening {}", path.display()))?)
        .num_rows()
        .ctx(format!("reading {}", path.display()))
}

/// A new scratch directory under `within`, named `prefix` and a random suffix, removed when
/// dropped.
pub fn scratch_dir(within: &Path, prefix: &str) -> Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(within)
        .ctx(format!(
            "creating a scratch directory in {}",
            within.display()
        ))
}

/// Links `from` to `to`, or copies it where it cannot be linked (another file system).
pub fn link_or_copy(from: &Path, to: &Path) -> Result<()> {
    if std::fs::hard_link(from, to).is_err() {
        std::fs::copy(from, to).ctx(format!("copying {}", from.display()))?;
    }
    Ok(())
}

/// The values of one column of a CSV file, as text (tests and checks).
pub fn read_csv_strings(path: &Path, column: &str) -> Vec<String> {
    CsvReadOptions::default()
        .with_has_header(true)
        .try_into_reader_with_file_path(Some(path.to_path_buf()))
        .and_then(|r| r.finish())
        .and_then(|df| df.column(column).cloned())
        .and_then(|c| c.cast(&DataType::String))
        .map(|c| {
            c.str()
                .expect("string")
                .iter()
                .flatten()
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The values of one column of a CSV file, as text, nulls kept (tests and checks).
pub fn read_csv_optional_strings(path: &Path, column: &str) -> Vec<Option<String>> {
    CsvReadOptions::default()
        .with_has_header(true)
        .with_infer_schema_length(Some(0))
        .try_into_reader_with_file_path(Some(path.to_path_buf()))
        .and_then(|r| r.finish())
        .and_then(|df| df.column(column).cloned())
        .map(|c| {
            c.str()
                .expect("string")
                .iter()
                .map(|v| v.map(str::to_string))
                .collect()
        })
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A fingerprint of a frame's contents: BLAKE3 over its schema, height and every value
/// (columns hashed in parallel). It keys the stage cache: the same rows give the same
/// fingerprint in any process, whether they were just computed or read back from
/// `stage/events.parquet`.
pub fn fingerprint(df: &DataFrame) -> Result<String> {
    let mut fingerprint = Fingerprint::default();
    fingerprint.add(df)?;
    Ok(fingerprint.finish())
}

/// `fingerprint` of a frame given a part at a time: what the parts stacked in the order
/// given have, without holding them (a history written a bucket at a time).
#[derive(Default)]
pub struct Fingerprint {
    /// The schema of the first part.
    schema: Option<String>,
    height: usize,
    columns: Vec<blake3::Hasher>,
}

impl Fingerprint {
    /// Adds the rows of `df` (of the first part's columns).
    pub fn add(&mut self, df: &DataFrame) -> Result<()> {
        use rayon::prelude::*;
        if self.schema.is_none() {
            self.schema = Some(format!("{:?}", df.schema()));
            self.columns = vec![blake3::Hasher::new(); df.width()];
        }
        self.height += df.height();
        self.columns
            .par_iter_mut()
            .zip(df.columns().par_iter())
            .try_for_each(|(hasher, column)| column_digest(hasher, column))
    }

    pub fn finish(self) -> String {
        let mut hasher = blake3::Hasher::new();
        hasher.update(format!("{}\n{}\n", self.schema.unwrap_or_default(), self.height).as_bytes());
        for column in self.columns {
            hasher.update(column.finalize().as_bytes());
        }
        hasher.finalize().to_hex().to_string()
    }
}

/// Feeds one column's values to `hasher`: per value a mark (null or not), then for a value
/// its bytes, preceded by their length for text (numbers have the width of their type).
/// Values are gathered into a buffer and hashed 64 KiB at a time (BLAKE3 hashes such a
/// buffer with SIMD lanes; SHA-256 value by value cost several seconds at 10M events).
fn column_digest(hasher: &mut blake3::Hasher, column: &Column) -> Result<()> {
    const NULL_MARK: u8 = 0;
    const VALUE_MARK: u8 = 1;
    const FLUSH: usize = 1 << 16;
    let s = column.as_materialized_series().to_physical_repr();
    let name = column.name().to_string();
    let mut buf: Vec<u8> = Vec::with_capacity(2 * FLUSH);
    let mut feed = |v: Option<&[u8]>, text: bool| {
        match v {
            Some(bytes) => {
                buf.push(VALUE_MARK);
                if text {
                    buf.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
                }
                buf.extend_from_slice(bytes);
            }
            None => buf.push(NULL_MARK),
        }
        if buf.len() >= FLUSH {
            hasher.update(&buf);
            buf.clear();
        }
    };
    match s.dtype() {
        DataType::Int64 => {
            for v in s.i64().ctx(name)?.iter() {
                feed(
                    v.map(i64::to_le_bytes).as_ref().map(|b| b.as_slice()),
                    false,
                );
            }
        }
        DataType::Float64 => {
            for v in s.f64().ctx(name)?.iter() {
                let bits = v.map(|x| x.to_bits().to_le_bytes());
                feed(bits.as_ref().map(|b| b.as_slice()), false);
            }
        }
        DataType::Boolean => {
            for v in s.bool().ctx(name)?.iter() {
                feed(v.map(|b| [b as u8]).as_ref().map(|b| b.as_slice()), false);
            }
        }
        DataType::String => {
            for v in s.str().ctx(name.clone())?.iter() {
                feed(v.map(str::as_bytes), true);
            }
        }
        _ => {
            let text = s.cast(&DataType::String).ctx(name.clone())?;
            for v in text.str().ctx(name)?.iter() {
                feed(v.map(str::as_bytes), true);
            }
        }
    }
    hasher.update(&buf);
    Ok(())
}

/// The values of a column as text (any type is cast), nulls kept.
pub fn strings(df: &DataFrame, name: &str) -> Result<Vec<Option<String>>> {
    Ok(df
        .column(name)
        .ctx(name.to_string())?
        .cast(&DataType::String)
        .ctx(name.to_string())?
        .str()
        .ctx(name.to_string())?
        .iter()
        .map(|v| v.map(str::to_string))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "not sorted")]
    fn merging_a_frame_that_is_not_sorted_fails_in_tests() {
        let a = df!("k" => [4i64, 1]).unwrap();
        let b = df!("k" => [2i64]).unwrap();
        let _ = merge_sorted(a, b, &["k"]);
    }

    #[test]
    fn merged_rows_written_a_row_group_at_a_time_are_the_bytes_of_the_gathered_frame() {
        // More than two row groups, the second frame's rows spread among the first's.
        let n = 2 * ROW_GROUP + 1000;
        let a = df!(
            "k" => (0..n as i64).map(|i| 2 * i).collect::<Vec<_>>(),
            "s" => (0..n).map(|i| format!("a{}", i % 97)).collect::<Vec<_>>(),
        )
        .unwrap();
        let b = df!(
            "s" => (0..n / 3).map(|i| format!("b{i}")).collect::<Vec<_>>(),
            "k" => (0..(n / 3) as i64).map(|i| 6 * i + 1).collect::<Vec<_>>(),
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (whole, by_groups) = (dir.path().join("whole"), dir.path().join("groups"));
        let merged = merged(a.clone(), b.clone(), &["k"]).unwrap();
        assert_eq!(merged.height(), n + n / 3);
        merged.write_parquet(&by_groups).unwrap();
        write_parquet(&merge_sorted(a, b, &["k"]).unwrap(), &whole).unwrap();
        assert!(std::fs::read(&whole).unwrap() == std::fs::read(&by_groups).unwrap());
    }

    #[test]
    fn rows_split_then_merged_back_are_sorted_as_one_sort_of_them_all() {
        // Sorted by (customer, day); rows of "b" and "d" are taken out, worked on (here:
        // value times ten, a day added) and merged back with a new customer "c".
        let all = df!(
            "customer" => ["a", "a", "b", "b", "d", "e", "e"],
            "day" => [1i64, 3, 1, 2, 5, 1, 9],
            "value" => [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0],
        )
        .unwrap();
        let taken = rows_in(&all, "customer", Series::new("t".into(), ["b", "d"])).unwrap();
        let (out, marked) = split_marked(all.clone(), &taken).unwrap();
        assert_eq!(out.height(), 3);
        assert_eq!(
            marked.height(),
            all.height(),
            "the rows that stay are not copied"
        );
        let worked = df!(
            "customer" => ["b", "b", "b", "c", "d"],
            "day" => [1i64, 2, 7, 4, 5],
            "value" => [30.0, 40.0, 0.5, 0.25, 50.0],
        )
        .unwrap();
        let merged = merge_sorted(marked, worked.clone(), &["customer", "day"]).unwrap();
        let kept = all.filter(&!&taken).unwrap();
        let expected = kept
            .vstack(&worked)
            .unwrap()
            .sort(["customer", "day"], Default::default())
            .unwrap();
        assert!(merged.equals(&expected), "{merged}\n{expected}");
        // Without marks, every row of the first is kept.
        let a = df!("k" => [1i64, 4, 6], "v" => ["x", "y", "z"]).unwrap();
        let b = df!("v" => ["p", "q"], "k" => [0i64, 5]).unwrap();
        let ab = merge_sorted(a, b, &["k"]).unwrap();
        assert_eq!(
            ab.column("k").unwrap().i64().unwrap().to_vec(),
            [Some(0), Some(1), Some(4), Some(5), Some(6)]
        );
        assert_eq!(ab.get_column_names(), ["k", "v"]);
    }

    #[test]
    fn a_scratch_file_reads_back_as_the_frame_written_in_row_groups_of_its_own() {
        use crate::schema::event as ev;
        // More rows than a row group, of every kind of column the buckets hold, nulls in all.
        let n = ROW_GROUP + 1000;
        let some = |i: usize| i % 7 != 3;
        let rows = df!(
            ev::EVENT_ID => (0..n).map(|i| some(i).then(|| format!("e{i}"))).collect::<Vec<_>>(),
            ev::CATEGORY => (0..n).map(|i| some(i).then(|| ["toys", "garden"][i % 2])).collect::<Vec<_>>(),
            ev::ORDER_TOTAL => (0..n).map(|i| some(i).then_some(i as f64 / 4.0)).collect::<Vec<_>>(),
            ev::CONSENT_ADS => (0..n).map(|i| some(i).then_some(i % 3 == 0)).collect::<Vec<_>>(),
            // Like ingest's input of each row: a few small integers.
            "input" => (0..n).map(|i| some(i).then_some((i % 3) as i64)).collect::<Vec<_>>(),
            "position" => (0..n as u64).collect::<Vec<_>>(),
        )
        .unwrap()
        .lazy()
        .with_column(
            (col("position").cast(DataType::Int64) * lit(1_000_000i64))
                .cast(utc())
                .alias(ev::TSTAMP),
        )
        .collect()
        .unwrap();
        let rows = categorical(rows).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bucket.parquet");
        write_scratch(&rows, &path).unwrap();
        let back = read_parquet(&path).unwrap();
        assert_eq!(back.schema(), rows.schema());
        assert!(back.equals_missing(&rows));
        let metadata = |path: &Path| {
            polars::io::parquet::read::ParquetReader::new(std::fs::File::open(path).unwrap())
                .get_metadata()
                .unwrap()
                .clone()
        };
        let scratch = metadata(&path);
        assert_eq!(scratch.row_groups.len(), 2);
        // Numbers are written plain, where polars' writer gives a few repeated integers a
        // dictionary; categoricals keep theirs.
        let dictionary = |metadata: &polars::io::parquet::read::FileMetadata, column: &str| {
            metadata.row_groups[0]
                .parquet_columns()
                .iter()
                .find(|c| c.descriptor().path_in_schema[0] == column)
                .unwrap()
                .dictionary_page_offset()
                .is_some()
        };
        assert!(!dictionary(&scratch, "input"));
        assert!(dictionary(&scratch, ev::CATEGORY));
        let polars_file = dir.path().join("polars.parquet");
        write_state(&rows, &polars_file).unwrap();
        assert!(dictionary(&metadata(&polars_file), "input"));
        // Nested columns, categorical ones too, as polars writes them.
        let nested = DataFrame::new(
            2,
            vec![
                Column::new(
                    "skus".into(),
                    [
                        Series::new("".into(), ["a", "b"]),
                        Series::new("".into(), ["c"]),
                    ],
                ),
                Column::new(
                    "categories".into(),
                    [
                        Series::new("".into(), ["toys"])
                            .cast(&categorical_type())
                            .unwrap(),
                        Series::new("".into(), ["garden", "toys"])
                            .cast(&categorical_type())
                            .unwrap(),
                    ],
                ),
            ],
        )
        .unwrap();
        write_scratch(&nested, &path).unwrap();
        assert!(read_parquet(&path).unwrap().equals_missing(&nested));
        // A frame of no rows is a file of its columns.
        write_scratch(&rows.clear(), &path).unwrap();
        let empty = read_parquet(&path).unwrap();
        assert_eq!((empty.height(), empty.schema()), (0, rows.schema()));
    }

    #[test]
    fn events_kept_as_text_or_as_categoricals_read_back_alike() {
        use crate::schema::event as ev;
        let text = df!(
            ev::EVENT_ID => ["e1", "e2", "e3"],
            ev::CATEGORY => [Some("garden"), None, Some("toys")],
            ev::USERAGENT => ["Mozilla/5.0 (X11)", "curl/8", "Mozilla/5.0 (X11)"],
        )
        .unwrap();
        let held = categorical(text.clone()).unwrap();
        // Only the descriptive columns the frame has change, and only their type.
        assert_eq!(
            held.column(ev::EVENT_ID).unwrap().dtype(),
            &DataType::String
        );
        assert!(held.column(ev::CATEGORY).unwrap().dtype().is_categorical());
        for name in [ev::CATEGORY, ev::USERAGENT] {
            let back = held.column(name).unwrap().cast(&DataType::String).unwrap();
            assert!(back.equals_missing(text.column(name).unwrap()), "{name}");
        }
        // A night kept by an earlier version (text) and one kept now (categoricals) combine
        // once read back through `categorical`, as the kept events of several nights do.
        let dir = tempfile::tempdir().unwrap();
        let (old, new) = (
            dir.path().join("old.parquet"),
            dir.path().join("new.parquet"),
        );
        write_parquet(&text, &old).unwrap();
        write_parquet(&held, &new).unwrap();
        let old = categorical(read_parquet(&old).unwrap()).unwrap();
        let new = categorical(read_parquet(&new).unwrap()).unwrap();
        assert!(new.equals_missing(&held));
        let both = old.vstack(&new).unwrap();
        assert_eq!(both.height(), 6);
        assert_eq!(both.schema(), held.schema());
    }

    #[test]
    fn a_frame_appended_in_parts_writes_the_bytes_of_the_whole_and_has_its_fingerprint() {
        let n = 2 * ROW_GROUP + 1000;
        let whole = df!(
            "id" => (0..n as i64).collect::<Vec<_>>(),
            "pages" => (0..n)
                .map(|i| Series::new("".into(), vec![format!("/p{}", i % 7); i % 5]))
                .collect::<Vec<_>>(),
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let one = dir.path().join("one.parquet");
        write_parquet(&whole, &one).unwrap();
        // Parts that cut row groups anywhere, an empty one among them.
        let cuts = [0, 7, 7, ROW_GROUP - 3, ROW_GROUP + 5, 2 * ROW_GROUP, n];
        let parts = dir.path().join("parts.parquet");
        let mut file = ParquetAppender::create(
            &parts,
            whole.schema(),
            published(),
            StatisticsOptions::default(),
        )
        .unwrap();
        let mut fingerprint = Fingerprint::default();
        for pair in cuts.windows(2) {
            let part = whole.slice(pair[0] as i64, pair[1] - pair[0]);
            file.append(&part).unwrap();
            // (Fingerprints take no list columns.)
            fingerprint.add(&part.select(["id"]).unwrap()).unwrap();
        }
        file.finish().unwrap();
        assert!(std::fs::read(&one).unwrap() == std::fs::read(&parts).unwrap());
        assert_eq!(
            fingerprint.finish(),
            super::fingerprint(&whole.select(["id"]).unwrap()).unwrap()
        );
        let read = read_parquet(&parts).unwrap();
        assert!(read.equals_missing(&whole));
    }

    #[test]
    fn a_frame_writes_the_same_bytes_however_it_is_chunked() {
        let part = |from: i64| {
            let n = 300_000;
            df!(
                "id" => (from..from + n).collect::<Vec<_>>(),
                "pages" => (from..from + n)
                    .map(|i| Series::new("".into(), vec![format!("/p{}", i % 7); (i % 5) as usize]))
                    .collect::<Vec<_>>(),
            )
            .unwrap()
        };
        let mut two = part(0).vstack(&part(300_000)).unwrap();
        assert_eq!(two.first_col_n_chunks(), 2);
        let mut one = two.clone();
        one.rechunk_mut();
        let dir = tempfile::tempdir().unwrap();
        let bytes = |df: &DataFrame, name: &str| {
            let path = dir.path().join(name);
            write_parquet(df, &path).unwrap();
            std::fs::read(path).unwrap()
        };
        assert_eq!(
            bytes(&mut two, "two.parquet"),
            bytes(&mut one, "one.parquet")
        );
    }
}
