//! Ingest: find the event files, check each file's schema, normalise every layout into the
//! canonical event (`schema::event`), quarantine rows that cannot be used (with a reason),
//! and deduplicate by `event_id` as Snowplow does (earliest `collector_tstamp` wins, ties
//! broken by file and row order). Every row read is counted as used, duplicate, quarantined
//! or after the as-of date, and the counts add up.

use std::path::{Path, PathBuf};

use polars::prelude::*;

use crate::error::{Context, InputError, Result};
use crate::schema::{EventType, event as ev, output, snowplow as sp};
use crate::util::utc;

/// Row counts of the ingest stage. `read = used + duplicates + quarantined + after_as_of`.
#[derive(Debug, Clone, Default, serde::Serialize, PartialEq, Eq)]
pub struct IngestCounts {
    pub files: usize,
    pub read: usize,
    pub used: usize,
    pub duplicates: usize,
    pub quarantined: usize,
    /// Events at or after the as-of date: outside this run, not lost.
    pub after_as_of: usize,
}

/// The result of ingest.
pub struct Ingested {
    /// Canonical events, deduplicated, before the as-of date.
    pub events: DataFrame,
    /// Rows that could not be used, with `quarantine_reason` and `source_file`.
    pub quarantine: DataFrame,
    pub counts: IngestCounts,
    /// The as-of date of the run: as given, or the day after the newest event.
    pub as_of: chrono::NaiveDate,
}

/// Lists the Parquet files under a local directory (or the file itself), sorted, skipping
/// hidden and `_`-prefixed entries as Hive-style writers do.
pub fn list_files(location: &str) -> Result<Vec<PathBuf>> {
    let root = PathBuf::from(location.strip_prefix("file://").unwrap_or(location));
    if root.is_file() {
        return Ok(vec![root]);
    }
    if !root.is_dir() {
        return Err(InputError::Unreadable {
            location: location.to_string(),
            source: format!("no such directory or file: {}", root.display()).into(),
        }
        .into());
    }
    let mut files = Vec::new();
    let mut stack = vec![root];
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|e| InputError::Unreadable {
            location: dir.display().to_string(),
            source: Box::new(e),
        })?;
        for entry in entries {
            let entry = entry.ctx(format!("listing {}", dir.display()))?;
            let name = entry.file_name().to_string_lossy().to_string();
            if name.starts_with('.') || name.starts_with('_') {
                continue;
            }
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if name.ends_with(".parquet") {
                files.push(path);
            }
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(InputError::NoFiles {
            location: location.to_string(),
        }
        .into());
    }
    Ok(files)
}

/// Reads the file's schema and checks the mandatory columns.
fn file_schema(path: &Path) -> Result<Schema> {
    let file = path.display().to_string();
    let mut lf = LazyFrame::scan_parquet(PlRefPath::new(file.as_str()), ScanArgsParquet::default())
        .and_then(|mut lf| lf.collect_schema().map(|_| lf))
        .map_err(|e| InputError::Unreadable {
            location: file.clone(),
            source: Box::new(e),
        })?;
    let schema = lf
        .collect_schema()
        .ctx(format!("reading schema of {file}"))?;
    let schema = (*schema).clone();
    for column in sp::MANDATORY {
        if schema.get(column).is_none() {
            return Err(InputError::MissingColumn {
                file,
                column: column.into(),
                expected: if column == sp::EVENT_ID {
                    "a string event id".into()
                } else {
                    "a UTC timestamp".into()
                },
            }
            .into());
        }
    }
    if schema.get(sp::EVENT).is_none() && schema.get(sp::EVENT_NAME).is_none() {
        return Err(InputError::MissingColumn {
            file,
            column: format!("{} or {}", sp::EVENT, sp::EVENT_NAME),
            expected: "the event type (e.g. page_view, transaction)".into(),
        }
        .into());
    }
    let check = |column: &str, ok: fn(&DataType) -> bool, expected: &str| -> Result<()> {
        match schema.get(column) {
            Some(dt) if !ok(dt) => Err(InputError::WrongType {
                file: file.clone(),
                column: column.into(),
                expected: expected.into(),
                found: dt.to_string(),
            }
            .into()),
            _ => Ok(()),
        }
    };
    let is_ts = |dt: &DataType| matches!(dt, DataType::Datetime(_, _));
    let is_str = |dt: &DataType| matches!(dt, DataType::String);
    let is_num = |dt: &DataType| dt.is_primitive_numeric() || dt.is_decimal();
    check(sp::EVENT_ID, is_str, "string")?;
    for c in [
        sp::COLLECTOR_TSTAMP,
        sp::DERIVED_TSTAMP,
        sp::DVCE_CREATED_TSTAMP,
    ] {
        check(c, is_ts, "timestamp")?;
    }
    for c in [
        sp::EVENT,
        sp::EVENT_NAME,
        sp::USER_ID,
        sp::DOMAIN_USERID,
        sp::DOMAIN_SESSIONID,
    ] {
        check(c, is_str, "string")?;
    }
    for c in [
        sp::TR_TOTAL,
        sp::TR_TAX,
        sp::TR_SHIPPING,
        sp::TI_PRICE,
        sp::TI_QUANTITY,
    ] {
        check(c, is_num, "a number (decimal, integer or float)")?;
    }
    Ok(schema)
}

