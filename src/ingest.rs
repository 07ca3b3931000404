//! Ingest: find the event files, check each file's schema, normalise every layout into the
//! canonical event (`schema::event`), quarantine rows that cannot be used (with a reason),
//! and deduplicate by `event_id` as Snowplow does (earliest `collector_tstamp` wins, ties
//! broken by file and row order). Every row read is counted as used, duplicate, quarantined
//! or after the as-of date, and the counts add up.
//!
//! The files are decoded once; which rows are used is decided on their key columns, and the
//! wide columns are then filtered one at a time, so that the rows are never held twice.
//!
//! Rows too many to hold (`Memory`) are written aside as they are read, in buckets cut by a
//! hash of the event id, so that every copy of an event is in one bucket: each bucket's
//! quarantine and copies are decided on its own, the session cap from the tracker sessions'
//! starts of every bucket (gathered as the files are read), and the repeated orders and the
//! as-of date on the order events of every bucket; each bucket's used events are then written
//! aside again (`Ingested::written`). Either way the same rows are used.

use std::path::PathBuf;

use polars::prelude::*;

use crate::config::{InputDef, Layout, Quality};
use crate::error::{Context, InputError, Result};
use crate::schema::{EventType, event as ev, output, snowplow as sp};
use crate::util::utc;

/// Row counts of the ingest stage. `read = used + duplicates + quarantined + after_as_of`.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct IngestCounts {
    pub files: usize,
    /// Hive partitions (`load_tstamp_date=`) loaded after the run needs: not read.
    pub files_pruned: usize,
    pub read: usize,
    /// Usable events read by an earlier night after its as-of date, brought into this one
    /// (`read + carried = used + duplicates + quarantined + after_as_of`).
    #[serde(default)]
    pub carried: usize,
    pub used: usize,
    pub duplicates: usize,
    pub quarantined: usize,
    /// Events at or after the as-of date: outside this run, not lost.
    pub after_as_of: usize,
}

/// The result of ingest.
pub struct Ingested {
    /// Canonical events, deduplicated, before the as-of date: in memory, or when the rows
    /// were written aside (`Memory`), those rows with which of them are used (`Aside`).
    pub events: Events,
    /// Rows that could not be used, with `quarantine_reason`, `source_file` and the input's
    /// number (`_input`, not published).
    pub quarantine: DataFrame,
    pub counts: IngestCounts,
    /// The as-of date of the run: as given, or the day after the newest event.
    pub as_of: chrono::NaiveDate,
    /// `event_id`, `collector_tstamp` (µs), `_input` of the events this night kept (the
    /// copies that won), to add to the keys of the nights before.
    pub new_keys: Stored,
    /// What the next night starts from.
    pub state: IngestState,
}

/// Object-store URL schemes, read through polars' cloud support (object_store). Credentials
/// come from the usual environment variables (AWS_*, GOOGLE_*, AZURE_*), never from files
/// propel writes, and are never logged.
const CLOUD_SCHEMES: [&str; 8] = [
    "s3://", "s3a://", "gs://", "gcs://", "az://", "azure://", "abfs://", "abfss://",
];

fn is_cloud(location: &str) -> bool {
    CLOUD_SCHEMES.iter().any(|s| location.starts_with(s))
}

fn is_event_file(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower.ends_with(".parquet") || lower.ends_with(".csv")
}

/// Lists the event files (Parquet, or CSV for the flat layout) under a local directory or an
/// object-store prefix (or the file itself), sorted, skipping hidden and `_`-prefixed
/// entries as Hive-style writers do.
pub fn list_files(location: &str) -> Result<Vec<String>> {
    let files = if is_cloud(location) {
        list_cloud(location)?
    } else {
        list_local(location)?
    };
    if files.is_empty() {
        return Err(InputError::NoFiles {
            location: location.to_string(),
        }
        .into());
    }
    Ok(files)
}

fn list_cloud(location: &str) -> Result<Vec<String>> {
    let base = location.trim_end_matches('/');
    if is_event_file(base) {
        return Ok(vec![base.to_string()]);
    }
    let unreadable = |e: Box<dyn std::error::Error + Send + Sync>| InputError::Unreadable {
        location: location.to_string(),
        source: e,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| unreadable(Box::new(e)))?;
    let mut files = Vec::new();
    for ext in ["parquet", "csv"] {
        let pattern = format!("{base}/**/*.{ext}");
        let found = runtime
            .block_on(polars::prelude::cloud::glob(
                PlRefPath::new(pattern.as_str()),
                None,
            ))
            .map_err(|e| unreadable(Box::new(e)))?;
        files.extend(found.into_iter().filter(|f| {
            f.strip_prefix(base)
                .unwrap_or(f)
                .split('/')
                .all(|part| !part.starts_with('.') && !part.starts_with('_'))
        }));
    }
    files.sort();
    files.dedup();
    Ok(files)
}

fn list_local(location: &str) -> Result<Vec<String>> {
    let root = PathBuf::from(location.strip_prefix("file://").unwrap_or(location));
    if root.is_file() {
        return Ok(vec![root.display().to_string()]);
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
            } else if is_event_file(&name) {
                files.push(path.display().to_string());
            }
        }
    }
    files.sort();
    Ok(files)
}

