//! Sessions: the tracker's `domain_sessionid` where it gave one; otherwise a new session
//! starts after `inactivity_minutes` without events from the same customer. Each event gets
//! a `session_id`; each session gets start, end, duration, counts, landing and exit page,
//! traffic source and the navigation breadcrumb (page paths in order, at most 20).

use polars::prelude::*;

use crate::error::{Context, Result};
use crate::schema::{EventType, event as ev};

/// Maximum pages kept in a session's breadcrumb.
pub const BREADCRUMB_MAX: usize = 20;

pub const START: &str = "start_tstamp";
pub const END: &str = "end_tstamp";
pub const DURATION_S: &str = "duration_s";
pub const EVENTS: &str = "events";
pub const PAGE_VIEWS: &str = "page_views";
pub const LANDING_PAGE: &str = "landing_page";
pub const EXIT_PAGE: &str = "exit_page";
pub const BREADCRUMB: &str = "breadcrumb";
pub const HAS_CART_ADD: &str = "has_cart_add";
pub const HAS_ORDER: &str = "has_order";
pub const DEVICE: &str = "device";

/// Device class from the user agent: tablet, mobile or desktop (null without a user agent).
fn device_class(ua: Expr) -> Expr {
    when(ua.clone().is_null())
        .then(lit(NULL).cast(DataType::String))
        .when(ua.clone().str().contains(lit("iPad|Tablet"), false))
        .then(lit("tablet"))
        .when(ua.str().contains(lit("Mobile|iPhone|Android"), false))
        .then(lit("mobile"))
        .otherwise(lit("desktop"))
}

/// Columns of [`gap_carry`].
const CARRY_T: &str = "_carry_t";
const CARRY_IDX: &str = "_carry_idx";
const GAP_PREFIX: &str = "gap:";

/// Per customer, the end and number of their last inactivity-gap session in `sessions` (the
/// sessions of the nights before): a night's events without a tracker session continue it, or
/// start the next one.
pub fn gap_carry(sessions: &DataFrame) -> Result<DataFrame> {
    gap_carry_of(sessions.clone().lazy())
        .collect()
        .ctx("gap sessions of the nights before")
}

/// `gap_carry` of the customers in `customers` from the sessions kept in `file` (a night's),
/// read by the streaming engine, never whole.
pub fn kept_gap_carry(file: &std::path::Path, customers: &Series) -> Result<DataFrame> {
    gap_carry_of(
        crate::util::scan_parquet(file)?
            .filter(col(ev::CUSTOMER_ID).is_in(lit(customers.clone()).implode(false), false)),
    )
    .collect_with_engine(Engine::Streaming)
    .ctx(format!(
        "gap sessions of the nights before in {}",
        file.display()
    ))
    .map(|q| crate::util::compact_text(q.unwrap_single()))
}

fn gap_carry_of(sessions: LazyFrame) -> LazyFrame {
    sessions
        .filter(col(ev::SESSION_ID).str().starts_with(lit(GAP_PREFIX)))
        .select([
            col(ev::CUSTOMER_ID),
            col(END).cast(DataType::Int64).alias(CARRY_T),
            col(ev::SESSION_ID)
                .str()
                .split(lit(":"))
                .list()
                .last()
                .cast(DataType::UInt32)
                .alias(CARRY_IDX),
        ])
        .group_by([col(ev::CUSTOMER_ID)])
        .agg([col(CARRY_T).max(), col(CARRY_IDX).max()])
}

/// The event columns a session is built from.
const SESSION_COLUMNS: [&str; 12] = [
    ev::SESSION_ID,
    ev::CUSTOMER_ID,
    ev::TSTAMP,
    ev::EVENT_ID,
    ev::EVENT_TYPE,
    ev::PAGE_PATH,
    ev::PAGE_REFERRER,
    ev::REFR_MEDIUM,
    ev::MKT_SOURCE,
    ev::MKT_MEDIUM,
    ev::MKT_CAMPAIGN,
    ev::USERAGENT,
];