/// Builds the expressions that read one Lake Loader file into canonical columns.
/// Absent optional columns and struct fields read as null.
struct Reader<'a> {
    schema: &'a Schema,
}

impl Reader<'_> {
    fn has(&self, name: &str) -> bool {
        self.schema.get(name).is_some()
    }

    fn typed(&self, name: &str, dt: DataType) -> Expr {
        if self.has(name) {
            col(name).cast(dt)
        } else {
            lit(NULL).cast(dt)
        }
    }

    fn string(&self, name: &str) -> Expr {
        self.typed(name, DataType::String)
    }

    fn float(&self, name: &str) -> Expr {
        self.typed(name, DataType::Float64)
    }

    fn struct_field(&self, column: &str, field: &str) -> Option<Expr> {
        match self.schema.get(column)? {
            DataType::Struct(fields) if fields.iter().any(|f| f.name() == field) => {
                Some(col(column).struct_().field_by_name(field))
            }
            _ => None,
        }
    }

    /// A field of a self-describing event (struct column).
    fn unstruct(&self, column: &str, field: &str, dt: DataType) -> Expr {
        self.struct_field(column, field)
            .map(|e| e.cast(dt.clone()))
            .unwrap_or_else(|| lit(NULL).cast(dt))
    }

    /// A field of the first entity of a context column (list of structs).
    fn context(&self, column: &str, field: &str, dt: DataType) -> Expr {
        match self.schema.get(column) {
            Some(DataType::List(inner)) => match inner.as_ref() {
                DataType::Struct(fields) if fields.iter().any(|f| f.name() == field) => col(column)
                    .list()
                    .first()
                    .struct_()
                    .field_by_name(field)
                    .cast(dt),
                _ => lit(NULL).cast(dt),
            },
            _ => lit(NULL).cast(dt),
        }
    }

    fn is_set(&self, column: &str) -> Expr {
        if self.has(column) {
            col(column).is_not_null()
        } else {
            lit(false)
        }
    }

    fn canonical(&self, file: &str) -> Vec<Expr> {
        let name = if self.has(sp::EVENT_NAME) {
            coalesce(&[col(sp::EVENT_NAME), self.string(sp::EVENT)])
        } else {
            col(sp::EVENT)
        };
        let is = |n: &str| name.clone().eq(lit(n));
        // The event name decides; a self-describing struct decides only where the name
        // does not (e.g. a writer that left event_name empty).
        let event_type = when(is("page_view"))
            .then(lit(EventType::PageView.name()))
            .when(is("add_to_cart"))
            .then(lit(EventType::CartAdd.name()))
            .when(is("remove_from_cart"))
            .then(lit(EventType::CartRemove.name()))
            .when(is("site_search"))
            .then(lit(EventType::Search.name()))
            .when(is("transaction"))
            .then(lit(EventType::Order.name()))
            .when(is("transaction_item"))
            .then(lit(EventType::OrderLine.name()))
            .when(self.is_set(sp::ADD_TO_CART))
            .then(lit(EventType::CartAdd.name()))
            .when(self.is_set(sp::REMOVE_FROM_CART))
            .then(lit(EventType::CartRemove.name()))
            .when(self.is_set(sp::SITE_SEARCH))
            .then(lit(EventType::Search.name()))
            .otherwise(lit(EventType::Other.name()));
        let f64t = DataType::Float64;
        let st = DataType::String;
        let cart = |field: &str, dt: DataType| {
            coalesce(&[
                self.unstruct(sp::ADD_TO_CART, field, dt.clone()),
                self.unstruct(sp::REMOVE_FROM_CART, field, dt),
            ])
        };
        let quantity = coalesce(&[self.float(sp::TI_QUANTITY), cart("quantity", f64t.clone())]);
        let unit_price = coalesce(&[self.float(sp::TI_PRICE), cart("unit_price", f64t.clone())]);
        let page_path = if self.has(sp::PAGE_URLPATH) {
            col(sp::PAGE_URLPATH).cast(st.clone())
        } else {
            // https://host/path?query -> /path
            self.string(sp::PAGE_URL)
                .str()
                .extract(lit(r"^[a-zA-Z]+://[^/?#]*(/[^?#]*)?"), 1)
                .fill_null(lit("/"))
        };
        let search_terms = self
            .struct_field(sp::SITE_SEARCH, "terms")
            .map(|e| {
                e.cast(DataType::List(Box::new(DataType::String)))
                    .list()
                    .join(lit(" "), true)
            })
            .unwrap_or_else(|| lit(NULL).cast(DataType::String));
        vec![
            self.string(sp::EVENT_ID).alias(ev::EVENT_ID),
            coalesce(&[
                self.typed(sp::DERIVED_TSTAMP, utc()),
                col(sp::COLLECTOR_TSTAMP).cast(utc()),
            ])
            .alias(ev::TSTAMP),
            col(sp::COLLECTOR_TSTAMP)
                .cast(utc())
                .alias(ev::COLLECTOR_TSTAMP),
            event_type.alias(ev::EVENT_TYPE),
            lit("web").alias(ev::CHANNEL),
            self.string(sp::USER_ID)
                .str()
                .strip_chars(lit(NULL))
                .alias(ev::USER_ID),
            self.string(sp::DOMAIN_USERID).alias(ev::DOMAIN_USERID),
            self.string(sp::NETWORK_USERID).alias(ev::NETWORK_USERID),
            self.string(sp::DOMAIN_SESSIONID)
                .alias(ev::DOMAIN_SESSIONID),
            self.context(sp::CLIENT_SESSION, "session_id", st.clone())
                .alias(ev::CLIENT_SESSIONID),
            self.context(sp::CLIENT_SESSION, "user_id", st.clone())
                .alias(ev::CLIENT_USERID),
            lit(NULL).cast(st.clone()).alias(ev::EMAIL),
            lit(NULL).cast(st.clone()).alias(ev::LOYALTY_ID),
            self.string(sp::PAGE_URL).alias(ev::PAGE_URL),
            page_path.alias(ev::PAGE_PATH),
            self.string(sp::PAGE_REFERRER).alias(ev::PAGE_REFERRER),
            self.string(sp::REFR_MEDIUM).alias(ev::REFR_MEDIUM),
            self.string(sp::REFR_SOURCE).alias(ev::REFR_SOURCE),
            self.string(sp::MKT_MEDIUM).alias(ev::MKT_MEDIUM),
            self.string(sp::MKT_SOURCE).alias(ev::MKT_SOURCE),
            self.string(sp::MKT_CAMPAIGN).alias(ev::MKT_CAMPAIGN),
            self.string(sp::USERAGENT).alias(ev::USERAGENT),
            coalesce(&[
                self.string(sp::TR_ORDERID),
                self.string(sp::TI_ORDERID),
                self.context(sp::ECOMMERCE_TRANSACTION, "transaction_id", st.clone()),
            ])
            .alias(ev::ORDER_ID),
            coalesce(&[
                self.float(sp::TR_TOTAL),
                self.context(sp::ECOMMERCE_TRANSACTION, "revenue", f64t.clone()),
            ])
            .alias(ev::ORDER_TOTAL),
            coalesce(&[
                self.float(sp::TR_TAX),
                self.context(sp::ECOMMERCE_TRANSACTION, "tax", f64t.clone()),
            ])
            .alias(ev::ORDER_TAX),
            coalesce(&[
                self.float(sp::TR_SHIPPING),
                self.context(sp::ECOMMERCE_TRANSACTION, "shipping", f64t.clone()),
            ])
            .alias(ev::ORDER_SHIPPING),
            self.context(sp::ECOMMERCE_TRANSACTION, "discount_amount", f64t.clone())
                .alias(ev::ORDER_DISCOUNT),
            self.context(sp::ECOMMERCE_TRANSACTION, "discount_code", st.clone())
                .alias(ev::COUPON_CODE),
            coalesce(&[self.string(sp::TI_SKU), cart("sku", st.clone())]).alias(ev::SKU),
            coalesce(&[self.string(sp::TI_NAME), cart("name", st.clone())]).alias(ev::PRODUCT_NAME),
            coalesce(&[self.string(sp::TI_CATEGORY), cart("category", st.clone())])
                .alias(ev::CATEGORY),
            quantity.clone().alias(ev::QUANTITY),
            unit_price.clone().alias(ev::UNIT_PRICE),
            (quantity * unit_price).alias(ev::LINE_VALUE),
            search_terms.alias(ev::SEARCH_TERMS),
            self.unstruct(sp::SITE_SEARCH, "total_results", f64t.clone())
                .alias(ev::SEARCH_TOTAL_RESULTS),
            self.unstruct(sp::SITE_SEARCH, "page_results", f64t)
                .alias(ev::SEARCH_PAGE_RESULTS),
            lit(file.to_string()).alias(SOURCE_FILE),
        ]
    }
}

