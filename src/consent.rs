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

/// The last non-null value of `name`, in event time order.
fn latest(name: &str, alias: &str) -> Expr {
    col(name)
        .sort_by(
            [col(ev::TSTAMP), col(ev::EVENT_ID)],
            SortMultipleOptions::default(),
        )
        .drop_nulls()
        .last()
        .alias(alias)
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

/// One row per customer with events: contact points and consent decisions (see [`column`]).
pub fn contacts(events: &DataFrame, privacy: &Privacy) -> Result<DataFrame> {
    // An e-mail typed as the login id counts as the customer's e-mail.
    let email = coalesce(&[
        col(ev::EMAIL),
        when(col(ev::USER_ID).str().contains_literal(lit("@")))
            .then(col(ev::USER_ID))
            .otherwise(lit(NULL).cast(DataType::String)),
    ]);
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
    events
        .clone()
        .lazy()
        .select([
            col(ev::CUSTOMER_ID),
            col(ev::TSTAMP),
            col(ev::EVENT_ID),
            email.alias(column::EMAIL),
            col(ev::PHONE),
            col(ev::CONSENT_ADS),
            col(ev::CONSENT_EMAIL),
        ])
        .group_by([col(ev::CUSTOMER_ID)])
        .agg([
            latest(column::EMAIL, column::EMAIL),
            latest(ev::PHONE, column::PHONE),
            latest(ev::CONSENT_ADS, "_ads"),
            latest(ev::CONSENT_EMAIL, "_email"),
        ])
        .select(consent_cols)
        .sort([ev::CUSTOMER_ID], Default::default())
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
        let c = contacts(&events, &Privacy::default()).unwrap();
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
        let c = contacts(&events, &lenient).unwrap();
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