/// The load date of a file under a Hive partition `load_tstamp_date=YYYY-MM-DD/`.
fn partition_date(file: &str) -> Option<chrono::NaiveDate> {
    file.split('/')
        .find_map(|part| part.strip_prefix(&format!("{}=", sp::PARTITION_KEY)))
        .and_then(|d| chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
}

fn is_csv(path: &str) -> bool {
    path.to_ascii_lowercase().ends_with(".csv")
}

/// Scans one file lazily: Parquet as is; CSV (flat layout) with every column as text, so
/// that unparseable values are quarantined with a reason rather than failing the run.
fn scan(path: &str) -> Result<LazyFrame> {
    let name = path.to_string();
    let lf = if is_csv(path) {
        LazyCsvReader::new(PlRefPath::new(name.as_str()))
            .with_has_header(true)
            .with_infer_schema_length(Some(0))
            .finish()
    } else {
        LazyFrame::scan_parquet(PlRefPath::new(name.as_str()), ScanArgsParquet::default())
    };
    lf.map_err(|e| {
        InputError::Unreadable {
            location: name,
            source: Box::new(e),
        }
        .into()
    })
}

/// Reads the file's schema and checks the mandatory columns of its layout.
fn file_schema(path: &str, layout: Layout) -> Result<Schema> {
    let file = path.to_string();
    let schema = scan(path)?
        .collect_schema()
        .map_err(|e| InputError::Unreadable {
            location: file.clone(),
            source: Box::new(e),
        })?;
    let schema = (*schema).clone();
    let mandatory: &[(&str, &str)] = match layout {
        Layout::LakeLoader => &[
            (sp::EVENT_ID, "a string event id"),
            (sp::COLLECTOR_TSTAMP, "a UTC timestamp"),
        ],
        Layout::Flat => &[
            (ev::EVENT_ID, "a string event id"),
            (ev::TSTAMP, "a UTC timestamp (or RFC 3339 text in CSV)"),
            (
                ev::EVENT_TYPE,
                "an event type such as order, order_line, page_view",
            ),
        ],
    };
    for (column, expected) in mandatory {
        if schema.get(column).is_none() {
            return Err(InputError::MissingColumn {
                file,
                column: column.to_string(),
                expected: expected.to_string(),
            }
            .into());
        }
    }
    if layout == Layout::LakeLoader
        && schema.get(sp::EVENT).is_none()
        && schema.get(sp::EVENT_NAME).is_none()
    {
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
    let is_ts_or_text = |dt: &DataType| matches!(dt, DataType::Datetime(_, _) | DataType::String);
    let is_str = |dt: &DataType| matches!(dt, DataType::String);
    let is_num = |dt: &DataType| dt.is_primitive_numeric() || dt.is_decimal();
    let is_num_or_text = |dt: &DataType| {
        dt.is_primitive_numeric() || dt.is_decimal() || matches!(dt, DataType::String)
    };
    match layout {
        Layout::LakeLoader => {
            check(sp::EVENT_ID, is_str, "string")?;
            for c in [
                sp::COLLECTOR_TSTAMP,
                sp::DERIVED_TSTAMP,
                sp::DVCE_CREATED_TSTAMP,
                sp::DVCE_SENT_TSTAMP,
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
        }
        Layout::Flat => {
            check(ev::EVENT_ID, is_str, "string")?;
            check(ev::TSTAMP, is_ts_or_text, "timestamp")?;
            for (c, t) in canonical_columns() {
                if t == DataType::Float64 {
                    check(c, is_num_or_text, "a number")?;
                }
            }
        }
    }
    Ok(schema)
}

/// The canonical columns, in order, with their types.
pub fn canonical_columns() -> Vec<(&'static str, DataType)> {
    let (s, f, t) = (DataType::String, DataType::Float64, crate::util::utc());
    vec![
        (ev::EVENT_ID, s.clone()),
        (ev::TSTAMP, t.clone()),
        (ev::COLLECTOR_TSTAMP, t),
        (ev::EVENT_TYPE, s.clone()),
        (ev::CHANNEL, s.clone()),
        (ev::USER_ID, s.clone()),
        (ev::DOMAIN_USERID, s.clone()),
        (ev::NETWORK_USERID, s.clone()),
        (ev::DOMAIN_SESSIONID, s.clone()),
        (ev::CLIENT_SESSIONID, s.clone()),
        (ev::CLIENT_USERID, s.clone()),
        (ev::EMAIL, s.clone()),
        (ev::LOYALTY_ID, s.clone()),
        (ev::PHONE, s.clone()),
        (ev::CONSENT_ADS, DataType::Boolean),
        (ev::CONSENT_EMAIL, DataType::Boolean),
        (ev::PAGE_URL, s.clone()),
        (ev::PAGE_PATH, s.clone()),
        (ev::PAGE_REFERRER, s.clone()),
        (ev::REFR_MEDIUM, s.clone()),
        (ev::REFR_SOURCE, s.clone()),
        (ev::MKT_MEDIUM, s.clone()),
        (ev::MKT_SOURCE, s.clone()),
        (ev::MKT_CAMPAIGN, s.clone()),
        (ev::USERAGENT, s.clone()),
        (ev::ORDER_ID, s.clone()),
        (ev::ORDER_TOTAL, f.clone()),
        (ev::ORDER_TAX, f.clone()),
        (ev::ORDER_SHIPPING, f.clone()),
        (ev::ORDER_DISCOUNT, f.clone()),
        (ev::COUPON_CODE, s.clone()),
        (ev::SKU, s.clone()),
        (ev::PRODUCT_NAME, s.clone()),
        (ev::CATEGORY, s.clone()),
        (ev::QUANTITY, f.clone()),
        (ev::UNIT_PRICE, f.clone()),
        (ev::LINE_VALUE, f.clone()),
        (ev::SEARCH_TERMS, s),
        (ev::SEARCH_TOTAL_RESULTS, f.clone()),
        (ev::SEARCH_PAGE_RESULTS, f.clone()),
        (ev::PAGE_VIEW_ID, DataType::String),
        (ev::CART_VALUE, f.clone()),
        (ev::CHECKOUT_STEP, f),
    ]
}

/// Column with the reason a value could not be parsed (flat CSV), else null.
const PARSE_ERROR: &str = "_parse_error";

/// Reads one flat-layout file: columns by their canonical names, absent ones null.
/// Text values (CSV) are parsed; a value that does not parse is a quarantine reason.
fn flat_exprs(schema: &Schema) -> Vec<Expr> {
    let mut exprs = Vec::new();
    let mut errors = Vec::new();
    let mut tstamp = col(ev::TSTAMP);
    // Expressions built so far, by column: derived columns reuse the parsed values.
    let mut made: std::collections::HashMap<&str, Expr> = std::collections::HashMap::new();
    for (name, dt) in canonical_columns() {
        let present = schema.get(name).cloned();
        let e = match (name, &present) {
            (ev::COLLECTOR_TSTAMP, None) => tstamp.clone(),
            (ev::CHANNEL, None) => lit("offline"),
            (ev::LINE_VALUE, None) => made[ev::QUANTITY].clone() * made[ev::UNIT_PRICE].clone(),
            (_, None) => lit(NULL).cast(dt.clone()),
            (ev::TSTAMP | ev::COLLECTOR_TSTAMP, Some(DataType::String)) => {
                // RFC 3339 with an offset ("Z" or "+01:00"); naive times are refused.
                let parsed = col(name)
                    .str()
                    .replace(lit("Z$"), lit("+00:00"), false)
                    .str()
                    .to_datetime(
                        Some(TimeUnit::Microseconds),
                        Some(TimeZone::UTC),
                        StrptimeOptions {
                            format: Some("%Y-%m-%dT%H:%M:%S%.f%:z".into()),
                            strict: false,
                            exact: true,
                            cache: true,
                        },
                        lit("raise"),
                    );
                errors.push(
                    when(col(name).is_not_null().and(parsed.clone().is_null()))
                        .then(lit(format!("{name}: expected an RFC 3339 time with offset (e.g. 2026-11-21T10:00:00Z)")))
                        .otherwise(lit(NULL).cast(DataType::String)),
                );
                if name == ev::TSTAMP {
                    tstamp = parsed.clone();
                }
                parsed
            }
            (ev::TSTAMP, Some(_)) => {
                tstamp = col(name).cast(dt.clone());
                tstamp.clone()
            }
            (_, Some(DataType::String)) if dt == DataType::Float64 => {
                let parsed = col(name)
                    .str()
                    .strip_chars(lit(NULL))
                    .cast(DataType::Float64);
                errors.push(
                    when(col(name).is_not_null().and(parsed.clone().is_null()))
                        .then(lit(format!("{name}: expected a number")))
                        .otherwise(lit(NULL).cast(DataType::String)),
                );
                parsed
            }
            (_, Some(DataType::String)) if dt == DataType::Boolean => {
                let raw = col(name).str().strip_chars(lit(NULL)).str().to_lowercase();
                let parsed = when(raw.clone().is_in(
                    lit(Series::new("t".into(), ["true", "1", "yes", "y"])).implode(false),
                    false,
                ))
                .then(lit(true))
                .when(raw.clone().is_in(
                    lit(Series::new("f".into(), ["false", "0", "no", "n"])).implode(false),
                    false,
                ))
                .then(lit(false))
                .otherwise(lit(NULL).cast(DataType::Boolean));
                errors.push(
                    when(
                        raw.clone()
                            .is_not_null()
                            .and(raw.neq(lit("")))
                            .and(parsed.clone().is_null()),
                    )
                    .then(lit(format!("{name}: expected true or false")))
                    .otherwise(lit(NULL).cast(DataType::String)),
                );
                parsed
            }
            (ev::EVENT_TYPE, Some(_)) => {
                let raw = col(name)
                    .cast(DataType::String)
                    .str()
                    .strip_chars(lit(NULL))
                    .str()
                    .to_lowercase();
                let names = EventType::ALL
                    .map(|t| (t.name(), t))
                    .into_iter()
                    .chain(EventType::ALIASES);
                let mapped = names.collect::<Vec<_>>().into_iter().rev().fold(
                    lit(NULL).cast(DataType::String),
                    |rest, (n, t)| {
                        when(raw.clone().eq(lit(n)))
                            .then(lit(t.name()))
                            .otherwise(rest)
                    },
                );
                errors.push(
                    when(mapped.clone().is_null())
                        .then(lit(format!(
                            "event_type: expected one of {}",
                            EventType::all_names().collect::<Vec<_>>().join(", ")
                        )))
                        .otherwise(lit(NULL).cast(DataType::String)),
                );
                mapped
            }
            (_, Some(_)) => col(name).cast(dt.clone()),
        };
        made.insert(name, e.clone());
        exprs.push(e.alias(name));
    }
    let error = if errors.is_empty() {
        lit(NULL).cast(DataType::String)
    } else {
        coalesce(&errors)
    };
    exprs.push(error.alias(PARSE_ERROR));
    exprs.push(lit(NULL).cast(utc()).alias(DVCE_CREATED));
    exprs.push(lit(NULL).cast(utc()).alias(DVCE_SENT));
    exprs
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

    /// Consent to a purpose from the consent events: a banner choice (`consent_preferences`:
    /// allow all, deny all, or the scopes allowed, matched against `scopes`) or a
    /// withdrawal of everything (`consent_withdrawn` with `all`).
    fn consent(&self, purpose_scopes: &[&str]) -> Expr {
        let kind = self.unstruct(sp::CONSENT_PREFERENCES, "event_type", DataType::String);
        let scopes = self
            .struct_field(sp::CONSENT_PREFERENCES, "consent_scopes")
            .map(|e| {
                e.cast(DataType::List(Box::new(DataType::String)))
                    .list()
                    .eval(col("").str().to_lowercase().is_in(
                        lit(Series::new("s".into(), purpose_scopes)).implode(false),
                        false,
                    ))
                    .list()
                    .sum()
                    .gt(lit(0))
            })
            .unwrap_or_else(|| lit(false));
        let is = |k: &[&str]| {
            kind.clone()
                .is_in(lit(Series::new("k".into(), k)).implode(false), false)
        };
        when(
            self.unstruct(sp::CONSENT_WITHDRAWN, "all", DataType::Boolean)
                .eq(lit(true)),
        )
        .then(lit(false))
        .when(is(&["allow_all"]))
        .then(lit(true))
        .when(is(&["deny_all", "withdrawn", "expired"]))
        .then(lit(false))
        .when(is(&["allow_selected", "implicit_consent"]))
        .then(scopes.fill_null(lit(false)))
        .otherwise(lit(NULL).cast(DataType::Boolean))
    }

    fn is_set(&self, column: &str) -> Expr {
        if self.has(column) {
            col(column).is_not_null()
        } else {
            lit(false)
        }
    }

    fn canonical(&self) -> Vec<Expr> {
        let name = if self.has(sp::EVENT_NAME) {
            coalesce(&[col(sp::EVENT_NAME), self.string(sp::EVENT)])
        } else {
            col(sp::EVENT)
        };
        let is = |n: &str| name.clone().eq(lit(n));
        // The event name decides; a self-describing struct decides only where the name
        // does not (e.g. a writer that left event_name empty).
        // The ecommerce plugin's one event, snowplow_ecommerce_action, says what happened in
        // its `type`; only cart and transaction actions become cart and order events.
        let action = self.unstruct(sp::ECOMMERCE_ACTION, "type", DataType::String);
        let ecommerce = |t: &str| is("snowplow_ecommerce_action").and(action.clone().eq(lit(t)));
        let event_type = when(is("page_view"))
            .then(lit(EventType::PageView.name()))
            .when(ecommerce("add_to_cart"))
            .then(lit(EventType::CartAdd.name()))
            .when(ecommerce("remove_from_cart"))
            .then(lit(EventType::CartRemove.name()))
            .when(ecommerce("transaction"))
            .then(lit(EventType::Order.name()))
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
        // The first product entity of an ecommerce action (its quantity defaults to one).
        let product = |field: &str, dt: DataType| self.context(sp::ECOMMERCE_PRODUCT, field, dt);
        let product_quantity = when(product("id", st.clone()).is_not_null())
            .then(coalesce(&[product("quantity", f64t.clone()), lit(1.0)]))
            .otherwise(lit(NULL).cast(f64t.clone()));
        let quantity = coalesce(&[
            self.float(sp::TI_QUANTITY),
            cart("quantity", f64t.clone()),
            product_quantity,
        ]);
        let unit_price = coalesce(&[
            self.float(sp::TI_PRICE),
            cart("unit_price", f64t.clone()),
            product("price", f64t.clone()),
        ]);
        // A transaction entity describes the order only on an order event (the ecommerce
        // plugin also attaches it to other actions).
        let is_order = event_type.clone().eq(lit(EventType::Order.name()));
        let transaction = |field: &str, dt: DataType| {
            when(is_order.clone())
                .then(self.context(sp::ECOMMERCE_TRANSACTION, field, dt.clone()))
                .otherwise(lit(NULL).cast(dt))
        };
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
            self.context(sp::ECOMMERCE_USER, "email", st.clone())
                .alias(ev::EMAIL),
            lit(NULL).cast(st.clone()).alias(ev::LOYALTY_ID),
            lit(NULL).cast(st.clone()).alias(ev::PHONE),
            self.consent(&sp::AD_CONSENT_SCOPES).alias(ev::CONSENT_ADS),
            self.consent(&sp::EMAIL_CONSENT_SCOPES)
                .alias(ev::CONSENT_EMAIL),
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
                transaction("transaction_id", st.clone()),
            ])
            .alias(ev::ORDER_ID),
            coalesce(&[
                self.float(sp::TR_TOTAL),
                transaction("revenue", f64t.clone()),
            ])
            .alias(ev::ORDER_TOTAL),
            coalesce(&[self.float(sp::TR_TAX), transaction("tax", f64t.clone())])
                .alias(ev::ORDER_TAX),
            coalesce(&[
                self.float(sp::TR_SHIPPING),
                transaction("shipping", f64t.clone()),
            ])
            .alias(ev::ORDER_SHIPPING),
            transaction("discount_amount", f64t.clone()).alias(ev::ORDER_DISCOUNT),
            transaction("discount_code", st.clone()).alias(ev::COUPON_CODE),
            coalesce(&[
                self.string(sp::TI_SKU),
                cart("sku", st.clone()),
                product("id", st.clone()),
            ])
            .alias(ev::SKU),
            coalesce(&[
                self.string(sp::TI_NAME),
                cart("name", st.clone()),
                product("name", st.clone()),
            ])
            .alias(ev::PRODUCT_NAME),
            coalesce(&[
                self.string(sp::TI_CATEGORY),
                cart("category", st.clone()),
                product("category", st.clone()),
            ])
            .alias(ev::CATEGORY),
            quantity.clone().alias(ev::QUANTITY),
            unit_price.clone().alias(ev::UNIT_PRICE),
            (quantity * unit_price).alias(ev::LINE_VALUE),
            search_terms.alias(ev::SEARCH_TERMS),
            self.unstruct(sp::SITE_SEARCH, "total_results", f64t.clone())
                .alias(ev::SEARCH_TOTAL_RESULTS),
            self.unstruct(sp::SITE_SEARCH, "page_results", f64t.clone())
                .alias(ev::SEARCH_PAGE_RESULTS),
            self.context(sp::WEB_PAGE, "id", st.clone())
                .alias(ev::PAGE_VIEW_ID),
            self.context(sp::ECOMMERCE_CART, "total_value", f64t.clone())
                .alias(ev::CART_VALUE),
            self.context(sp::ECOMMERCE_CHECKOUT_STEP, "step", f64t)
                .alias(ev::CHECKOUT_STEP),
            lit(NULL).cast(DataType::String).alias(PARSE_ERROR),
            self.typed(sp::DVCE_CREATED_TSTAMP, utc())
                .alias(DVCE_CREATED),
            self.typed(sp::DVCE_SENT_TSTAMP, utc()).alias(DVCE_SENT),
        ]
    }
}

/// Column naming the file a row came from (quarantine only).
pub const SOURCE_FILE: &str = "source_file";
/// A row's input position (`_order`) is its file's place in the files read times this,
/// plus its row in the file.
const FILE_POSITION: u64 = 1 << 40;
const ORDER: &str = "_order";

/// True on the row that comes first in its `group` by `by` then input position (the
/// deterministic tie-break), over the few candidate rows it is applied to.
fn first_in(group: &[&str], by: &str) -> Expr {
    col(ORDER)
        .eq(col(ORDER)
            .sort_by([col(by), col(ORDER)], SortMultipleOptions::default())
            .first()
            .over(group.iter().map(|c| col(*c)).collect::<Vec<_>>())
            .expect("a window over columns"))
        .fill_null(lit(true))
}