/// Column naming the file a row came from (quarantine only).
pub const SOURCE_FILE: &str = "source_file";
const ORDER: &str = "_order";

/// The reason a row is quarantined, or null when it is usable. First failing rule wins.
fn quarantine_reason() -> Expr {
    let has_identifier = col(ev::DOMAIN_USERID)
        .is_not_null()
        .or(col(ev::USER_ID)
            .is_not_null()
            .and(col(ev::USER_ID).neq(lit(""))))
        .or(col(ev::NETWORK_USERID).is_not_null())
        .or(col(ev::CLIENT_USERID).is_not_null())
        .or(col(ev::EMAIL).is_not_null())
        .or(col(ev::LOYALTY_ID).is_not_null());
    when(
        col(ev::EVENT_ID)
            .is_null()
            .or(col(ev::EVENT_ID).eq(lit(""))),
    )
    .then(lit("missing event_id"))
    .when(col(ev::COLLECTOR_TSTAMP).is_null())
    .then(lit("missing collector_tstamp"))
    .when(has_identifier.not())
    .then(lit(
        "no identifier (user_id, domain_userid, network_userid, client session user, e-mail, loyalty id all null)",
    ))
    .when(col(ev::QUANTITY).lt(lit(0.0)))
    .then(lit("negative quantity"))
    .when(
        col(ev::UNIT_PRICE)
            .is_nan()
            .or(col(ev::ORDER_TOTAL).is_nan()),
    )
    .then(lit("NaN price or total"))
    .otherwise(lit(NULL).cast(DataType::String))
}

