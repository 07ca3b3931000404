//! Per-customer contact points and consent as of the run: the latest e-mail and phone a
//! customer gave, and the latest thing their events said about consent to advertising and to
//! e-mail marketing (consent banner choices, withdrawals, CRM consent fields). Contact points
//! stay in memory: they leave only as the hashes each destination wants.

use polars::prelude::*;

use crate::config::Privacy;
use crate::error::{Context, Result};
use crate::schema::event as ev;

/// Columns of [`contacts`].
pub mod column {
    pub const EMAIL: &str = "contact_email";
    pub const PHONE: &str = "contact_phone";
    /// Final decision: may the customer be in advertising / e-mail destinations.
    pub const ADS_OK: &str = "ads_consent";
    pub const EMAIL_OK: &str = "email_consent";
    /// Why not, when not: `refused` (an event said no) or `unknown` (no signal, and the job
    /// does not assume consent).
    pub const ADS_WHY_NOT: &str = "ads_consent_missing";
    pub const EMAIL_WHY_NOT: &str = "email_consent_missing";
}

/// The signals whose latest value decides a customer's contacts and consent, each kept with
/// the time (`<signal>_t`) and event id (`<signal>_k`) it was given at.
const SIGNALS: [&str; 4] = [column::EMAIL, column::PHONE, "_ads", "_email"];

fn at_time(signal: &str) -> String {
    format!("{signal}_t")
}

fn at_event(signal: &str) -> String {
    format!("{signal}_k")
}

/// Per customer of `customers` (a `customer_id` column, repeats allowed), the latest non-null
/// value of each signal of `rows` (by time, then event id) with its time and event id: one
/// row per customer, sorted.
fn latest_signals(customers: LazyFrame, rows: LazyFrame) -> Result<DataFrame> {
    // One row per customer, whatever they said; each signal worked out on the few rows that
    // carry it (consent and contact points are rare next to all events).
    let rows = rows.cache();
    let mut out = customers.unique(None, UniqueKeepStrategy::Any);
    for s in SIGNALS {
        // The rows at the signal's latest time; of those, the largest event id. Sorting only
        // the tied rows keeps this cheap.
        let (t, k) = (col(at_time(s)), col(at_event(s)));
        let at = t.clone().eq(t.clone().max());
        let latest = rows
            .clone()
            .select([col(ev::CUSTOMER_ID), col(s), t.clone(), k.clone()])
            .filter(t.clone().is_not_null())
            .group_by([col(ev::CUSTOMER_ID)])
            .agg([
                col(s)
                    .filter(at.clone())
                    .sort_by(
                        [k.clone().filter(at.clone())],
                        SortMultipleOptions::default(),
                    )
                    .last()
                    .alias(s),
                t.max(),
                k.filter(at).max(),
            ]);
        out = out.join(
            latest,
            [col(ev::CUSTOMER_ID)],
            [col(ev::CUSTOMER_ID)],
            JoinArgs::new(JoinType::Left),
        );
    }
    out.sort([ev::CUSTOMER_ID], Default::default())
        .collect()
        .ctx("consent and contact points per customer")
}

/// What the events say about each customer's contact points and consent (the latest of each
/// signal); signals of two sets of events combine into those of both (`combine_signals`).
pub fn signals(events: &DataFrame) -> Result<DataFrame> {
    // An e-mail typed as the login id counts as the customer's e-mail.
    let email = coalesce(&[
        col(ev::EMAIL),
        when(col(ev::USER_ID).str().contains_literal(lit("@")))
            .then(col(ev::USER_ID))
            .otherwise(lit(NULL).cast(DataType::String)),
    ]);
    let values = [
        email.alias(column::EMAIL),
        col(ev::PHONE).alias(column::PHONE),
        col(ev::CONSENT_ADS).alias("_ads"),
        col(ev::CONSENT_EMAIL).alias("_email"),
    ];
    // Only the events that give a signal are worked on (a few of all).
    let gives_one = values
        .iter()
        .map(|v| v.clone().is_not_null())
        .reduce(|a, b| a.or(b))
        .expect("signals");
    let mut exprs = vec![col(ev::CUSTOMER_ID)];
    for (s, v) in SIGNALS.into_iter().zip(values) {
        let given = v.clone().is_not_null();
        let when_given = |e: Expr| when(given.clone()).then(e).otherwise(lit(NULL));
        exprs.extend([
            v,
            when_given(col(ev::TSTAMP).cast(DataType::Int64)).alias(at_time(s)),
            when_given(col(ev::EVENT_ID)).alias(at_event(s)),
        ]);
    }
    let events = events.clone().lazy();
    latest_signals(
        events.clone().select([col(ev::CUSTOMER_ID)]),
        events.filter(gives_one).select(exprs),
    )
}