/// The input positions (`_order`) of the later copies of an event id in `rows` (the
/// earliest `collector_tstamp` wins, then input order). Worked out on the key columns of the
/// ids whose `hash` another id shares (`same_hash`), never by a window over every row.
fn later_copies(rows: LazyFrame, hash: fn(&str) -> u64) -> Result<Series> {
    let keys = rows
        .select([col(ORDER), col(ev::EVENT_ID), col(ev::COLLECTOR_TSTAMP)])
        .collect()
        .ctx("finding duplicate events")?;
    let candidates = same_hash(
        keys.column(ev::EVENT_ID)
            .ctx("event ids")?
            .str()
            .ctx("event ids")?,
        hash,
    );
    let copies = keys
        .filter(&candidates)
        .ctx("finding duplicate events")?
        .lazy()
        .filter(first_in(&[ev::EVENT_ID], ev::COLLECTOR_TSTAMP).not());
    positions(copies, "finding duplicate events")
}

/// A 64-bit hash of an event id: for `same_hash` (any hash gives the same copies, as they
/// are decided on the ids; one that spreads the ids well keeps the candidates few), and kept
/// beside the event keys (`KEY_HASH`), so it must stay the same from night to night: XXH3-64,
/// which is specified.
fn id_hash(id: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(id.as_bytes())
}

/// The column of the event keys (`Ingested::new_keys`) with each event id's `id_hash`: the
/// next nights find the copies of their events among the kept keys by these, a number a row,
/// instead of reading every kept id.
pub const KEY_HASH: &str = "_id_hash";

/// `id_hash` of every id in `ids` (null for a null id), as the `KEY_HASH` column.
fn id_hashes(ids: &StringChunked) -> Column {
    let hashes: UInt64Chunked = ids.iter().map(|id| id.map(id_hash)).collect();
    hashes.with_name(KEY_HASH.into()).into_column()
}

/// The kept event keys in `files` whose `KEY_HASH` is among `hashes`, in file and row order.
/// A file at a time, and of each only the hashes first: the row groups that hold a match are
/// then read whole. (100M events: 112 files of a million keys. Scanned as one, they were
/// decoded whole before the filter, 8 GB more at the peak; filtered by polars a file at a
/// time, every kept event id was still decoded, 34-57 s of a 131 s night.)
fn kept_keys_of(files: &[std::path::PathBuf], hashes: &Series) -> Result<DataFrame> {
    let Some(first) = files.first() else {
        return DataFrame::new(
            0,
            vec![
                Column::new_empty(ev::EVENT_ID.into(), &DataType::String),
                Column::new_empty(ev::COLLECTOR_TSTAMP.into(), &DataType::Int64),
                Column::new_empty(INPUT.into(), &DataType::UInt32),
                Column::new_empty(KEY_HASH.into(), &DataType::UInt64),
            ],
        )
        .ctx("event keys");
    };
    let context =
        |file: &std::path::Path| format!("reading the kept event keys in {}", file.display());
    let matching = |keys: &DataFrame| crate::util::rows_in(keys, KEY_HASH, hashes.clone());
    let mut kept = crate::util::read_parquet_rows(first, 0, 0)?;
    for file in files {
        const ROW: &str = "_row";
        let rows = crate::util::scan_parquet(file)?
            .with_row_index(ROW, None)
            .select([col(ROW), col(KEY_HASH)])
            .filter(col(KEY_HASH).is_in(lit(hashes.clone()).implode(false), false))
            .collect()
            .ctx(context(file))?;
        let groups: std::collections::BTreeSet<usize> = rows
            .column(ROW)
            .ctx(context(file))?
            .idx()
            .ctx(context(file))?
            .into_no_null_iter()
            .map(|row| row as usize / crate::util::ROW_GROUP)
            .collect();
        let part = crate::util::filter_row_groups(file, groups, &matching)?;
        kept.vstack_mut_owned(part).ctx(context(file))?;
    }
    Ok(kept)
}

/// The columns of a tracker session's key: the XXH3-128 hash of its `domain_sessionid`, high
/// and low halves. The session times ingest holds for every session of the night (14 million
/// at 100M events) and keeps between nights are keyed by these 16 bytes instead of the id's
/// text (36 bytes and a 16-byte view); two ids of one night sharing a key is a chance of
/// about 1 in 10^24.
const SESSION_KEY: [&str; 2] = ["_session_hi", "_session_lo"];

fn session_key() -> [Expr; 2] {
    SESSION_KEY.map(col)
}

/// The `SESSION_KEY` of a `domain_sessionid`: the high and low halves of its XXH3-128 hash.
fn session_key_of(id: &str) -> [u64; 2] {
    let hash = xxhash_rust::xxh3::xxh3_128(id.as_bytes());
    [(hash >> 64) as u64, hash as u64]
}

/// `df` with the `SESSION_KEY` of its `domain_sessionid` (null where it is null).
fn with_session_key(mut df: DataFrame) -> Result<DataFrame> {
    let ids = df
        .column(ev::DOMAIN_SESSIONID)
        .ctx("session ids")?
        .str()
        .ctx("session ids")?;
    let keys: Vec<Option<[u64; 2]>> = ids.iter().map(|id| id.map(session_key_of)).collect();
    let half = |name: &str, i: usize| -> Column {
        keys.iter()
            .map(|k| k.map(|k| k[i]))
            .collect::<UInt64Chunked>()
            .with_name(name.into())
            .into_column()
    };
    let hi = half(SESSION_KEY[0], 0);
    let lo = half(SESSION_KEY[1], 1);
    df.with_column(hi).ctx("session keys")?;
    df.with_column(lo).ctx("session keys")?;
    Ok(df)
}

/// True on each id whose `hash` another id of `ids` has: every repeated id, and the rare id
/// that only collides with another (a null id is never one: the quarantine takes those).
/// Sorting the hashes finds them several times faster than grouping the ids (a 10M run: 6 s
/// grouping the strings on the streaming engine, 4 s grouping the hashes in memory, where
/// every one of ten million groups is a list of rows).
fn same_hash(ids: &StringChunked, hash: fn(&str) -> u64) -> BooleanChunked {
    use rayon::prelude::*;
    let hashes: Vec<Option<u64>> = ids
        .downcast_iter()
        .collect::<Vec<_>>()
        .into_par_iter()
        .flat_map_iter(|array| array.iter().map(|id| id.map(hash)))
        .collect();
    let mut sorted: Vec<u64> = hashes.iter().flatten().copied().collect();
    sorted.par_sort_unstable();
    let mut repeated: Vec<u64> = sorted
        .windows(2)
        .filter(|w| w[0] == w[1])
        .map(|w| w[0])
        .collect();
    drop(sorted);
    repeated.dedup();
    hashes
        .par_iter()
        .map(|h| h.is_some_and(|h| repeated.binary_search(&h).is_ok()))
        .collect()
}

/// The `_order` column of `rows`, collected.
fn positions(rows: LazyFrame, what: &str) -> Result<Series> {
    let df = rows.select([col(ORDER)]).collect().ctx(what.to_string())?;
    Ok(df
        .column(ORDER)
        .ctx(what.to_string())?
        .as_materialized_series()
        .clone())
}

/// True on the rows whose input position is not in `positions`.
fn not_at(positions: Series) -> Expr {
    col(ORDER).is_in(lit(positions).implode(false), false).not()
}

/// Rows of `rows` whose input position is not in `positions`.
fn without(rows: LazyFrame, positions: Series) -> LazyFrame {
    if positions.is_empty() {
        return rows;
    }
    rows.filter(not_at(positions))
}

/// Device timestamps (Lake Loader only), for the late-event rule; not kept after ingest.
const DVCE_CREATED: &str = "_dvce_created";
const DVCE_SENT: &str = "_dvce_sent";

/// The quarantine rules in the order they are tried, each as (the row fails it, the reason
/// it gives); the first failing rule wins. Snowplow's session cap comes last
/// (`long_sessions`), since it looks only at rows that passed these.
fn quarantine_rules(quality: &Quality) -> Vec<(Expr, Expr)> {
    let day = crate::util::MICROS_PER_DAY;
    let micros = |c: &str| col(c).cast(DataType::Int64);
    // Snowplow's late rule: sent by the device more than N days after it was created (with
    // missing device times read as the collector's, as dbt-snowplow-unified does).
    let late = coalesce(&[micros(DVCE_SENT), micros(ev::COLLECTOR_TSTAMP)]).gt(coalesce(&[
        micros(DVCE_CREATED),
        micros(ev::COLLECTOR_TSTAMP),
    ]) + lit(quality
        .days_late_allowed
        * day));
    let bot = match &quality.bot_pattern {
        Some(pattern) => col(ev::USERAGENT)
            .str()
            .contains(lit(format!("(?i){pattern}")), false)
            .fill_null(lit(false)),
        None => lit(false),
    };
    let has_identifier = col(ev::DOMAIN_USERID)
        .is_not_null()
        .or(col(ev::USER_ID)
            .is_not_null()
            .and(col(ev::USER_ID).neq(lit(""))))
        .or(col(ev::NETWORK_USERID).is_not_null())
        .or(col(ev::CLIENT_USERID).is_not_null())
        .or(col(ev::EMAIL).is_not_null())
        .or(col(ev::LOYALTY_ID).is_not_null());
    vec![
        (col(PARSE_ERROR).is_not_null(), col(PARSE_ERROR)),
        (
            col(ev::EVENT_ID)
                .is_null()
                .or(col(ev::EVENT_ID).eq(lit(""))),
            lit("missing event_id"),
        ),
        (
            col(ev::COLLECTOR_TSTAMP).is_null(),
            lit("missing collector_tstamp"),
        ),
        (
            has_identifier.not(),
            lit(
                "no identifier (user_id, domain_userid, network_userid, client session user, e-mail, loyalty id all null)",
            ),
        ),
        (col(ev::QUANTITY).lt(lit(0.0)), lit("negative quantity")),
        (
            col(ev::UNIT_PRICE)
                .is_nan()
                .or(col(ev::ORDER_TOTAL).is_nan()),
            lit("NaN price or total"),
        ),
        (
            late,
            lit(format!(
                "late: sent by the device more than {} days after it was created",
                quality.days_late_allowed
            )),
        ),
        (bot, lit("bot or spider user agent")),
        (
            lit(false),
            lit(format!(
                "session longer than {} days (events after its first {} days)",
                quality.max_session_days, quality.max_session_days
            )),
        ),
    ]
}

/// Column `_reason_code`: the position (from 1) of the first quarantine rule a row fails, or
/// null when it is usable. A number, not the reason's text: the text is written only for the
/// quarantined rows (`reason_text`).
const REASON_CODE: &str = "_reason_code";

fn reason_code(rules: &[(Expr, Expr)]) -> Expr {
    first_match(
        rules
            .iter()
            .enumerate()
            .map(|(i, (fails, _))| (fails.clone(), lit(i as u32 + 1))),
    )
    .otherwise(lit(NULL).cast(DataType::UInt32))
}

fn reason_text(rules: &[(Expr, Expr)]) -> Expr {
    first_match(
        rules
            .iter()
            .enumerate()
            .map(|(i, (_, text))| (col(REASON_CODE).eq(lit(i as u32 + 1)), text.clone())),
    )
    .otherwise(lit(NULL).cast(DataType::String))
}

/// `when(c1).then(v1).when(c2).then(v2)...` of at least two (condition, value) pairs.
fn first_match(mut pairs: impl Iterator<Item = (Expr, Expr)>) -> ChainedThen {
    let (c1, v1) = pairs.next().expect("two rules or more");
    let (c2, v2) = pairs.next().expect("two rules or more");
    pairs.fold(when(c1).then(v1).when(c2).then(v2), |chain, (c, v)| {
        chain.when(c).then(v)
    })
}

/// Snowplow's session cap: a tracker session that lasts longer than N days (from its first
/// usable event, on the collector clock) is quarantined from that point on, as
/// dbt-snowplow-utils does; its first N days of events stay. The rule is the last of `rules`.
/// The frame carries `_start`, the session's first usable collector time over this night's
/// rows and the nights before's.
fn long_sessions(quality: &Quality, rules: &[(Expr, Expr)]) -> Expr {
    let code = col(REASON_CODE);
    let collector = col(ev::COLLECTOR_TSTAMP).cast(DataType::Int64);
    when(
        code.clone()
            .is_null()
            .and(
                col(ev::DOMAIN_SESSIONID).is_not_null().and(
                    collector
                        .gt(col(START)
                            + lit(quality.max_session_days * crate::util::MICROS_PER_DAY)),
                ),
            ),
    )
    .then(lit(rules.len() as u32))
    .otherwise(code)
}