/// Adds `session_id` to every event (the events keep their order); returns (events,
/// sessions). `carry` (`gap_carry`) continues the gap sessions of the nights before.
pub fn sessionize(
    mut events: DataFrame,
    inactivity_minutes: i64,
    carry: Option<&DataFrame>,
) -> Result<(DataFrame, DataFrame)> {
    let mut laps = crate::util::Laps::start("sessionize");
    let gap = inactivity_minutes * 60 * 1_000_000;
    let t = || col(ev::TSTAMP).cast(DataType::Int64);
    // Events without a tracker session: split each customer's stream at inactivity gaps.
    let previous = coalesce(&[
        t().shift(lit(1))
            .over([col(ev::CUSTOMER_ID)])
            .ctx("session gaps")?,
        col(CARRY_T),
    ]);
    let is_new = (t() - previous).gt(lit(gap)).fill_null(lit(true));
    // Session ids are worked out on the key columns; the wide rows are sorted once at the end.
    const ROW: &str = "_row";
    const GAP_SESSION: &str = "_gap_session";
    let keys = events
        .clone()
        .lazy()
        .select([
            col(ev::CUSTOMER_ID),
            col(ev::TSTAMP),
            col(ev::EVENT_ID),
            col(ev::DOMAIN_SESSIONID),
            col(ev::CLIENT_SESSIONID),
        ])
        .with_row_index(ROW, None);
    let without_tracker = keys.clone().filter(
        col(ev::DOMAIN_SESSIONID)
            .is_null()
            .and(col(ev::CLIENT_SESSIONID).is_null()),
    );
    let without_tracker = match carry {
        Some(c) => without_tracker.join(
            c.clone().lazy(),
            [col(ev::CUSTOMER_ID)],
            [col(ev::CUSTOMER_ID)],
            crate::util::left_join_ordered(),
        ),
        None => without_tracker.with_columns([
            lit(NULL).cast(DataType::Int64).alias(CARRY_T),
            lit(NULL).cast(DataType::UInt32).alias(CARRY_IDX),
        ]),
    };
    let fallback = without_tracker
        .sort_by_exprs(
            [col(ev::CUSTOMER_ID), col(ev::TSTAMP), col(ev::EVENT_ID)],
            SortMultipleOptions::default(),
        )
        .with_column(
            (is_new
                .cast(DataType::UInt32)
                .cum_sum(false)
                .over([col(ev::CUSTOMER_ID)])
                .ctx("session index")?
                + col(CARRY_IDX).fill_null(lit(0u32)))
            .alias("_idx"),
        )
        .with_column(
            concat_str(
                [
                    lit(GAP_PREFIX.trim_end_matches(':')),
                    col(ev::CUSTOMER_ID),
                    col("_idx").cast(DataType::String),
                ],
                ":",
                false,
            )
            .alias(GAP_SESSION),
        )
        .select([col(ROW), col(GAP_SESSION)]);
    let tracker = || coalesce(&[col(ev::DOMAIN_SESSIONID), col(ev::CLIENT_SESSIONID)]);
    let with_tracker = events
        .clone()
        .lazy()
        .select([tracker().alias(ev::SESSION_ID)])
        .collect()
        .ctx("assigning sessions")?;
    // Every event with a tracker session (as Snowplow's trackers give): nothing to split.
    let session_ids = if with_tracker
        .column(ev::SESSION_ID)
        .ctx("session ids")?
        .null_count()
        == 0
    {
        with_tracker
    } else {
        keys.join(
            fallback,
            [col(ROW)],
            [col(ROW)],
            crate::util::left_join_ordered(),
        )
        .select([coalesce(&[tracker(), col(GAP_SESSION)]).alias(ev::SESSION_ID)])
        .collect()
        .ctx("assigning sessions")?
    };
    events
        .with_column(
            session_ids
                .column(ev::SESSION_ID)
                .ctx("session ids")?
                .clone(),
        )
        .ctx("assigning sessions")?;
    laps.lap("session ids");
    // The sessions need their events in time order; the events themselves do not (every
    // aggregate over them breaks ties by event id), so only the columns read here are sorted:
    // by session, so that each session's events are one run of rows, numbered in `RUN`.
    let in_order = sessions_in_runs(
        events
            .select(SESSION_COLUMNS)
            .ctx("the columns sessions read")?,
        pair_hash,
    )?;
    laps.lap("sorted");
    let is = |t: EventType| col(ev::EVENT_TYPE).eq(lit(t.name()));
    let pv = || is(EventType::PageView);
    // Sessions hold text: the events' descriptive columns are categoricals.
    let text = |e: Expr| e.cast(DataType::String);
    let first_text = |c: &str| text(col(c).drop_nulls().first()).alias(c);
    let sessions = in_order
        .lazy()
        // A tracker session is one customer's: a shared device's session that identity split
        // between two people (its cookie's guard) gives each of them a session, so every
        // customer's sessions depend on their own events only (and shards agree with a whole run).
        .group_by([col(RUN)])
        .agg([
            col(ev::SESSION_ID).first(),
            col(ev::CUSTOMER_ID).first(),
            col(ev::TSTAMP).min().alias(START),
            col(ev::TSTAMP).max().alias(END),
            ((col(ev::TSTAMP).max().cast(DataType::Int64)
                - col(ev::TSTAMP).min().cast(DataType::Int64))
                / lit(1_000_000i64))
            .alias(DURATION_S),
            len().alias(EVENTS),
            pv().sum().alias(PAGE_VIEWS),
            text(col(ev::PAGE_PATH).filter(pv()).first()).alias(LANDING_PAGE),
            text(col(ev::PAGE_PATH).filter(pv()).last()).alias(EXIT_PAGE),
            first_text(ev::PAGE_REFERRER),
            first_text(ev::REFR_MEDIUM),
            first_text(ev::MKT_SOURCE),
            first_text(ev::MKT_MEDIUM),
            first_text(ev::MKT_CAMPAIGN),
            first_text(ev::USERAGENT),
            text(col(ev::PAGE_PATH).filter(pv()).head(Some(BREADCRUMB_MAX)))
                .implode(true)
                .alias(BREADCRUMB),
            is(EventType::CartAdd).any(true).alias(HAS_CART_ADD),
            is(EventType::Order)
                .or(is(EventType::OrderLine))
                .any(true)
                .alias(HAS_ORDER),
        ])
        // The device from the session's user agent, once per session rather than per group.
        .select([
            all()
                .exclude_cols([RUN, BREADCRUMB, HAS_CART_ADD, HAS_ORDER])
                .as_expr(),
            device_class(col(ev::USERAGENT)).alias(DEVICE),
            cols([BREADCRUMB, HAS_CART_ADD, HAS_ORDER]).as_expr(),
        ])
        .sort([ev::CUSTOMER_ID, START, ev::SESSION_ID], Default::default())
        .collect()
        .ctx("building sessions")?;
    laps.lap("grouped");
    Ok((events, sessions))
}