/// The signals of all the events of `parts`; `rename` as in `features::Daily::combine`.
pub fn combine_signals(parts: Vec<DataFrame>, rename: Option<&DataFrame>) -> Result<DataFrame> {
    let lf = crate::features::all_renamed(parts, rename)?.cache();
    latest_signals(lf.clone().select([col(ev::CUSTOMER_ID)]), lf)
}

fn decision(signal: &str, assume: bool, ok: &str, why_not: &str) -> [Expr; 2] {
    [
        col(signal).fill_null(lit(assume)).alias(ok),
        when(col(signal).eq(lit(false)))
            .then(lit("refused"))
            .when(col(signal).is_null().and(lit(!assume)))
            .then(lit("unknown"))
            .otherwise(lit(NULL).cast(DataType::String))
            .alias(why_not),
    ]
}

/// One row per customer with events: contact points and consent decisions (see [`column`]),
/// from the customers' `signals`.
pub fn contacts(signals: &DataFrame, privacy: &Privacy) -> Result<DataFrame> {
    let mut consent_cols = vec![col(ev::CUSTOMER_ID), col(column::EMAIL), col(column::PHONE)];
    consent_cols.extend(decision(
        "_ads",
        privacy.assume_ads_consent,
        column::ADS_OK,
        column::ADS_WHY_NOT,
    ));
    consent_cols.extend(decision(
        "_email",
        privacy.assume_email_consent,
        column::EMAIL_OK,
        column::EMAIL_WHY_NOT,
    ));
    signals
        .clone()
        .lazy()
        .select(consent_cols)
        .collect()
        .ctx("consent and contact points per customer")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latest_signal_wins_and_silence_is_no_consent() {
        let t = |s: i64| s * 1_000_000;
        let events = df!(
            ev::CUSTOMER_ID => ["a", "a", "a", "b", "c"],
            ev::TSTAMP => [t(3), t(1), t(2), t(1), t(1)],
            ev::EVENT_ID => ["3", "1", "2", "4", "5"],
            ev::EMAIL => [None, Some("old@x.com"), Some("New@x.com"), None, None],
            ev::USER_ID => [None, None, None, Some("b@y.com"), Some("123")],
            ev::PHONE => [None::<&str>, None, None, None, None],
            ev::CONSENT_ADS => [Some(false), Some(true), None, Some(true), None],
            ev::CONSENT_EMAIL => [None, Some(true), None, None, None],
        )
        .unwrap();
        let c = contacts(&signals(&events).unwrap(), &Privacy::default()).unwrap();
        let get = |name: &str| {
            c.column(name)
                .unwrap()
                .as_materialized_series()
                .iter()
                .map(|v| v.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(get(column::EMAIL), ["\"New@x.com\"", "\"b@y.com\"", "null"]);
        assert_eq!(get(column::ADS_OK), ["false", "true", "false"]);
        assert_eq!(
            get(column::ADS_WHY_NOT),
            ["\"refused\"", "null", "\"unknown\""]
        );
        assert_eq!(get(column::EMAIL_OK), ["true", "false", "false"]);
        // A job that assumes consent where there is no signal (not GDPR opt-in).
        let lenient = Privacy {
            assume_ads_consent: true,
            ..Privacy::default()
        };
        let c = contacts(&signals(&events).unwrap(), &lenient).unwrap();
        let ok: Vec<Option<bool>> = c
            .column(column::ADS_OK)
            .unwrap()
            .bool()
            .unwrap()
            .iter()
            .collect();
        assert_eq!(ok, [Some(false), Some(true), Some(true)]);
    }
}