/// What ingest keeps between nights, so that a night can read only the files loaded since
/// the night before and still decide every row as one run over all the files would: which
/// files were read, and the key columns of the rows the cross-row rules compare new rows with
/// (the kept copy of every event id, each tracker session's first and last usable collector
/// time, every kept order), and the usable events after that night's as-of date, which a
/// later night uses.
pub struct IngestState {
    /// Per input, the files read, in listing order.
    pub files: Vec<Vec<String>>,
    /// `SESSION_KEY` (the `domain_sessionid`'s hash), `_start`, `_last` (µs): usable rows'
    /// collector times, for the session cap.
    pub sessions: SessionStarts,
    /// `domain_sessionid`, `order_id`, `_t` (event time, µs), `_input`: the kept orders.
    pub orders: DataFrame,
    /// Usable canonical events at or after the as-of date (with `_input`).
    pub deferred: DataFrame,
}

/// Each tracker session's first and last usable collector times (`IngestState::sessions`),
/// sorted by `SESSION_KEY`. A night reads the night before's only for the sessions its files
/// have, and writes its own from them without holding them (100M events over 180 days: 15
/// million sessions, 1 GB held, twice at ingest's peak).
pub enum SessionStarts {
    Held(DataFrame),
    /// Kept in a file (the night before's).
    Kept(std::path::PathBuf),
    /// Those kept in `file` but the sessions of `now`, with `now` (sorted): a night's, from the
    /// night before's and its own.
    Merged {
        file: std::path::PathBuf,
        now: DataFrame,
    },
}

impl SessionStarts {
    /// The starts held, if they are.
    pub fn held(&self) -> Option<&DataFrame> {
        match self {
            SessionStarts::Held(df) => Some(df),
            _ => None,
        }
    }

    /// The starts of the sessions in `keys` (a `SESSION_KEY` frame).
    fn of(&self, sessions: &DataFrame) -> Result<DataFrame> {
        let keys = session_keys(sessions)?;
        let of_keys = |kept: &DataFrame| in_keys(kept, &keys);
        match self {
            SessionStarts::Held(df) => df.filter(&of_keys(df)?).ctx("session starts"),
            // A row group at a time (by the streaming engine, 450 MB at 100M events).
            SessionStarts::Kept(file) => crate::util::filter_file(file, &of_keys),
            SessionStarts::Merged { .. } => unreachable!("a night's starts are only written"),
        }
    }

    /// These starts with those of `now` (sorted) in place of theirs.
    fn with(&self, now: DataFrame) -> Result<SessionStarts> {
        match self {
            SessionStarts::Held(df) => {
                let others = df.clone().lazy().join(
                    now.clone().lazy().select(session_key()),
                    session_key(),
                    session_key(),
                    JoinArgs::new(JoinType::Anti),
                );
                Ok(SessionStarts::Held(
                    concat([others, now.lazy()], UnionArgs::default())
                        .ctx("session starts")?
                        .sort(SESSION_KEY, Default::default())
                        .collect()
                        .ctx("session starts")?,
                ))
            }
            SessionStarts::Kept(file) => Ok(SessionStarts::Merged {
                file: file.clone(),
                now,
            }),
            SessionStarts::Merged { .. } => unreachable!("a night's starts are only written"),
        }
    }

    /// Writes them to `path`, as the state is written (`util::write_state`).
    pub fn write(&self, path: &std::path::Path) -> Result<()> {
        match self {
            SessionStarts::Held(df) => crate::util::write_state(df, path),
            SessionStarts::Kept(file) => crate::util::create_parent(path).and_then(|()| {
                std::fs::copy(file, path)
                    .map(drop)
                    .ctx(format!("copying {}", file.display()))
            }),
            SessionStarts::Merged { file, now } => {
                let replaced = session_keys(now)?;
                let replaced = |part: &DataFrame| in_keys(part, &replaced);
                crate::util::merge_file(
                    file,
                    now.clone(),
                    &SESSION_KEY,
                    &replaced,
                    |schema| {
                        crate::util::create_parent(path)?;
                        crate::util::ParquetAppender::create(
                            path,
                            schema,
                            ParquetCompression::Lz4Raw,
                            StatisticsOptions::empty(),
                        )
                    },
                    crate::util::ROW_GROUP,
                )
                .map(drop)
            }
        }
    }
}

/// The `SESSION_KEY` columns of `sessions`.
fn key_columns(sessions: &DataFrame) -> Result<(&UInt64Chunked, &UInt64Chunked)> {
    let column = |c: &str| -> Result<&UInt64Chunked> {
        sessions
            .column(c)
            .ctx("session keys")?
            .u64()
            .ctx("session keys")
    };
    Ok((column(SESSION_KEY[0])?, column(SESSION_KEY[1])?))
}

/// The `SESSION_KEY`s of `sessions`.
fn session_keys(sessions: &DataFrame) -> Result<polars_utils::aliases::PlHashSet<[u64; 2]>> {
    let (hi, lo) = key_columns(sessions)?;
    Ok(hi
        .iter()
        .zip(lo.iter())
        .map(|(hi, lo)| [hi.unwrap_or(0), lo.unwrap_or(0)])
        .collect())
}

/// Whether each of `sessions` is among `keys`.
fn in_keys(
    sessions: &DataFrame,
    keys: &polars_utils::aliases::PlHashSet<[u64; 2]>,
) -> Result<BooleanChunked> {
    let (hi, lo) = key_columns(sessions)?;
    Ok(hi
        .iter()
        .zip(lo.iter())
        .map(|(hi, lo)| Some(keys.contains(&[hi.unwrap_or(0), lo.unwrap_or(0)])))
        .collect())
}

/// Columns of the ingest state.
pub const INPUT: &str = "_input";
const START: &str = "_start";
/// Whether a row passed every rule (`Decided::valid`).
const VALID: &str = "_valid";
const LAST: &str = "_last";
const AT: &str = "_t";

/// Why a night cannot be ingested from the night before's state alone; the run then reads
/// everything (see `pipeline`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FullRefresh(pub String);

/// The night before's ingest state, and the kept copies of every event id so far (`event_id`,
/// `collector_tstamp` in µs, `_input`, `KEY_HASH`), read lazily, a scan per file.
pub struct Previous<'a> {
    pub state: &'a IngestState,
    /// The files of the kept event keys (`event_id`, `collector_tstamp`, `INPUT`, `KEY_HASH`).
    pub keys: &'a [std::path::PathBuf],
}

/// Reads and normalises the events at `location`; see the module documentation.
pub fn ingest(
    inputs: &[InputDef],
    as_of: Option<chrono::NaiveDate>,
    quality: &Quality,
) -> Result<Ingested> {
    ingest_with(inputs, as_of, quality, &Memory::held())
}

/// `ingest`, holding at most what `memory` allows.
pub fn ingest_with(
    inputs: &[InputDef],
    as_of: Option<chrono::NaiveDate>,
    quality: &Quality,
    memory: &Memory,
) -> Result<Ingested> {
    Ok(ingest_from(inputs, as_of, quality, None, memory)?.expect("a full read needs no state"))
}

/// Per input, the files listed and the files to read, and how many were pruned.
type Listing = (Vec<Vec<String>>, Vec<Vec<String>>, usize);

/// The files of each input to read: all of them, or with `previous`, those listed after the
/// ones it read (which must still be listed first, in the same order).
fn files_to_read(
    inputs: &[InputDef],
    as_of: Option<chrono::NaiveDate>,
    previous: Option<&IngestState>,
) -> Result<std::result::Result<Listing, FullRefresh>> {
    let mut listed = Vec::new();
    let mut new = Vec::new();
    let mut pruned = 0;
    if let Some(p) = previous
        && p.files.len() != inputs.len()
    {
        return Ok(Err(FullRefresh(format!(
            "the job reads {} inputs; the night before read {}",
            inputs.len(),
            p.files.len()
        ))));
    }
    for (k, input) in inputs.iter().enumerate() {
        let mut files = Vec::new();
        for path in list_files(&input.url)? {
            // A run as of D reads what was loaded up to D: what the nightly run of D saw.
            if let (Some(as_of), Some(loaded)) = (as_of, partition_date(&path))
                && loaded > as_of
            {
                pruned += 1;
                continue;
            }
            files.push(path);
        }
        let read_before = previous.map_or(&[][..], |p| &p.files[k][..]);
        if let Some((i, (old, now))) = read_before
            .iter()
            .zip(&files)
            .enumerate()
            .find(|(_, (old, now))| old != now)
        {
            return Ok(Err(FullRefresh(format!(
                "input {}: file {i} was {old} the night before and is {now} now (a file was removed, or one was added before files already read)",
                input.url
            ))));
        }
        if files.len() < read_before.len() {
            return Ok(Err(FullRefresh(format!(
                "input {}: {} files read the night before, {} listed now",
                input.url,
                read_before.len(),
                files.len()
            ))));
        }
        new.push(files[read_before.len()..].to_vec());
        listed.push(files);
    }
    Ok(Ok((listed, new, pruned)))
}