/// Reads and normalises the events at `location`; see the module documentation.
pub fn ingest(location: &str, as_of: Option<chrono::NaiveDate>) -> Result<Ingested> {
    let files = list_files(location)?;
    let mut frames = Vec::with_capacity(files.len());
    for (i, path) in files.iter().enumerate() {
        let schema = file_schema(path)?;
        let name = path.display().to_string();
        // File and row position: the deterministic tie-break between duplicates.
        let lf = LazyFrame::scan_parquet(PlRefPath::new(name.as_str()), ScanArgsParquet::default())
            .ctx(format!("scanning {name}"))?
            .with_row_index(ORDER, None)
            .select(
                Reader { schema: &schema }
                    .canonical(&name)
                    .into_iter()
                    .chain([
                        (lit(i as u64) * lit(1u64 << 40) + col(ORDER).cast(DataType::UInt64))
                            .alias(ORDER),
                    ])
                    .collect::<Vec<_>>(),
            );
        frames.push(lf);
    }
    let all = concat(frames, UnionArgs::default())
        .ctx("combining input files")?
        .with_column(quarantine_reason().alias(output::QUARANTINE_REASON))
        .collect()
        .map_err(|e| InputError::Unreadable {
            location: location.to_string(),
            source: Box::new(e),
        })?;
    let read = all.height();
    let quarantine = all
        .clone()
        .lazy()
        .filter(col(output::QUARANTINE_REASON).is_not_null())
        .sort([ORDER], Default::default())
        .drop(cols([ORDER]))
        .collect()
        .ctx("quarantine")?;
    let valid = all
        .lazy()
        .filter(col(output::QUARANTINE_REASON).is_null())
        .drop(cols([output::QUARANTINE_REASON]));
    let deduped = valid
        .sort_by_exprs(
            [col(ev::EVENT_ID), col(ev::COLLECTOR_TSTAMP), col(ORDER)],
            SortMultipleOptions::default().with_maintain_order(true),
        )
        .unique_stable(Some(cols([ev::EVENT_ID])), UniqueKeepStrategy::First)
        .sort([ORDER], Default::default())
        .drop(cols([ORDER, SOURCE_FILE]))
        .collect()
        .ctx("deduplicating events")?;
    let valid_rows = read - quarantine.height();
    let duplicates = valid_rows - deduped.height();
    if deduped.height() == 0 {
        return Err(InputError::Empty {
            location: location.to_string(),
            read,
            quarantined: quarantine.height(),
        }
        .into());
    }
    let as_of = match as_of {
        Some(d) => d,
        None => {
            let max = deduped
                .column(ev::TSTAMP)
                .ctx("tstamp")?
                .as_materialized_series()
                .cast(&DataType::Int64)
                .ctx("tstamp")?
                .i64()
                .ctx("tstamp")?
                .max()
                .expect("non-empty");
            chrono::DateTime::from_timestamp_micros(max)
                .expect("valid timestamp")
                .date_naive()
                .succ_opt()
                .expect("date in range")
        }
    };
    let cutoff = crate::util::date_to_micros(as_of);
    let events = deduped
        .lazy()
        .filter(col(ev::TSTAMP).cast(DataType::Int64).lt(lit(cutoff)))
        .collect()
        .ctx("as-of filter")?;
    let counts = IngestCounts {
        files: files.len(),
        read,
        used: events.height(),
        duplicates,
        quarantined: quarantine.height(),
        after_as_of: valid_rows - duplicates - events.height(),
    };
    debug_assert_eq!(
        counts.read,
        counts.used + counts.duplicates + counts.quarantined + counts.after_as_of
    );
    if events.height() == 0 {
        return Err(InputError::AsOf {
            as_of: as_of.to_string(),
            message: format!(
                "no events before this date ({} events read are all at or after it)",
                counts.read
            ),
        }
        .into());
    }
    Ok(Ingested {
        events,
        quarantine,
        counts,
        as_of,
    })
}

/// Checks the schema of every file at `location` (no data read); returns the file count.
pub fn check_schemas(location: &str) -> Result<usize> {
    let files = list_files(location)?;
    for f in &files {
        file_schema(f)?;
    }
    Ok(files.len())
}