/// `rows` (the events' `SESSION_COLUMNS`) sorted by session, then by time and event id,
/// with `RUN`: the run of rows (one session of one customer) of each row, a key polars knows
/// is sorted, so that grouping by it takes each run as a slice instead of hashing two text
/// columns per row. The sessions are sorted by a 64-bit hash of customer and session id,
/// cheaper to sort by than the text; should two sessions of a bucket share a hash (their
/// rows would interleave), they are sorted by the text instead.
fn sessions_in_runs(
    mut rows: DataFrame,
    pair_hash: impl Fn(Option<&str>, Option<&str>) -> u64,
) -> Result<DataFrame> {
    const PAIR: &str = "_pair";
    let text = |df: &DataFrame, name: &str| -> Result<StringChunked> {
        Ok(df
            .column(name)
            .ctx("session runs")?
            .as_materialized_series()
            .str()
            .ctx("session runs")?
            .rechunk()
            .into_owned())
    };
    let hashes: Vec<u64> = {
        let (customers, sessions) = (text(&rows, ev::CUSTOMER_ID)?, text(&rows, ev::SESSION_ID)?);
        customers
            .iter()
            .zip(sessions.iter())
            .map(|(c, s)| pair_hash(c, s))
            .collect()
    };
    rows.with_column(Column::new(PAIR.into(), hashes))
        .ctx("session runs")?;
    let sorted = crate::util::sort_by_columns(rows.clone(), &[PAIR, ev::TSTAMP, ev::EVENT_ID])?;
    let runs_of = |df: &DataFrame, by_hash: bool| -> Result<Option<Vec<u32>>> {
        let (customers, sessions) = (text(df, ev::CUSTOMER_ID)?, text(df, ev::SESSION_ID)?);
        let hash = df
            .column(PAIR)
            .ctx("session runs")?
            .u64()
            .ctx("session runs")?
            .rechunk();
        let hash = hash.cont_slice().expect("no nulls, one chunk");
        let mut run = 0u32;
        let mut runs = Vec::with_capacity(df.height());
        let mut previous = None;
        for (i, key) in customers.iter().zip(sessions.iter()).enumerate() {
            if previous.is_some_and(|p| p != key) {
                if by_hash && hash[i] == hash[i - 1] {
                    return Ok(None);
                }
                run += 1;
            }
            previous = Some(key);
            runs.push(run);
        }
        Ok(Some(runs))
    };
    let (mut sorted, runs) = match runs_of(&sorted, true)? {
        Some(runs) => (sorted, runs),
        None => {
            let sorted = crate::util::sort_by_columns(
                rows,
                &[ev::CUSTOMER_ID, ev::SESSION_ID, ev::TSTAMP, ev::EVENT_ID],
            )?;
            let runs = runs_of(&sorted, false)?.expect("sorted by the text");
            (sorted, runs)
        }
    };
    let mut runs = Series::from_vec(RUN.into(), runs);
    runs.set_sorted_flag(polars::series::IsSorted::Ascending);
    sorted.with_column(runs.into_column()).ctx("session runs")?;
    sorted.drop_in_place(PAIR).ctx("session runs")?;
    Ok(sorted)
}

/// The hash `sessions_in_runs` sorts sessions by: xxh3 of the customer and session ids.
fn pair_hash(customer: Option<&str>, session: Option<&str>) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(customer.unwrap_or_default().as_bytes());
    h.update(&[0xff]);
    h.update(session.unwrap_or_default().as_bytes());
    h.digest()
}

/// The column `sessions_in_runs` adds.
const RUN: &str = "_run";

/// The sessions of the nights before (`before`) under today's customer ids (`rename`:
/// `previous_id`, `customer_id`), of the customers in `customers` (a `customer_id` column).
/// Err (why) when a renamed customer's sessions cannot be carried over exactly: gap sessions
/// (numbered by customer, they would be numbered anew), or a session that both merged
/// customers had. Only the renamed customers' sessions are looked at again.
pub fn carried_over(
    before: DataFrame,
    rename: &DataFrame,
    customers: &DataFrame,
) -> Result<std::result::Result<DataFrame, String>> {
    let keys = [col(ev::SESSION_ID), col(ev::CUSTOMER_ID)];
    let from = rename
        .column(crate::features::RENAME_FROM)
        .ctx("identity renames")?
        .as_materialized_series()
        .clone();
    let moved = before
        .clone()
        .lazy()
        .filter(col(ev::CUSTOMER_ID).is_in(lit(from).implode(false), false))
        .collect()
        .ctx("sessions of merged customers")?;
    let gap = moved
        .clone()
        .lazy()
        .filter(col(ev::SESSION_ID).str().starts_with(lit(GAP_PREFIX)))
        .limit(1)
        .collect()
        .ctx("sessions of merged customers")?;
    if let Some(id) = first_value(&gap, ev::CUSTOMER_ID)? {
        return Ok(Err(format!(
            "identity merged customer {id}, whose sessions without a tracker session id are numbered anew"
        )));
    }
    // The new ids as one column (joining the wide rows would copy them all).
    let ids = crate::features::renamed(
        before.select([ev::CUSTOMER_ID]).ctx("sessions")?.lazy(),
        Some(rename),
    )
    .collect()
    .ctx("sessions of merged customers")?;
    let mut carried = before;
    carried
        .with_column(ids.column(ev::CUSTOMER_ID).ctx("sessions")?.clone())
        .ctx("sessions of merged customers")?;
    let known = customers
        .column(ev::CUSTOMER_ID)
        .ctx("customers")?
        .as_materialized_series()
        .clone();
    let carried = carried
        .lazy()
        .filter(col(ev::CUSTOMER_ID).is_in(lit(known).implode(false), false))
        .collect()
        .ctx("sessions of the nights before")?;
    // Only a moved session can now share its keys with another.
    let shared = carried
        .clone()
        .lazy()
        .select(keys.clone())
        .join(
            crate::features::renamed(moved.lazy(), Some(rename))
                .select(keys.clone())
                .unique(None, UniqueKeepStrategy::Any),
            keys.clone(),
            keys.clone(),
            JoinArgs::new(JoinType::Semi),
        )
        .group_by(keys)
        .agg([len().alias("_n")])
        .filter(col("_n").gt(lit(1)))
        .limit(1)
        .collect()
        .ctx("sessions of merged customers")?;
    if let Some(id) = first_value(&shared, ev::SESSION_ID)? {
        return Ok(Err(format!(
            "session {id} was a session of two customers identity merged"
        )));
    }
    Ok(Ok(carried))
}