/// Reads and normalises the events at `location`; with `previous`, only the files loaded
/// since the night before, deciding each row against the night before's state exactly as one
/// run over all the files would, or saying why it cannot (`FullRefresh`).
pub fn ingest_from(
    inputs: &[InputDef],
    as_of: Option<chrono::NaiveDate>,
    quality: &Quality,
    previous: Option<&Previous>,
    memory: &Memory,
) -> Result<std::result::Result<Ingested, FullRefresh>> {
    let location = inputs
        .iter()
        .map(|i| i.url.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    let (listed, new_files, files_pruned) =
        match files_to_read(inputs, as_of, previous.map(|p| p.state))? {
            Ok(f) => f,
            Err(why) => return Ok(Err(why)),
        };
    if previous.is_some() && new_files.iter().all(|f| f.is_empty()) {
        return Ok(Err(FullRefresh(
            "no files loaded since the night before".into(),
        )));
    }
    // What each file's rows keep: the canonical columns and the helpers the cross-row rules
    // and the quarantine need. The row-local quarantine rules are decided file by file, so
    // the device times they need are not kept; nor is the file's name, which the quarantined
    // rows get back from their input position.
    let rules = quarantine_rules(quality);
    let order: Vec<Expr> = canonical_columns()
        .into_iter()
        .map(|(c, _)| col(c))
        .chain([col(PARSE_ERROR), col(ORDER), col(INPUT), col(REASON_CODE)])
        .collect();
    // The repeating descriptive columns become categoricals as each file is read (after the
    // rules read them as text): four bytes a row from the start, never a string view.
    let categoricals: Vec<Expr> = crate::schema::event::CATEGORICAL
        .iter()
        .map(|c| col(*c).cast(crate::util::categorical_type()))
        .collect();
    let mut frames = Vec::new();
    let mut paths = Vec::new();
    for (k, (input, files)) in inputs.iter().zip(&new_files).enumerate() {
        for path in files {
            let schema = file_schema(path, input.layout)?;
            let exprs = match input.layout {
                Layout::LakeLoader => Reader { schema: &schema }.canonical(),
                Layout::Flat => flat_exprs(&schema),
            };
            // File and row position: the deterministic tie-break between duplicates.
            let position = (lit(paths.len() as u64) * lit(FILE_POSITION)
                + col(ORDER).cast(DataType::UInt64))
            .alias(ORDER);
            let lf = scan(path)?
                .with_row_index(ORDER, None)
                .select(
                    exprs
                        .into_iter()
                        .chain([position, lit(k as u32).alias(INPUT)])
                        .collect::<Vec<_>>(),
                )
                .with_column(reason_code(&rules).alias(REASON_CODE))
                .select(order.clone())
                .with_columns(categoricals.clone());
            frames.push(lf);
            paths.push(path.clone());
        }
    }
    let files_read = paths.len();
    let mut laps = crate::util::Laps::start("ingest");
    if frames.is_empty() {
        return Err(InputError::AsOf {
            as_of: as_of.map(|d| d.to_string()).unwrap_or_default(),
            message: format!(
                "no events loaded by this date: all {files_pruned} files at {location} are in load_tstamp_date partitions after it"
            ),
        }
        .into());
    }
    let unreadable = |e: PolarsError| -> crate::error::Error {
        InputError::Unreadable {
            location: location.clone(),
            source: Box::new(e),
        }
        .into()
    };
    let (mut rows, set_aside, sessions_now, read) = read_rows(frames, &paths, memory, &unreadable)?;
    laps.lap("files read");
    let sessions = match previous {
        Some(p) => {
            // The night before's starts of the tracker sessions these files have.
            let continued = p
                .state
                .sessions
                .of(&sessions_now)?;
            // The session cap measures from a session's first usable row: one that moves it
            // earlier can quarantine rows the night before used.
            let moved = sessions_now
                .clone()
                .lazy()
                .join(
                    continued.clone().lazy(),
                    session_key(),
                    session_key(),
                    JoinArgs::new(JoinType::Inner).with_suffix(Some("_before".into())),
                )
                .filter(col(START).lt(col("_start_before")).and(
                    col("_last_before")
                        .gt(col(START) + lit(quality.max_session_days * crate::util::MICROS_PER_DAY)),
                ))
                .limit(1)
                .collect()
                .ctx("checking session starts")?;
            if moved.height() > 0 {
                return Ok(Err(FullRefresh(format!(
                    "a tracker session (started {}) gained an event before its first one, moving the session cap onto events already used",
                    moved
                        .column(START)
                        .ctx("session starts")?
                        .i64()
                        .ctx("session starts")?
                        .get(0)
                        .and_then(chrono::DateTime::from_timestamp_micros)
                        .map_or_else(String::new, |t| t.to_rfc3339())
                ))));
            }
            // Only the sessions these files have are combined again.
            concat([continued.lazy(), sessions_now.lazy()], UnionArgs::default())
                .ctx("session starts")?
                .group_by(session_key())
                .agg([col(START).min(), col(LAST).max()])
        }
        None => sessions_now.lazy(),
    }
    .sort(SESSION_KEY, Default::default())
    .collect()
    .ctx("session starts")?;
    laps.lap("sessions table");
    let starts = Starts::of(&sessions, &rows)?;
    // Rows written aside are decided with their sessions' starts looked up in `starts`: the
    // night's sessions wait on disk meanwhile, for the state (100M events: 14 million
    // sessions, 450 MB of the bucket loops' baseline, where ingest peaks).
    let sessions = match &rows {
        Rows::Held(_) => Waiting::Held(sessions),
        Rows::Spilled(_) => {
            let mut aside = crate::buckets::BucketFiles::create(memory.scratch.as_deref(), 1)?;
            aside.append_to(0, sessions)?;
            Waiting::Written(aside.finish()?)
        }
    };
    laps.lap("session starts");
    // Each bucket's rows decided on their own (every copy of an event is in its bucket); the
    // orders, which a session can repeat across buckets, are decided on all of them after.
    let mut decided = Vec::with_capacity(rows.buckets());
    // Rows written aside have their event keys written as they are decided.
    let mut keys_written = match &rows {
        Rows::Held(_) => None,
        Rows::Spilled(_) => Some(crate::buckets::BucketFiles::create(
            memory.scratch.as_deref(),
            1,
        )?),
    };
    let mut bucket_laps = crate::util::Laps::start("ingest bucket");
    for bucket in 0..rows.buckets() {
        let Some(part) = rows.take(bucket)? else {
            decided.push(None);
            continue;
        };
        bucket_laps.lap("read");
        let all = capped(part, &starts, quality, &rules, &unreadable)?;
        bucket_laps.lap("capped");
        // Rows written aside are decided on a few of their columns (`DECIDE_COLUMNS`): the
        // few the session cap quarantines are read whole.
        let quarantine = if rows.holds() {
            Some(quarantined(&all, &rules)?)
        } else {
            let codes = all.column(REASON_CODE).ctx("reason codes")?;
            if codes.null_count() < codes.len() {
                let mut whole = rows.read(bucket)?.expect("a bucket decided has rows");
                whole.with_column(codes.clone()).ctx("quarantine")?;
                Some(quarantined(&whole, &rules)?)
            } else {
                None
            }
        };
        match decide(all, quarantine, previous, rows.holds())? {
            Ok(mut d) => {
                if let Some(keys) = &mut keys_written {
                    keys.append_to(0, std::mem::take(&mut d.new_keys))?;
                }
                decided.push(Some(d));
                bucket_laps.lap("decided");
            }
            Err(why) => return Ok(Err(why)),
        }
    }
    // The last step reads no session start (`Decided::valid`).
    drop(starts);
    // The bucket loop kept the memory it freed (`util::release_freed_memory`); the repeated
    // orders and the masks start from what the decided buckets hold (100M events: the peak
    // rose by 370 MiB to 2,870 MiB on the repeated orders).
    if !rows.holds() {
        crate::util::release_freed_memory();
    }
    laps.lap("rows decided");
    let done = || decided.iter().flatten();
    // The rows the row rules quarantined as the files were read (rows written aside), those
    // the buckets quarantined, and a frame of none, for its columns.
    let mut quarantines: Vec<LazyFrame> = done()
        .filter_map(|d| d.quarantine.clone().map(|q| q.lazy()))
        .collect();
    if let Some(mut set_aside) = set_aside
        && let Some(rows) = set_aside.take(0)?
    {
        quarantines.push(quarantined(&rows, &rules)?.lazy());
    }
    if quarantines.is_empty() {
        quarantines.push(quarantined(&rows.empty()?, &rules)?.lazy());
    }
    let quarantine = concat(quarantines, UnionArgs::default()).ctx("quarantine")?;
    let files = df!(
        "_file" => (0..paths.len() as u64).collect::<Vec<_>>(),
        SOURCE_FILE => &paths,
    )
    .ctx("quarantine")?;
    let quarantine = quarantine
        .sort([ORDER], Default::default())
        .join(
            files.lazy(),
            [col("_file")],
            [col("_file")],
            crate::util::left_join_ordered(),
        )
        .select(
            canonical_columns()
                .into_iter()
                .map(|(c, _)| col(c))
                .chain([col(SOURCE_FILE), col(INPUT), col(output::QUARANTINE_REASON)])
                .collect::<Vec<_>>(),
        )
        .collect()
        .ctx("quarantine")?;
    // The quarantine is kept between nights and published as text.
    let quarantine = crate::util::text(quarantine)?;
    laps.lap("quarantine");
    // One order tracked twice in a session (a reloaded confirmation page, a retried tracker
    // call with a new event id): the first one counts, as dbt-snowplow-ecommerce does.
    let candidates = concat(
        done().map(|d| d.orders.clone().lazy()).collect::<Vec<_>>(),
        UnionArgs::default(),
    )
    .ctx("orders")?
    .collect()
    .ctx("orders")?;
    let repeats = positions(
        candidates
            .clone()
            .lazy()
            .filter(first_in(&[ev::DOMAIN_SESSIONID, ev::ORDER_ID], ev::TSTAMP).not()),
        "finding repeated orders",
    )?;
    let orders_now = without(candidates.clone().lazy(), repeats.clone()).select([
        col(ORDER),
        col(ev::DOMAIN_SESSIONID),
        col(ev::ORDER_ID),
        micros(ev::TSTAMP).alias(AT),
        col(INPUT),
    ]);
    laps.lap("repeated orders");
    let mut repeated_before = Series::new_empty(ORDER.into(), &DataType::UInt64);
    let orders = match previous {
        Some(p) => {
            let again = orders_now
                .clone()
                .join(
                    p.state.orders.clone().lazy(),
                    [col(ev::DOMAIN_SESSIONID), col(ev::ORDER_ID)],
                    [col(ev::DOMAIN_SESSIONID), col(ev::ORDER_ID)],
                    JoinArgs::new(JoinType::Inner).with_suffix(Some("_kept".into())),
                )
                .collect()
                .ctx("finding orders kept before")?;
            let wins = again
                .clone()
                .lazy()
                .filter(
                    col(AT).lt(col("_t_kept")).or(col(AT)
                        .eq(col("_t_kept"))
                        .and(col(INPUT).lt(col("_input_kept")))),
                )
                .select([col(ev::ORDER_ID)])
                .limit(1)
                .collect()
                .ctx("finding orders kept before")?;
            if let Some(id) = crate::util::strings(&wins, ev::ORDER_ID)?.into_iter().next() {
                return Ok(Err(FullRefresh(format!(
                    "order {} was tracked again in its session with an earlier time than the one used before",
                    id.unwrap_or_default()
                ))));
            }
            repeated_before = positions(again.lazy(), "finding orders kept before")?;
            concat(
                [
                    p.state.orders.clone().lazy(),
                    without(orders_now, repeated_before.clone()).drop(cols([ORDER])),
                ],
                UnionArgs::default(),
            )
            .ctx("orders")?
        }
        None => orders_now.drop(cols([ORDER])),
    }
    .sort([ev::DOMAIN_SESSIONID, ev::ORDER_ID], Default::default())
    .collect()
    .ctx("orders")?;
    laps.lap("orders");
    let new_keys = match keys_written {
        Some(keys) => Stored::Disk(keys.finish()?),
        None => Stored::Memory(done().next().expect("rows held").new_keys.clone()),
    };
    // The events used: the unique rows but the repeated orders. The newest of them places the
    // as-of date when none is given.
    let order_dropped = Series::from_iter(
        [&repeats, &repeated_before]
            .into_iter()
            .flat_map(|s| s.u64().expect("positions").into_no_null_iter()),
    );
    let kept_orders = without(candidates.lazy(), order_dropped.clone())
        .select([
            len().alias("_n"),
            micros(ev::TSTAMP).max().alias(ev::TSTAMP),
        ])
        .collect()
        .ctx("deduplicating events")?;
    let deduped = done().map(|d| d.unique_others).sum::<usize>()
        + kept_orders
            .column("_n")
            .ctx("orders")?
            .u32()
            .ctx("orders")?
            .get(0)
            .unwrap_or(0) as usize;
    let newest = done()
        .filter_map(|d| d.newest_other)
        .chain(
            kept_orders
                .column(ev::TSTAMP)
                .ctx("orders")?
                .i64()
                .ctx("orders")?
                .get(0),
        )
        .max();
    laps.lap("deduplicated");
    let valid_rows = read - quarantine.height();
    let duplicates = valid_rows - deduped;
    let carried = previous.map_or(0, |p| p.state.deferred.height());
    if deduped + carried == 0 {
        if previous.is_some() {
            // Let a read of every file say what is wrong.
            return Ok(Err(FullRefresh(
                "no usable event since the night before".into(),
            )));
        }
        return Err(InputError::Empty {
            location: location.to_string(),
            read,
            quarantined: quarantine.height(),
        }
        .into());
    }
    let deferred_before = previous.map(|p| p.state.deferred.clone());
    let day = |micros: i64| {
        chrono::DateTime::from_timestamp_micros(micros)
            .expect("valid timestamp")
            .date_naive()
    };
    let last = match &deferred_before {
        Some(d) if d.height() > 0 => {
            let before = crate::util::event_date_range(d)?.1;
            newest.map_or(before, |n| day(n).max(before))
        }
        _ => day(newest.expect("events are not empty")),
    };
    let as_of = as_of.unwrap_or_else(|| last.succ_opt().expect("date in range"));
    let cutoff = crate::util::date_to_micros(as_of);
    // Each bucket's events before the as-of date and its usable events after it.
    let canonical: Vec<Expr> = canonical_columns()
        .into_iter()
        .map(|(c, _)| col(c))
        .chain([col(INPUT)])
        .collect();
    // Rows held give events held; rows written aside give which of their rows are used
    // (and the events carried from the night before, a bucket of their own).
    let mut used_events = match &rows {
        Rows::Held(_) => Used::Held(Vec::new()),
        Rows::Spilled(spilled) => Used::Marked {
            used: vec![None; spilled.buckets()],
            carried: None,
            rows: 0,
        },
    };
    // The events after the as-of date of `rows` (none on most nights: a filter of no row
    // copies nothing), in text of their own: every bucket of a night written aside has some
    // when the input holds days after the as-of date (a backfill), and a filtered copy would
    // keep the whole bucket's text (at 100M events over 180 days, 23 GB over 112 buckets).
    let after_as_of = |rows: DataFrame, after: &BooleanChunked| -> Result<DataFrame> {
        rows.lazy()
            .select(canonical.clone())
            .collect()
            .and_then(|rows| rows.filter(after))
            .map(crate::util::compact_text)
            .ctx("events after the as-of date")
    };
    let mut deferred_now = Vec::new();
    let mut bucket_laps = crate::util::Laps::start("ingest bucket");
    for (bucket, d) in decided.into_iter().enumerate() {
        let Some(d) = d else { continue };
        // Rows written aside are read again for the columns the masks need (and whole, for
        // the few nights with events after the as-of date).
        let mut all = match d.all {
            Some(all) => all,
            None => rows
                .read_columns(bucket, Some(&[ORDER, ev::TSTAMP]))?
                .expect("a bucket decided has rows"),
        };
        all.with_column(d.valid.with_name(VALID.into()).into_column())
            .ctx("selecting the used rows")?;
        bucket_laps.lap("read again");
        let dropped = Series::from_iter(
            [&d.copies, &d.kept_before, &order_dropped]
                .into_iter()
                .flat_map(|s| s.u64().expect("positions").into_no_null_iter()),
        );
        let usable = col(VALID).and(not_at(dropped));
        let before_as_of = col(ev::TSTAMP).cast(DataType::Int64).lt(lit(cutoff));
        let masks = all
            .clone()
            .lazy()
            .select([
                usable.clone().and(before_as_of.clone()).alias("_used"),
                usable.and(before_as_of.not()).alias("_after"),
            ])
            .collect()
            .ctx("selecting the used rows")?;
        let used = masks.columns()[0].bool().ctx("used rows")?.clone();
        let after = masks.columns()[1].bool().ctx("used rows")?;
        if rows.holds() {
            deferred_now.push(after_as_of(all.clone(), after)?);
            let mut all = all;
            for helper in [ORDER, PARSE_ERROR, REASON_CODE, INPUT, VALID, START] {
                all.drop_in_place(helper).ctx("dropping ingest columns")?;
            }
            // `all` is moved in: each wide column is freed as soon as its filtered copy
            // exists.
            used_events.push(crate::util::filter_by_columns(all, &used)?);
        } else {
            if after.any() {
                let all = rows.read(bucket)?.expect("a bucket decided has rows");
                deferred_now.push(after_as_of(all, after)?);
            }
            used_events.mark(bucket, used);
        }
        bucket_laps.lap("filtered");
    }
    // Rows written aside without events after the as-of date keep an empty frame of them.
    if deferred_now.is_empty() {
        deferred_now.push(after_as_of(
            rows.empty()?,
            &BooleanChunked::full("".into(), false, 0),
        )?);
    }
    laps.lap("events filtered");
    // Ingest's state (deferred events, keys) stays text.
    let mut deferred = crate::util::text(
        concat(
            deferred_now
                .into_iter()
                .map(|d| d.lazy())
                .collect::<Vec<_>>(),
            UnionArgs::default(),
        )
        .ctx("events after the as-of date")?
        .collect()
        .ctx("events after the as-of date")?,
    )?;
    if let Some(before) = deferred_before.filter(|d| d.height() > 0) {
        let now = |keep: Expr| {
            before
                .clone()
                .lazy()
                .filter(keep)
                .collect()
                .ctx("events carried from the night before")
        };
        let (use_now, still_after) = (
            now(col(ev::TSTAMP).lt(lit(cutoff).cast(utc())))?,
            now(col(ev::TSTAMP).gt_eq(lit(cutoff).cast(utc())))?,
        );
        let mut use_now = crate::util::categorical(use_now)?;
        use_now
            .drop_in_place(INPUT)
            .ctx("dropping ingest columns")?;
        used_events.push(use_now);
        deferred = still_after
            .vstack(&deferred)
            .ctx("events after the as-of date")?;
    }
    let (events, used) = used_events.finish(rows)?;
    let counts = IngestCounts {
        files: files_read,
        files_pruned,
        read,
        carried,
        used,
        duplicates,
        quarantined: quarantine.height(),
        after_as_of: deferred.height(),
    };
    debug_assert_eq!(
        counts.read + counts.carried,
        counts.used + counts.duplicates + counts.quarantined + counts.after_as_of
    );
    if used == 0 {
        if previous.is_some() {
            return Ok(Err(FullRefresh(
                "no event since the night before is before the as-of date".into(),
            )));
        }
        return Err(InputError::AsOf {
            as_of: as_of.to_string(),
            message: format!(
                "no events before this date ({} events read are all at or after it)",
                counts.read + counts.carried
            ),
        }
        .into());
    }
    Ok(Ok(Ingested {
        events,
        quarantine,
        counts,
        as_of,
        new_keys,
        state: IngestState {
            files: listed,
            sessions: match previous {
                Some(p) => p.state.sessions.with(sessions.take()?)?,
                None => SessionStarts::Held(sessions.take()?),
            },
            orders,
            deferred,
        },
    }))
}

/// How much of a night's rows ingest holds in memory. Rows that would take more than
/// `hold_up_to` bytes (as polars estimates the first files read) are written to scratch files
/// in `scratch`, in buckets of about `rows_per_bucket` rows cut by a hash of the event id (every
/// copy of an event in one bucket), and decided a bucket at a time.
pub struct Memory {
    pub hold_up_to: u64,
    pub rows_per_bucket: usize,
    /// Under which directory the buckets are written (`buckets::BucketFiles`); without one,
    /// the system's temporary directory.
    pub scratch: Option<PathBuf>,
}

impl Memory {
    /// Every row held (reads known to be small, and tests).
    pub fn held() -> Memory {
        Memory {
            hold_up_to: u64::MAX,
            rows_per_bucket: usize::MAX,
            scratch: None,
        }
    }
}

/// The event keys ingest gives: in memory, or written to disk by bucket (when the rows were
/// written aside, `Memory`).
pub enum Stored {
    Memory(DataFrame),
    Disk(crate::buckets::Spilled),
}

impl Stored {
    /// Every key in memory (written ones read, a bucket after another): tests.
    pub fn frame(&self) -> Result<DataFrame> {
        match self {
            Stored::Memory(rows) => Ok(rows.clone()),
            Stored::Disk(spilled) => every_bucket(spilled.buckets(), |b| spilled.read(b)),
        }
    }
}

/// The rows of `buckets` buckets, read by `read` one after another, in one frame.
fn every_bucket(
    buckets: usize,
    read: impl Fn(usize) -> Result<Option<DataFrame>>,
) -> Result<DataFrame> {
    let mut parts = Vec::new();
    for bucket in 0..buckets {
        parts.extend(read(bucket)?.map(|p| p.lazy()));
    }
    concat(parts, UnionArgs::default())
        .ctx("rows written aside")?
        .collect()
        .ctx("rows written aside")
}

/// The events ingest gives: in memory, or the rows written aside with which of them are
/// used (`Aside`).
pub enum Events {
    Memory(DataFrame),
    Aside(Aside),
}

impl Events {
    /// Every event in memory (those written aside read, a bucket after another): tests, and
    /// nights known to be small.
    pub fn frame(&self) -> Result<DataFrame> {
        match self {
            Events::Memory(events) => Ok(events.clone()),
            Events::Aside(aside) => every_bucket(aside.buckets(), |b| aside.read_columns(b, None)),
        }
    }
}

/// The events of a night whose rows were written aside: the rows as read, in their buckets of
/// event ids, and which rows of each bucket are used, read a bucket at a time (then the
/// events carried from the night before, a last bucket). Ingest writes no copy of the used
/// rows: at 100M events, writing that copy (and reading every row again for it) took 121 s,
/// now 17 s to read the two columns the masks need. Identity reads the rows aside instead,
/// a file a group of input files rather than one a bucket: its reads took 15 s and 71 s
/// against 7 s and 61 s (by hand, one run each: ingest and identity 679 s against 799 s).
pub struct Aside {
    rows: crate::buckets::Spilled,
    /// Each bucket's used rows (`None`: a bucket without rows).
    used: Vec<Option<BooleanChunked>>,
    carried: Option<DataFrame>,
}

impl Aside {
    /// The buckets of events: the buckets of rows, and the events carried.
    pub fn buckets(&self) -> usize {
        self.rows.buckets() + 1
    }

    /// Bucket `bucket`'s events (`None`: it has none), only `columns` of them if they are
    /// given (all the canonical columns otherwise).
    pub fn read_columns(
        &self,
        bucket: usize,
        columns: Option<&[&str]>,
    ) -> Result<Option<DataFrame>> {
        let canonical: Vec<&str> = canonical_columns().into_iter().map(|(c, _)| c).collect();
        let columns = columns.unwrap_or(&canonical);
        if bucket == self.rows.buckets() {
            return self
                .carried
                .as_ref()
                .map(|carried| carried.select(columns.iter().copied()))
                .transpose()
                .ctx("events carried from the night before");
        }
        let Some(used) = &self.used[bucket] else {
            return Ok(None);
        };
        let rows = self
            .rows
            .read_columns(bucket, Some(columns))?
            .expect("a bucket decided has rows");
        // Every column filtered (and freed) in turn.
        Ok(Some(crate::util::filter_by_columns(rows, used)?))
    }

    /// Bucket `bucket`'s events, once: its files are removed (`None`: it has none).
    pub fn take(&mut self, bucket: usize) -> Result<Option<DataFrame>> {
        if bucket == self.rows.buckets() {
            return Ok(self.carried.take());
        }
        let events = self.read_columns(bucket, None)?;
        self.rows.remove(bucket)?;
        self.used[bucket] = None;
        Ok(events)
    }
}

/// The used events, a bucket of rows at a time: held, or marked among the rows written aside.
enum Used {
    Held(Vec<DataFrame>),
    Marked {
        used: Vec<Option<BooleanChunked>>,
        carried: Option<DataFrame>,
        rows: usize,
    },
}

impl Used {
    fn push(&mut self, events: DataFrame) {
        match self {
            Used::Held(parts) => parts.push(events),
            Used::Marked { carried, rows, .. } => {
                *rows += events.height();
                *carried = Some(events);
            }
        }
    }

    fn mark(&mut self, bucket: usize, mask: BooleanChunked) {
        match self {
            Used::Held(_) => unreachable!("rows held are filtered"),
            Used::Marked { used, rows, .. } => {
                *rows += mask.sum().unwrap_or(0) as usize;
                used[bucket] = Some(mask);
            }
        }
    }

    /// The events (`rows`' own, when they were written aside), and how many.
    fn finish(self, rows: Rows) -> Result<(Events, usize)> {
        match (self, rows) {
            (Used::Held(parts), _) => {
                let mut parts = parts.into_iter();
                let mut events = parts.next().expect("a bucket of rows");
                for part in parts {
                    events
                        .vstack_mut_owned(part)
                        .ctx("events carried from the night before")?;
                }
                let used = events.height();
                Ok((Events::Memory(events), used))
            }
            (
                Used::Marked {
                    used,
                    carried,
                    rows: count,
                },
                Rows::Spilled(rows),
            ) => Ok((
                Events::Aside(Aside {
                    rows,
                    used,
                    carried,
                }),
                count,
            )),
            (Used::Marked { .. }, Rows::Held(_)) => unreachable!("rows marked are written aside"),
        }
    }
}

fn micros(c: &str) -> Expr {
    col(c).cast(DataType::Int64)
}

/// A night's rows as read, with ingest's helper columns: held in memory (one bucket), or
/// written to disk in buckets of event ids (`None`: a bucket without rows).
enum Rows {
    Held(Option<DataFrame>),
    Spilled(crate::buckets::Spilled),
}

impl Rows {
    fn buckets(&self) -> usize {
        match self {
            Rows::Held(_) => 1,
            Rows::Spilled(spilled) => spilled.buckets(),
        }
    }

    fn holds(&self) -> bool {
        matches!(self, Rows::Held(_))
    }

    /// Bucket `bucket`'s rows to decide (`None`: it has none). Held rows are handed over
    /// once; of written ones, the columns they are decided on are read (`DECIDE_COLUMNS`).
    fn take(&mut self, bucket: usize) -> Result<Option<DataFrame>> {
        match self {
            Rows::Held(rows) => Ok(rows.take()),
            Rows::Spilled(spilled) => spilled.read_columns(bucket, Some(&DECIDE_COLUMNS)),
        }
    }

    /// Bucket `bucket`'s rows written aside, read again (`None`: it has none).
    fn read(&self, bucket: usize) -> Result<Option<DataFrame>> {
        self.read_columns(bucket, None)
    }

    /// `columns` of bucket `bucket`'s rows written aside, read again (`None`: it has none).
    fn read_columns(&self, bucket: usize, columns: Option<&[&str]>) -> Result<Option<DataFrame>> {
        match self {
            Rows::Held(_) => unreachable!("rows held are handed over once"),
            Rows::Spilled(spilled) => spilled.read_columns(bucket, columns),
        }
    }

    /// A frame of no rows with the columns of the rows written aside.
    fn empty(&self) -> Result<DataFrame> {
        match self {
            Rows::Held(_) => unreachable!("rows held are handed over once"),
            Rows::Spilled(spilled) => spilled.empty(),
        }
    }
}

/// Each tracker session's first and last usable collector time in `rows` (the row rules
/// passed; the session cap is measured from the first).
fn session_times(rows: &DataFrame) -> Result<DataFrame> {
    let usable = rows
        .clone()
        .lazy()
        .filter(
            col(REASON_CODE)
                .is_null()
                .and(col(ev::DOMAIN_SESSIONID).is_not_null()),
        )
        .select([
            col(ev::DOMAIN_SESSIONID),
            micros(ev::COLLECTOR_TSTAMP).alias(START),
        ])
        .collect()
        .ctx("session starts")?;
    Ok(with_session_key(usable)?
        .lazy()
        .group_by(session_key())
        .agg([col(START).min(), col(START).max().alias(LAST)])
        .collect_with_engine(Engine::Streaming)
        .ctx("session starts")?
        .unwrap_single())
}

/// Each tracker session's first and last usable collector time (`session_times`), from groups
/// of rows read one after another (`add`): a session spans groups. The times are kept in a
/// hash map updated in place. Regrouping the groups' tables every eight groups held the table
/// so far, the new one and polars' groups at once: at 100M events (14 million sessions, a
/// 450 MB table) each regrouping near the end took 2.6 GB, ingest's peak.
#[derive(Default)]
struct SessionTimes(polars_utils::aliases::PlHashMap<[u64; 2], [i64; 2]>);

impl SessionTimes {
    /// Adds the sessions of `rows`.
    fn add(&mut self, rows: &DataFrame) -> Result<()> {
        let part = session_times(rows)?;
        let key = |c: &str| -> Result<&UInt64Chunked> {
            part.column(c)
                .ctx("session starts")?
                .u64()
                .ctx("session starts")
        };
        let time = |c: &str| -> Result<&Int64Chunked> {
            part.column(c)
                .ctx("session starts")?
                .i64()
                .ctx("session starts")
        };
        let keys = key(SESSION_KEY[0])?.iter().zip(key(SESSION_KEY[1])?.iter());
        let times = time(START)?.iter().zip(time(LAST)?.iter());
        for ((hi, lo), (start, last)) in keys.zip(times) {
            // `session_times` keeps rows with a session id only, so every key is there.
            let (Some(hi), Some(lo)) = (hi, lo) else {
                continue;
            };
            // A missing time is never the earliest or the latest.
            let (start, last) = (start.unwrap_or(i64::MAX), last.unwrap_or(i64::MIN));
            self.0
                .entry([hi, lo])
                .and_modify(|t| *t = [t[0].min(start), t[1].max(last)])
                .or_insert([start, last]);
        }
        Ok(())
    }

    /// The sessions added, as `session_times` gives them (in no order).
    fn finish(self) -> Result<DataFrame> {
        let height = self.0.len();
        let (mut hi, mut lo) = (Vec::with_capacity(height), Vec::with_capacity(height));
        let (mut start, mut last) = (Vec::with_capacity(height), Vec::with_capacity(height));
        for ([h, l], [s, t]) in self.0 {
            hi.push(h);
            lo.push(l);
            start.push((s != i64::MAX).then_some(s));
            last.push((t != i64::MIN).then_some(t));
        }
        DataFrame::new(
            height,
            vec![
                Column::new(SESSION_KEY[0].into(), hi),
                Column::new(SESSION_KEY[1].into(), lo),
                Column::new(START.into(), start),
                Column::new(LAST.into(), last),
            ],
        )
        .ctx("session starts")
    }
}

/// Reads `frames` (one a file of `paths`): in one go when the rows fit in `memory`, else a
/// group of files at a time, each group's rows written into buckets of event ids. Gives the
/// rows, each tracker session's first and last usable collector time, and the rows read.
fn read_rows(
    frames: Vec<LazyFrame>,
    paths: &[String],
    memory: &Memory,
    unreadable: &dyn Fn(PolarsError) -> crate::error::Error,
) -> Result<(Rows, Option<crate::buckets::Spilled>, DataFrame, usize)> {
    let collect = |frames: Vec<LazyFrame>| -> Result<DataFrame> {
        concat(frames, UnionArgs::default())
            .ctx("combining input files")?
            .collect()
            .map_err(unreadable)
    };
    let held =
        |rows: DataFrame| -> Result<(Rows, Option<crate::buckets::Spilled>, DataFrame, usize)> {
            let sessions = session_times(&rows)?;
            let read = rows.height();
            Ok((Rows::Held(Some(rows)), None, sessions, read))
        };
    if memory.hold_up_to == u64::MAX {
        return held(collect(frames)?);
    }
    // Rows per file, from the files' metadata.
    let mut counts = Vec::with_capacity(paths.len());
    for path in paths {
        let n = scan(path)?.select([len()]).collect().map_err(unreadable)?;
        counts.push(n.columns()[0].u32().ctx("row count")?.get(0).unwrap_or(0) as usize);
    }
    let total: usize = counts.iter().sum();
    if total <= memory.rows_per_bucket {
        return held(collect(frames)?);
    }
    // Consecutive files of about `rows_per_bucket` rows (at least one file).
    let mut groups = vec![0usize];
    let mut in_group = 0;
    for n in counts {
        if in_group > 0 && in_group + n > memory.rows_per_bucket {
            groups.push(0);
            in_group = 0;
        }
        *groups.last_mut().expect("a group") += 1;
        in_group += n;
    }
    let mut frames = frames.into_iter();
    let mut group = |files: usize| collect(frames.by_ref().take(files).collect());
    let first = group(groups[0])?;
    let estimate = first.estimated_size() as u128 * total as u128 / first.height().max(1) as u128;
    if estimate <= memory.hold_up_to as u128 {
        let mut rows = first;
        if groups.len() > 1 {
            rows.vstack_mut_owned(group(groups[1..].iter().sum())?)
                .ctx("combining input files")?;
        }
        return held(rows);
    }
    let buckets = total.div_ceil(memory.rows_per_bucket);
    tracing::info!(
        estimated_mib = (estimate >> 20) as u64,
        at_most_mib = memory.hold_up_to >> 20,
        buckets,
        "rows written aside in buckets of event ids: they take more memory than ingest may hold"
    );
    let mut writers = crate::buckets::BucketFiles::create(memory.scratch.as_deref(), buckets)?;
    // The rows a row rule quarantines, whole: the buckets are decided on a few columns.
    let mut set_aside = crate::buckets::BucketFiles::create(memory.scratch.as_deref(), 1)?;
    let mut sessions = SessionTimes::default();
    let mut read = 0;
    let mut rows = first;
    let mut laps = crate::util::Laps::start("ingest files");
    for next in groups[1..].iter().map(Some).chain([None]) {
        laps.lap("group read");
        sessions.add(&rows)?;
        read += rows.height();
        laps.lap("session times");
        // In one chunk (a group is a chunk a file): the buckets' rows are then gathered from
        // it by position, their text pointed at rather than copied.
        rows.rechunk_mut_par();
        let usable = rows.column(REASON_CODE).ctx("reason codes")?.is_null();
        if !usable.all() {
            set_aside.append_to(0, crate::util::filter_by_columns(rows.clone(), &!&usable)?)?;
            rows = crate::util::filter_by_columns(rows, &usable)?;
        }
        // Every copy of an event in one bucket.
        let ids = rows
            .column(ev::EVENT_ID)
            .ctx("event ids")?
            .str()
            .ctx("event ids")?;
        writers.append(
            &rows,
            ids.iter()
                .map(|id| id.map_or(0, |id| (id_hash(id) % buckets as u64) as usize)),
        )?;
        drop(rows);
        laps.lap("written aside");
        let Some(&files) = next else { break };
        rows = group(files)?;
    }
    Ok((
        Rows::Spilled(writers.finish()?),
        Some(set_aside.finish()?),
        sessions.finish()?,
        read,
    ))
}

/// Where a bucket's rows find their tracker sessions' starts.
enum Starts {
    /// By joining them with the night's sessions: rows held, one bucket.
    Joined(DataFrame),
    /// By looking each row's session up: rows written aside in buckets. Joining each bucket's
    /// rows with the night's sessions read every session for each bucket, twice (100M events:
    /// 14 million sessions, 100 buckets; 230 s of the run, and 2.9 GB at the step's peak).
    Looked(polars_utils::aliases::PlHashMap<[u64; 2], i64>),
}

impl Starts {
    /// Looks the sessions' starts up in `sessions` when `rows` are written aside.
    fn of(sessions: &DataFrame, rows: &Rows) -> Result<Starts> {
        if rows.holds() {
            return Ok(Starts::Joined(sessions.clone()));
        }
        let column = |c: &str| sessions.column(c).ctx("session starts");
        let (hi, lo) = (column(SESSION_KEY[0])?.u64(), column(SESSION_KEY[1])?.u64());
        let (hi, lo) = (hi.ctx("session keys")?, lo.ctx("session keys")?);
        let start = column(START)?.i64().ctx("session starts")?;
        let mut starts = polars_utils::aliases::PlHashMap::default();
        starts.reserve(sessions.height());
        for ((hi, lo), start) in hi.iter().zip(lo.iter()).zip(start.iter()) {
            if let (Some(hi), Some(lo), Some(start)) = (hi, lo, start) {
                starts.insert([hi, lo], start);
            }
        }
        Ok(Starts::Looked(starts))
    }

    /// The start of each row's session (null without one).
    fn of_rows(&self, rows: &DataFrame) -> Result<Column> {
        let sessions = match self {
            Starts::Looked(starts) => {
                let ids = rows
                    .column(ev::DOMAIN_SESSIONID)
                    .ctx("session ids")?
                    .str()
                    .ctx("session ids")?;
                let of = |id: &str| starts.get(&session_key_of(id)).copied();
                let starts: Int64Chunked = ids.iter().map(|id| id.and_then(of)).collect();
                return Ok(starts.with_name(START.into()).into_column());
            }
            Starts::Joined(sessions) => sessions,
        };
        // The night's sessions are first cut to the rows' own: a join builds its table from
        // its right side, which would otherwise be every session of the night.
        let ids = with_session_key(rows.select([ev::DOMAIN_SESSIONID]).ctx("session starts")?)?
            .select(SESSION_KEY)
            .ctx("session keys")?;
        let own = sessions
            .clone()
            .lazy()
            .select([col(SESSION_KEY[0]), col(SESSION_KEY[1]), col(START)])
            .join(
                ids.clone().lazy(),
                session_key(),
                session_key(),
                JoinArgs::new(JoinType::Semi),
            );
        let starts = ids
            .lazy()
            .join(
                own,
                session_key(),
                session_key(),
                crate::util::left_join_ordered(),
            )
            .select([col(START)])
            .collect()
            .ctx("session starts")?;
        Ok(starts.column(START).ctx("session starts")?.clone())
    }
}

/// A frame that waits for the end of ingest: held, or written aside (`buckets::Spilled`, one
/// bucket).
enum Waiting {
    Held(DataFrame),
    Written(crate::buckets::Spilled),
}

impl Waiting {
    /// The frame, read back if written aside (its scratch file removed).
    fn take(self) -> Result<DataFrame> {
        match self {
            Waiting::Held(df) => Ok(df),
            Waiting::Written(mut spilled) => Ok(spilled
                .take(0)?
                .expect("a frame written aside is in its file, rows or none")),
        }
    }
}

/// `rows` with each row's session start and the session cap (`long_sessions`) applied.
fn capped(
    rows: DataFrame,
    starts: &Starts,
    quality: &Quality,
    rules: &[(Expr, Expr)],
    unreadable: &dyn Fn(PolarsError) -> crate::error::Error,
) -> Result<DataFrame> {
    // Each row's session start, worked out on the session ids alone and added to the rows
    // (which a join would copy).
    let mut rows = rows;
    rows.with_column(starts.of_rows(&rows)?)
        .ctx("session starts")?;
    rows.lazy()
        .with_column(long_sessions(quality, rules).alias(REASON_CODE))
        .collect()
        .map_err(unreadable)
}

/// What ingest decides about one bucket's rows on their own.
struct Decided {
    /// The rows with the session cap applied, when they are held (written ones are read
    /// again for the last step).
    all: Option<DataFrame>,
    /// Which rows passed every rule, the session cap included: rows written aside are read
    /// again for the last step without being capped again (at 100M events that looked every
    /// row's session up a second time, 20 s).
    valid: BooleanChunked,
    /// The quarantined rows, with their reason, input position and file number (`None`: a
    /// bucket written aside without any).
    quarantine: Option<DataFrame>,
    /// Positions of the later copies of an event, and of copies of events kept before.
    copies: Series,
    kept_before: Series,
    /// The order events among the unique rows: position, session, order id, time, input.
    orders: DataFrame,
    /// The unique rows' event keys (`Ingested::new_keys`).
    new_keys: DataFrame,
    /// How many unique rows are not order events, and the newest time among them (µs).
    unique_others: usize,
    newest_other: Option<i64>,
}

/// The quarantined rows of `rows` (every canonical column, the reason codes decided), with
/// their reason, input position and file number.
fn quarantined(rows: &DataFrame, rules: &[(Expr, Expr)]) -> Result<DataFrame> {
    rows.clone()
        .lazy()
        .filter(col(REASON_CODE).is_not_null())
        .with_columns([
            reason_text(rules).alias(output::QUARANTINE_REASON),
            col(ORDER).floor_div(lit(FILE_POSITION)).alias("_file"),
        ])
        .select(
            canonical_columns()
                .into_iter()
                .map(|(c, _)| col(c))
                .chain([
                    col(ORDER),
                    col("_file"),
                    col(INPUT),
                    col(output::QUARANTINE_REASON),
                ])
                .collect::<Vec<_>>(),
        )
        .collect()
        .ctx("quarantine")
}

/// The columns a bucket of rows written aside is decided on (`capped`, `decide`), 9 of its
/// 47: the rows the row rules quarantine are set aside whole as the files are read, and a
/// bucket is read whole only for the rows the session cap quarantines.
const DECIDE_COLUMNS: [&str; 9] = [
    ORDER,
    INPUT,
    REASON_CODE,
    ev::EVENT_ID,
    ev::TSTAMP,
    ev::COLLECTOR_TSTAMP,
    ev::EVENT_TYPE,
    ev::DOMAIN_SESSIONID,
    ev::ORDER_ID,
];

/// Decides a bucket's rows (`all`, the session cap applied): quarantine, copies of an event,
/// copies of events kept before (`previous`), and the keys the orders are decided on.
fn decide(
    all: DataFrame,
    quarantine: Option<DataFrame>,
    previous: Option<&Previous>,
    keep: bool,
) -> Result<std::result::Result<Decided, FullRefresh>> {
    let mut laps = crate::util::Laps::start("deciding rows");
    // Each collect below projects the key columns it needs.
    let valid = all
        .clone()
        .lazy()
        .filter(col(REASON_CODE).is_null())
        .drop(cols([REASON_CODE]));
    // Rows stay in input order (files in listing order, rows in file order) throughout.
    let copies = later_copies(valid.clone(), id_hash)?;
    laps.lap("copies");
    let mut unique = without(valid, copies.clone());
    // Copies of events kept on earlier nights: the kept copy stays kept unless this one would
    // have won (earlier collector time, or the same from an input listed before).
    let mut kept_before = Series::new_empty(ORDER.into(), &DataType::UInt64);
    if let Some(p) = previous {
        let mine = unique
            .clone()
            .select([
                col(ORDER),
                col(ev::EVENT_ID),
                micros(ev::COLLECTOR_TSTAMP).alias(AT),
                col(INPUT),
            ])
            .collect()
            .ctx("finding copies of events kept before")?;
        laps.lap("the night's keys");
        // The kept keys are read through a filter on this night's ids (pushed into the scan):
        // only the few that match are held, never every event id of the history.
        let ids = mine
            .column(ev::EVENT_ID)
            .ctx("event ids")?
            .as_materialized_series()
            .unique()
            .ctx("event ids")?;
        // Filtered on the ids' hashes first: the scan reads every kept hash, a number each,
        // and the ids of the few rows they match.
        let hashes = id_hashes(ids.str().ctx("event ids")?)
            .as_materialized_series()
            .clone();
        let kept = kept_keys_of(p.keys, &hashes)?;
        laps.lap("kept keys read");
        let kept = kept
            .lazy()
            .filter(col(ev::EVENT_ID).is_in(lit(ids).implode(false), false))
            .drop(cols([KEY_HASH]))
            .collect()
            .ctx("reading the kept event keys")?;
        let again = mine
            .lazy()
            .join(
                kept.lazy(),
                [col(ev::EVENT_ID)],
                [col(ev::EVENT_ID)],
                JoinArgs::new(JoinType::Inner).with_suffix(Some("_kept".into())),
            )
            .with_column(
                col(AT)
                    .lt(col(ev::COLLECTOR_TSTAMP))
                    .or(col(AT)
                        .eq(col(ev::COLLECTOR_TSTAMP))
                        .and(col(INPUT).lt(col("_input_kept"))))
                    .alias("_wins"),
            )
            .collect()
            .ctx("finding copies of events kept before")?;
        let wins = again
            .clone()
            .lazy()
            .filter(col("_wins"))
            .select([col(ev::EVENT_ID)])
            .limit(1)
            .collect()
            .ctx("finding copies of events kept before")?;
        if let Some(id) = crate::util::strings(&wins, ev::EVENT_ID)?
            .into_iter()
            .next()
        {
            return Ok(Err(FullRefresh(format!(
                "event {} arrived again with an earlier collector_tstamp than the copy used before",
                id.unwrap_or_default()
            ))));
        }
        kept_before = positions(again.lazy(), "finding copies of events kept before")?;
        unique = without(unique, kept_before.clone());
        laps.lap("copies kept before");
    }
    // An order event is decided with the orders of every bucket (`repeated orders`).
    let is_order = col(ev::EVENT_TYPE)
        .eq(lit(EventType::Order.name()))
        .and(col(ev::ORDER_ID).is_not_null())
        .and(col(ev::DOMAIN_SESSIONID).is_not_null())
        .fill_null(lit(false));
    let orders = unique
        .clone()
        .filter(is_order.clone())
        .select([
            col(ORDER),
            col(ev::DOMAIN_SESSIONID),
            col(ev::ORDER_ID),
            col(ev::TSTAMP),
            col(INPUT),
        ])
        .collect()
        .ctx("orders")?;
    let mut new_keys = unique
        .clone()
        .select([
            col(ev::EVENT_ID),
            micros(ev::COLLECTOR_TSTAMP).alias(ev::COLLECTOR_TSTAMP),
            col(INPUT),
        ])
        .collect()
        .ctx("event keys")?;
    let hashes = id_hashes(
        new_keys
            .column(ev::EVENT_ID)
            .ctx("event keys")?
            .str()
            .ctx("event keys")?,
    );
    new_keys.with_column(hashes).ctx("event keys")?;
    let others = unique
        .filter(is_order.not())
        .select([
            len().alias("_n"),
            micros(ev::TSTAMP).max().alias(ev::TSTAMP),
        ])
        .collect()
        .ctx("deduplicating events")?;
    // The rows kept of the bucket's until every bucket is decided hold their own text.
    let valid = all.column(REASON_CODE).ctx("reason codes")?.is_null();
    Ok(Ok(Decided {
        all: keep.then_some(all),
        valid,
        quarantine: quarantine.map(crate::util::compact_text),
        copies,
        kept_before,
        orders: crate::util::compact_text(orders),
        new_keys,
        unique_others: others
            .column("_n")
            .ctx("events")?
            .u32()
            .ctx("events")?
            .get(0)
            .unwrap_or(0) as usize,
        newest_other: others
            .column(ev::TSTAMP)
            .ctx("events")?
            .i64()
            .ctx("events")?
            .get(0),
    }))
}

/// Checks the schema of every file of `input` (no data read); returns the file count.
pub fn check_schemas(input: &InputDef) -> Result<usize> {
    let files = list_files(&input.url)?;
    for f in &files {
        file_schema(f, input.layout)?;
    }
    Ok(files.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_seen_twice_are_found_across_chunks() {
        let mut ids = StringChunked::new("id".into(), [Some("e1"), Some("e2"), None, Some("e2")]);
        ids.append(&StringChunked::new(
            "id".into(),
            [Some("e4"), Some("e1"), None, Some("e1")],
        ))
        .unwrap();
        assert_eq!(ids.chunks().len(), 2);
        let seen: Vec<bool> = same_hash(&ids, id_hash)
            .iter()
            .map(|v| v.unwrap())
            .collect();
        assert_eq!(
            seen,
            [true, true, false, true, false, true, false, true],
            "e1 three times, e2 twice, nulls never"
        );
        let two = StringChunked::new("id".into(), ["a", "b"]);
        assert!(!same_hash(&two, id_hash).any());
        // Ids that only share a hash are candidates, not copies.
        assert!(same_hash(&two, |_| 7).all());
    }

    /// The times of sessions read a group of rows at a time are those of all the rows: a
    /// session in two groups runs from its first usable row in either to its last, and rows
    /// without a session id or quarantined count for none.
    #[test]
    fn session_times_gathered_by_group_are_those_of_all_rows() {
        let rows = df!(
            ev::DOMAIN_SESSIONID => [Some("s1"), Some("s2"), Some("s1"), None, Some("s3"), Some("s1"), Some("s2")],
            ev::COLLECTOR_TSTAMP => [5i64, 7, 2, 1, 4, 9, 3],
            REASON_CODE => [None, None, None, None, Some(1u32), None, Some(2u32)],
        )
        .unwrap();
        let sorted = |df: DataFrame| df.sort(SESSION_KEY, Default::default()).unwrap();
        let whole = sorted(session_times(&rows).unwrap());
        let mut gathered = SessionTimes::default();
        for (offset, len) in [(0, 2), (2, 3), (5, 2)] {
            gathered.add(&rows.slice(offset, len)).unwrap();
        }
        let gathered = sorted(gathered.finish().unwrap());
        assert_eq!(gathered.height(), 2, "{gathered}");
        assert!(gathered.equals_missing(&whole), "{gathered}\n{whole}");
        let times: Vec<_> = gathered
            .column(START)
            .unwrap()
            .i64()
            .unwrap()
            .iter()
            .collect();
        let mut times = times;
        times.sort();
        assert_eq!(times, [Some(2), Some(7)]);
    }

    #[test]
    fn copies_are_decided_on_the_ids_whatever_the_hash() {
        let rows = df!(
            ORDER => [0u64, 1, 2, 3, 4, 5],
            ev::EVENT_ID => ["a", "b", "a", "c", "b", "a"],
            ev::COLLECTOR_TSTAMP => [5i64, 1, 3, 1, 1, 3],
        )
        .unwrap();
        let copies = |hash: fn(&str) -> u64| {
            let mut p: Vec<u64> = later_copies(rows.clone().lazy(), hash)
                .unwrap()
                .u64()
                .unwrap()
                .into_no_null_iter()
                .collect();
            p.sort();
            p
        };
        // "a": the earliest collector time (3) wins, the first of the tie (2) before 5; "b":
        // a tie, input order keeps 1.
        assert_eq!(copies(id_hash), [0, 4, 5]);
        // Every id a candidate: the same copies.
        assert_eq!(copies(|_| 0), [0, 4, 5]);
    }
}