/// The first value of `column` in `df` (the first row a check found), if any.
fn first_value(df: &DataFrame, column: &str) -> Result<Option<String>> {
    Ok(crate::util::strings(df, column)?
        .into_iter()
        .next()
        .map(Option::unwrap_or_default))
}

/// The sessions of all the events of the nights before (`before`, `carried_over`) and of
/// this night (`now`): a session both have continues, its rows combined as one built from
/// all its events would be. Err (why) when that cannot be exact: a session whose new events
/// do not all come after its old ones (the order of a breadcrumb, landing and exit page).
///
/// Only the sessions of this night's customers are combined and sorted again; the others'
/// rows are merged in as they are (both sorted by customer, no customer in both).
pub fn combine(
    before: DataFrame,
    now: DataFrame,
) -> Result<std::result::Result<crate::util::Merged, String>> {
    let mut laps = crate::util::Laps::start("combining sessions");
    let tonight = now
        .column(ev::CUSTOMER_ID)
        .ctx("sessions")?
        .as_materialized_series()
        .unique()
        .ctx("sessions")?;
    let touched = crate::util::rows_in(&before, ev::CUSTOMER_ID, tonight)?;
    let (again, untouched) = crate::util::split_marked(before, &touched)?;
    laps.lap("split");
    let combined = match combine_sorted(again, now)? {
        Ok(combined) => combined,
        Err(why) => return Ok(Err(why)),
    };
    laps.lap("combined");
    let all = crate::util::merged(untouched, combined, &[ev::CUSTOMER_ID])?;
    laps.lap("merged");
    Ok(Ok(all))
}

/// The sessions kept in `file` (a night's) that a night's sessions (`now`) may continue
/// (one of theirs, of one of their customers or of a customer identity merged), and every
/// session of the customers in `merged` (merged away, or merged into): what `combine`
/// changes of them (`merge_kept` copies the others). Read a row group at a time, never
/// whole.
pub fn kept_of(file: &std::path::Path, now: &DataFrame, merged: &Series) -> Result<DataFrame> {
    let of = |name: &str| -> Result<Series> {
        now.column(name)
            .ctx("the night's sessions")?
            .as_materialized_series()
            .unique()
            .ctx("the night's sessions")
    };
    let mut customers = of(ev::CUSTOMER_ID)?;
    customers.append(merged).ctx("customer ids")?;
    let is_in = |name: &str, values: Series| col(name).is_in(lit(values).implode(false), false);
    let kept = is_in(ev::SESSION_ID, of(ev::SESSION_ID)?)
        .and(is_in(ev::CUSTOMER_ID, customers))
        .or(is_in(ev::CUSTOMER_ID, merged.clone()));
    crate::util::filter_file(file, &|part| {
        part.clone()
            .lazy()
            .select([kept.clone()])
            .collect()
            .ctx("the sessions a night changes")?
            .select_at_idx(0)
            .expect("one column")
            .bool()
            .ctx("the sessions a night changes")
            .cloned()
    })
}

/// Each session's key (its id and customer), as one string, for `merge_kept`.
pub fn keys(sessions: &DataFrame) -> Result<Series> {
    sessions
        .clone()
        .lazy()
        .select([
            concat_str([col(ev::SESSION_ID), col(ev::CUSTOMER_ID)], "\u{1f}", false)
                .alias(ev::SESSION_ID),
        ])
        .collect()
        .ctx("session keys")?
        .column(ev::SESSION_ID)
        .ctx("session keys")
        .map(|c| c.as_materialized_series().clone())
}

/// The order of a night's sessions: by customer, start and session (`combine_sorted`).
const ORDER: [&str; 3] = [ev::CUSTOMER_ID, START, ev::SESSION_ID];

/// Writes to `out`, as a run publishes a frame, what `combine` gives of the sessions kept in
/// `file` (in `ORDER`) and a night's: the kept sessions but those `replaced` (their `keys`),
/// merged with `combined` (in `ORDER`: those replaced, as `combine` left them, and the
/// night's). `file` is read a row group at a time, never whole (100M events over 180 days:
/// 15 million sessions, 6.4 GB held). Gives the rows written.
pub fn merge_kept(
    file: &std::path::Path,
    replaced: &Series,
    combined: DataFrame,
    out: &std::path::Path,
) -> Result<usize> {
    merge_kept_by(file, replaced, combined, out, crate::util::ROW_GROUP)
}

/// `merge_kept`, reading `file` `chunk` rows at a time.
fn merge_kept_by(
    file: &std::path::Path,
    replaced: &Series,
    combined: DataFrame,
    out: &std::path::Path,
    chunk: usize,
) -> Result<usize> {
    let replaced = |chunk: &DataFrame| {
        crate::util::rows_in(&keys(chunk)?.into_frame(), ev::SESSION_ID, replaced.clone())
    };
    crate::util::merge_file(
        file,
        combined,
        &ORDER,
        &replaced,
        |schema| crate::util::ParquetAppender::published(out, schema),
        chunk,
    )
}

/// `combine` of every row of `before` and `now`, sorted whole.
fn combine_sorted(
    before: DataFrame,
    now: DataFrame,
) -> Result<std::result::Result<DataFrame, String>> {
    let keys = [col(ev::SESSION_ID), col(ev::CUSTOMER_ID)];
    let both = now
        .clone()
        .lazy()
        .select([col(ev::SESSION_ID), col(ev::CUSTOMER_ID), col(START)])
        .join(
            before.clone().lazy().select([
                col(ev::SESSION_ID),
                col(ev::CUSTOMER_ID),
                col(END).alias("_end_before"),
            ]),
            keys.clone(),
            keys.clone(),
            JoinArgs::new(JoinType::Inner),
        )
        .collect()
        .ctx("combining sessions")?;
    let early = both
        .clone()
        .lazy()
        .filter(col(START).lt_eq(col("_end_before")))
        .limit(1)
        .collect()
        .ctx("combining sessions")?;
    if let Some(id) = first_value(&early, ev::SESSION_ID)? {
        return Ok(Err(format!(
            "session {id} gained events before its last one"
        )));
    }
    let schema = before.schema().clone();
    // The rows of the sessions both have, marked by one join.
    const AGAIN: &str = "_again";
    let continued = both
        .lazy()
        .select(keys.clone())
        .with_column(lit(true).alias(AGAIN));
    let part = |df: DataFrame, n: u32| df.lazy().with_column(lit(n).alias("_part"));
    let rows = concat([part(before, 0), part(now, 1)], UnionArgs::default())
        .ctx("combining sessions")?
        .join(
            continued,
            keys.clone(),
            keys.clone(),
            crate::util::left_join_ordered(),
        )
        .with_column(col(AGAIN).is_not_null())
        .collect()
        .ctx("combining sessions")?;
    let in_both = rows.clone().lazy().filter(col(AGAIN)).drop(cols([AGAIN]));
    let alone = rows.lazy().filter(col(AGAIN).not()).drop(cols([AGAIN]));
    let first = |c: &str| col(c).drop_nulls().first().alias(c);
    let combined = in_both
        .sort(["_part"], Default::default())
        .group_by_stable(keys)
        .agg([
            col(START).min(),
            col(END).max(),
            ((col(END).max().cast(DataType::Int64) - col(START).min().cast(DataType::Int64))
                / lit(1_000_000i64))
            .alias(DURATION_S),
            col(EVENTS).sum(),
            col(PAGE_VIEWS).sum(),
            // The first (last) page view's page, even without a path, as one build does.
            when(col(PAGE_VIEWS).first().gt(lit(0)))
                .then(col(LANDING_PAGE).first())
                .otherwise(col(LANDING_PAGE).last())
                .alias(LANDING_PAGE),
            when(col(PAGE_VIEWS).last().gt(lit(0)))
                .then(col(EXIT_PAGE).last())
                .otherwise(col(EXIT_PAGE).first())
                .alias(EXIT_PAGE),
            first(ev::PAGE_REFERRER),
            first(ev::REFR_MEDIUM),
            first(ev::MKT_SOURCE),
            first(ev::MKT_MEDIUM),
            first(ev::MKT_CAMPAIGN),
            first(ev::USERAGENT),
            device_class(col(ev::USERAGENT).drop_nulls().first()).alias(DEVICE),
            // Two rows, the nights before's then this night's.
            concat_list([col(BREADCRUMB).first(), col(BREADCRUMB).last()])
                .expect("two lists")
                .list()
                .head(lit(BREADCRUMB_MAX as i64))
                .alias(BREADCRUMB),
            col(HAS_CART_ADD).any(true),
            col(HAS_ORDER).any(true),
        ]);
    let casts: Vec<Expr> = schema
        .iter()
        .map(|(name, dt)| col(name.clone()).cast(dt.clone()))
        .collect();
    let all = concat(
        [alone.select(casts.clone()), combined.select(casts)],
        UnionArgs::default(),
    )
    .ctx("combining sessions")?
    .sort([ev::CUSTOMER_ID, START, ev::SESSION_ID], Default::default())
    .collect()
    .ctx("combining sessions")?;
    Ok(Ok(all))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::utc;

    /// Kept sessions merged with a night's a few rows at a time are the file one merge of
    /// them all writes, whatever the chunks cut: sessions replaced at a chunk's edge, a
    /// customer across two chunks, the night's sessions before, between and after the kept
    /// ones and among a kept customer's.
    #[test]
    fn kept_sessions_merged_a_chunk_at_a_time_are_one_merge_of_them_all() {
        // (customer, start minute, session)
        let frame = |rows: &[(&str, i64, &str)]| {
            let mut df = df!(
                ev::CUSTOMER_ID => rows.iter().map(|r| r.0).collect::<Vec<_>>(),
                START => rows.iter().map(|r| r.1 * 60_000_000).collect::<Vec<_>>(),
                ev::SESSION_ID => rows.iter().map(|r| r.2).collect::<Vec<_>>(),
            )
            .unwrap();
            let start = df.column(START).unwrap().cast(&utc()).unwrap();
            df.with_column(start).unwrap();
            df
        };
        let dir = tempfile::tempdir().unwrap();
        let kept = frame(&[
            ("a", 1, "s1"),
            ("a", 5, "s2"),
            ("b", 2, "s3"),
            ("c", 1, "s4"),
            ("c", 9, "s5"),
            ("d", 3, "s6"),
            ("e", 1, "s7"),
            ("e", 2, "s8"),
            ("e", 8, "s9"),
            ("f", 4, "s10"),
        ]);
        let file = dir.path().join("kept.parquet");
        crate::util::write_parquet(&kept, &file).unwrap();
        // Replaced: c's last session (continued), e's first two (merged away and back).
        let replaced =
            super::keys(&frame(&[("c", 9, "s5"), ("e", 1, "s7"), ("e", 2, "s8")])).unwrap();
        let combined = frame(&[
            ("0", 1, "n1"),
            ("a", 3, "n2"),
            ("c", 9, "s5"),
            ("c", 20, "n3"),
            ("cc", 1, "n4"),
            ("e", 1, "s7"),
            ("e", 9, "n5"),
            ("z", 1, "n6"),
        ]);
        let untouched = kept
            .filter(
                &!&crate::util::rows_in(
                    &super::keys(&kept).unwrap().into_frame(),
                    ev::SESSION_ID,
                    replaced.clone(),
                )
                .unwrap(),
            )
            .unwrap();
        assert_eq!(untouched.height(), 7);
        let whole = dir.path().join("whole.parquet");
        crate::util::merged(untouched.clone(), combined.clone(), &ORDER)
            .unwrap()
            .write_parquet(&whole)
            .unwrap();
        for chunk in [1, 2, 3, 4, 7, 100] {
            let out = dir.path().join(format!("by-{chunk}.parquet"));
            let written = merge_kept_by(&file, &replaced, combined.clone(), &out, chunk).unwrap();
            assert_eq!(written, untouched.height() + combined.height());
            assert!(
                std::fs::read(&out).unwrap() == std::fs::read(&whole).unwrap(),
                "chunks of {chunk}:\n{}",
                crate::util::read_parquet(&out).unwrap()
            );
        }
    }

    /// (event_id, customer, tracker session, minute, event_type, page path)
    type Row<'a> = (&'a str, &'a str, Option<&'a str>, i64, &'a str, &'a str);

    fn events(rows: &[Row]) -> DataFrame {
        DataFrame::new(
            rows.len(),
            vec![
                Column::new(
                    ev::EVENT_ID.into(),
                    rows.iter().map(|r| r.0).collect::<Vec<_>>(),
                ),
                Column::new(
                    ev::CUSTOMER_ID.into(),
                    rows.iter().map(|r| r.1).collect::<Vec<_>>(),
                ),
                Column::new(
                    ev::DOMAIN_SESSIONID.into(),
                    rows.iter().map(|r| r.2).collect::<Vec<_>>(),
                ),
                Column::new(
                    ev::CLIENT_SESSIONID.into(),
                    rows.iter().map(|_| None::<&str>).collect::<Vec<_>>(),
                ),
                Column::new(
                    ev::TSTAMP.into(),
                    rows.iter().map(|r| r.3 * 60_000_000).collect::<Vec<_>>(),
                )
                .cast(&utc())
                .unwrap(),
                Column::new(
                    ev::EVENT_TYPE.into(),
                    rows.iter().map(|r| r.4).collect::<Vec<_>>(),
                ),
                Column::new(
                    ev::PAGE_PATH.into(),
                    rows.iter().map(|r| r.5).collect::<Vec<_>>(),
                ),
                Column::new(
                    ev::PAGE_REFERRER.into(),
                    rows.iter().map(|_| None::<&str>).collect::<Vec<_>>(),
                ),
                Column::new(
                    ev::REFR_MEDIUM.into(),
                    rows.iter().map(|_| None::<&str>).collect::<Vec<_>>(),
                ),
                Column::new(
                    ev::MKT_SOURCE.into(),
                    rows.iter().map(|_| None::<&str>).collect::<Vec<_>>(),
                ),
                Column::new(
                    ev::MKT_MEDIUM.into(),
                    rows.iter().map(|_| None::<&str>).collect::<Vec<_>>(),
                ),
                Column::new(
                    ev::MKT_CAMPAIGN.into(),
                    rows.iter().map(|_| None::<&str>).collect::<Vec<_>>(),
                ),
                Column::new(
                    ev::USERAGENT.into(),
                    rows.iter().map(|_| None::<&str>).collect::<Vec<_>>(),
                ),
            ],
        )
        .unwrap()
    }

    /// (customer, session) of every session, in order; gap sessions as "gap".
    fn keys(sessions: &DataFrame) -> Vec<(String, String)> {
        let text = |c: &str| crate::util::strings(sessions, c).unwrap();
        text(ev::CUSTOMER_ID)
            .into_iter()
            .zip(text(ev::SESSION_ID))
            .map(|(c, s)| {
                let s = s.unwrap();
                let s = if s.starts_with(GAP_PREFIX) {
                    "gap".into()
                } else {
                    s
                };
                (c.unwrap(), s)
            })
            .collect()
    }

    fn rename(pairs: &[(&str, &str)]) -> DataFrame {
        DataFrame::new(
            pairs.len(),
            vec![
                Column::new(
                    crate::features::RENAME_FROM.into(),
                    pairs.iter().map(|p| p.0).collect::<Vec<_>>(),
                ),
                Column::new(
                    crate::features::RENAME_TO.into(),
                    pairs.iter().map(|p| p.1).collect::<Vec<_>>(),
                ),
            ],
        )
        .unwrap()
    }

    #[test]
    fn sessions_are_carried_over_under_new_ids_unless_a_merge_cannot_be_exact() {
        let (_, before) = sessionize(
            events(&[
                ("e1", "a", Some("s1"), 0, "page_view", "/"),
                ("e2", "b", Some("s2"), 5, "page_view", "/"),
                ("e3", "c", None, 7, "page_view", "/"),
                ("e4", "d", Some("s1"), 9, "page_view", "/"),
                ("e5", "gone", Some("s3"), 9, "page_view", "/"),
            ]),
            30,
            None,
        )
        .unwrap();
        let customers = |ids: &[&str]| {
            DataFrame::new(
                ids.len(),
                vec![Column::new(ev::CUSTOMER_ID.into(), ids.to_vec())],
            )
            .unwrap()
        };
        let now = customers(&["a", "c", "d"]);
        // b merged into a; "gone" is no customer now (suppressed).
        let mut carried = keys(
            &carried_over(before.clone(), &rename(&[("b", "a")]), &now)
                .unwrap()
                .unwrap(),
        );
        carried.sort();
        let pair = |c: &str, s: &str| (c.to_string(), s.to_string());
        assert_eq!(
            carried,
            [
                pair("a", "s1"),
                pair("a", "s2"),
                pair("c", "gap"),
                pair("d", "s1")
            ]
        );
        // c's sessions without a tracker session are numbered by customer.
        let why = carried_over(before.clone(), &rename(&[("c", "a")]), &now)
            .unwrap()
            .unwrap_err();
        assert!(why.contains("identity merged customer c,"), "{why}");
        // a and d both had tracker session s1: merged, it would be one session twice.
        let why = carried_over(before, &rename(&[("d", "a")]), &now)
            .unwrap()
            .unwrap_err();
        assert!(
            why.contains("session s1 was a session of two customers"),
            "{why}"
        );
    }

    #[test]
    fn a_continued_session_is_combined_as_one_build_unless_it_gained_earlier_events() {
        let all = [
            ("e1", "a", Some("s1"), 0, "page_view", "/"),
            ("e2", "b", Some("s2"), 1, "page_view", "/b"),
            ("e3", "a", Some("s1"), 5, "cart_add", "/p/1"),
            ("e4", "a", Some("s1"), 9, "page_view", "/cart"),
            ("e5", "b", Some("s3"), 100, "page_view", "/c"),
            ("e6", "c", Some("s4"), 3, "page_view", "/"),
        ];
        let (_, once) = sessionize(events(&all), 30, None).unwrap();
        let (_, before) = sessionize(events(&all[..3]), 30, None).unwrap();
        let (_, now) = sessionize(events(&all[3..]), 30, None).unwrap();
        let combined = combine(before.clone(), now)
            .unwrap()
            .unwrap()
            .gather()
            .unwrap();
        assert!(combined.equals_missing(&once), "{combined}\n{once}");
        let (_, late) = sessionize(
            events(&[("e7", "a", Some("s1"), 2, "page_view", "/x")]),
            30,
            None,
        )
        .unwrap();
        let Err(why) = combine(before, late).unwrap() else {
            panic!("a session that gained an event before its last one combined");
        };
        assert!(
            why.contains("session s1 gained events before its last one"),
            "{why}"
        );
    }

    #[test]
    fn a_tracker_session_split_between_two_customers_is_a_session_of_each() {
        let (_, sessions) = sessionize(
            events(&[
                ("e1", "a", Some("s1"), 0, "page_view", "/"),
                ("e2", "b", Some("s1"), 5, "page_view", "/login"),
                ("e3", "a", Some("s1"), 7, "page_view", "/p/1"),
            ]),
            30,
            None,
        )
        .unwrap();
        let rows: Vec<(String, String, i64)> = (0..sessions.height())
            .map(|i| {
                let text = |c: &str| {
                    sessions
                        .column(c)
                        .unwrap()
                        .str()
                        .unwrap()
                        .get(i)
                        .unwrap()
                        .to_string()
                };
                let n = sessions
                    .column(EVENTS)
                    .unwrap()
                    .get(i)
                    .unwrap()
                    .try_extract::<i64>()
                    .unwrap();
                (text(ev::CUSTOMER_ID), text(ev::SESSION_ID), n)
            })
            .collect();
        assert_eq!(
            rows,
            [("a".into(), "s1".into(), 2), ("b".into(), "s1".into(), 1)]
        );
    }

    #[test]
    fn sessions_do_not_depend_on_the_order_of_the_events_which_keep_theirs() {
        let rows: Vec<Row> = vec![
            ("e1", "a", Some("s1"), 0, "page_view", "/"),
            ("e2", "a", Some("s1"), 5, "cart_add", "/p/1"),
            ("e3", "a", Some("s1"), 7, "page_view", "/p/1"),
            ("e4", "a", Some("s1"), 9, "page_view", "/cart"),
            ("e5", "b", None, 100, "page_view", "/x"),
            ("e6", "b", None, 110, "page_view", "/y"),
            ("e7", "b", None, 110, "page_view", "/z"),
            ("e8", "b", None, 170, "page_view", "/w"),
        ];
        let (in_order, sessions) = sessionize(events(&rows), 30, None).unwrap();
        let mut shuffled = rows.clone();
        shuffled.reverse();
        shuffled.swap(1, 5);
        let (out, again) = sessionize(events(&shuffled), 30, None).unwrap();
        assert!(sessions.equals_missing(&again), "{sessions}\n{again}");
        // The events come back as they went in, each with its session.
        let ids = |df: &DataFrame| crate::util::strings(df, ev::EVENT_ID).unwrap();
        let expected: Vec<Option<String>> =
            shuffled.iter().map(|r| Some(r.0.to_string())).collect();
        assert_eq!(ids(&out), expected);
        let session_of = |df: &DataFrame| {
            let mut pairs: Vec<_> = ids(df)
                .into_iter()
                .zip(crate::util::strings(df, ev::SESSION_ID).unwrap())
                .collect();
            pairs.sort();
            pairs
        };
        assert_eq!(session_of(&in_order), session_of(&out));
    }

    #[test]
    fn sessions_whose_hashes_collide_are_sorted_by_their_ids_instead() {
        // Two customers' sessions interleave in time; with every session given one hash
        // their rows would interleave too, so the runs are worked out on the ids instead.
        let rows: Vec<Row> = vec![
            ("e1", "a", Some("s1"), 0, "page_view", "/"),
            ("e2", "b", Some("s2"), 1, "page_view", "/x"),
            ("e3", "a", Some("s1"), 2, "page_view", "/p/1"),
            ("e4", "a", Some("s3"), 3, "page_view", "/p/2"),
            ("e5", "b", Some("s2"), 4, "cart_add", "/p/1"),
            ("e6", "a", Some("s1"), 5, "page_view", "/cart"),
        ];
        let rows = events(&rows)
            .lazy()
            .with_column(col(ev::DOMAIN_SESSIONID).alias(ev::SESSION_ID))
            .select(SESSION_COLUMNS.map(col))
            .collect()
            .unwrap();
        let hashed = sessions_in_runs(rows.clone(), pair_hash).unwrap();
        let collided = sessions_in_runs(rows, |_, _| 7).unwrap();
        let runs = |df: &DataFrame| -> Vec<(u32, String, String)> {
            let run = df.column(RUN).unwrap().u32().unwrap().clone();
            let ids = crate::util::strings(df, ev::EVENT_ID).unwrap();
            let sessions = crate::util::strings(df, ev::SESSION_ID).unwrap();
            let mut rows: Vec<_> = run
                .into_no_null_iter()
                .zip(sessions)
                .zip(ids)
                .map(|((r, s), e)| (r, s.unwrap(), e.unwrap()))
                .collect();
            // The runs may come in another order; within each, the events in time order.
            rows.sort_by(|a, b| (&a.1, a.0).cmp(&(&b.1, b.0)));
            rows
        };
        assert_eq!(collided.column(RUN).unwrap().u32().unwrap().max(), Some(2));
        let events_of = |rows: Vec<(u32, String, String)>| -> Vec<(String, Vec<String>)> {
            let mut by_session: Vec<(String, Vec<String>)> = Vec::new();
            for (_, s, e) in rows {
                match by_session.last_mut() {
                    Some((last, events)) if *last == s => events.push(e),
                    _ => by_session.push((s, vec![e])),
                }
            }
            by_session
        };
        let expected = vec![
            (
                "s1".to_string(),
                vec!["e1".into(), "e3".into(), "e6".into()],
            ),
            ("s2".to_string(), vec!["e2".into(), "e5".into()]),
            ("s3".to_string(), vec!["e4".into()]),
        ];
        assert_eq!(events_of(runs(&hashed)), expected);
        assert_eq!(events_of(runs(&collided)), expected);
    }

    #[test]
    fn tracker_sessions_and_inactivity_gaps() {
        // Minutes. Customer a: tracker session s1 (3 page views). Customer b: no tracker
        // session; gaps of 10, 29, 31 minutes -> two sessions (the 31-minute gap splits).
        let (ev_out, sessions) = sessionize(
            events(&[
                ("e1", "a", Some("s1"), 0, "page_view", "/"),
                ("e2", "a", Some("s1"), 5, "cart_add", "/p/1"),
                ("e3", "a", Some("s1"), 7, "page_view", "/p/1"),
                ("e4", "a", Some("s1"), 9, "page_view", "/cart"),
                ("e5", "b", None, 100, "page_view", "/x"),
                ("e6", "b", None, 110, "page_view", "/y"),
                ("e7", "b", None, 139, "page_view", "/z"),
                ("e8", "b", None, 170, "page_view", "/w"),
            ]),
            30,
            None,
        )
        .unwrap();
        assert_eq!(
            ev_out.height(),
            8,
            "every event lands in exactly one session"
        );
        assert_eq!(sessions.height(), 3);
        let s1 = sessions
            .clone()
            .lazy()
            .filter(col(ev::SESSION_ID).eq(lit("s1")))
            .collect()
            .unwrap();
        assert_eq!(
            s1.column(PAGE_VIEWS)
                .unwrap()
                .get(0)
                .unwrap()
                .try_extract::<i64>()
                .unwrap(),
            3
        );
        assert_eq!(
            s1.column(LANDING_PAGE).unwrap().str().unwrap().get(0),
            Some("/")
        );
        assert_eq!(
            s1.column(EXIT_PAGE).unwrap().str().unwrap().get(0),
            Some("/cart")
        );
        assert_eq!(
            s1.column(DURATION_S)
                .unwrap()
                .get(0)
                .unwrap()
                .try_extract::<i64>()
                .unwrap(),
            9 * 60
        );
        assert!(
            s1.column(HAS_CART_ADD)
                .unwrap()
                .bool()
                .unwrap()
                .get(0)
                .unwrap()
        );
        let crumb = s1
            .column(BREADCRUMB)
            .unwrap()
            .list()
            .unwrap()
            .get_as_series(0)
            .unwrap();
        let crumb: Vec<&str> = crumb.str().unwrap().iter().flatten().collect();
        assert_eq!(crumb, ["/", "/p/1", "/cart"]);
        let b: Vec<i64> = sessions
            .clone()
            .lazy()
            .filter(col(ev::CUSTOMER_ID).eq(lit("b")))
            .collect()
            .unwrap()
            .column(EVENTS)
            .unwrap()
            .as_materialized_series()
            .cast(&DataType::Int64)
            .unwrap()
            .i64()
            .unwrap()
            .iter()
            .flatten()
            .collect();
        assert_eq!(b, [3, 1]);
    }
}
