//! Destinations: the file formats audiences are delivered in, each with the identifier
//! normalisation its platform publishes. One generic hasher gets at least one platform
//! wrong (Google and UID2 drop dots and +tags of gmail addresses, Meta does not; Google wants
//! phones as `+E.164`, Meta digits only; UID2 wants Base64 of the raw hash bytes), so each
//! platform has its own normaliser here, tested against the platform's examples.

use base64::Engine;
use sha2::{Digest, Sha256};

/// What a destination is used for; decides which consent a customer needs to be in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Purpose {
    /// Internal analysis and CRM joins on propel's own ids: no consent needed (suppressed
    /// customers are never anywhere).
    Internal,
    /// Advertising platforms: advertising consent needed.
    Ads,
    /// E-mail marketing: e-mail consent needed.
    Email,
}

/// A destination format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Destination {
    /// customer_id, email_sha256, score, percentile, decile, reasons (CSV).
    Csv,
    /// The same columns as Parquet.
    Parquet,
    /// Google Ads Customer Match, hashed upload template (`Email`, `Phone`, ... headers).
    GoogleCustomerMatch,
    /// Meta (Facebook) custom audience customer list (`email`, `phone` keys, hashed).
    MetaCustomAudience,
    /// The Trade Desk CRM upload of UID2-hashed e-mails (PiiType `EmailHashedUnifiedId2`):
    /// one Base64 SHA-256 per line, no header.
    TtdUid2,
    /// E-mail marketing list: hashed e-mail by default, raw e-mail only where the job
    /// explicitly allows it (`privacy.raw_email_destinations`).
    EmailList,
}

impl Destination {
    pub const ALL: [Destination; 6] = [
        Destination::Csv,
        Destination::Parquet,
        Destination::GoogleCustomerMatch,
        Destination::MetaCustomAudience,
        Destination::TtdUid2,
        Destination::EmailList,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Destination::Csv => "csv",
            Destination::Parquet => "parquet",
            Destination::GoogleCustomerMatch => "google_customer_match",
            Destination::MetaCustomAudience => "meta_custom_audience",
            Destination::TtdUid2 => "ttd_uid2",
            Destination::EmailList => "email_list",
        }
    }

    pub fn from_name(name: &str) -> Option<Destination> {
        Destination::ALL.into_iter().find(|d| d.name() == name)
    }

    pub fn purpose(self) -> Purpose {
        match self {
            Destination::Csv | Destination::Parquet => Purpose::Internal,
            Destination::GoogleCustomerMatch
            | Destination::MetaCustomAudience
            | Destination::TtdUid2 => Purpose::Ads,
            Destination::EmailList => Purpose::Email,
        }
    }

    /// File name of the member list (deltas add `.added` / `.removed` before the extension).
    pub fn file_name(self) -> String {
        match self {
            Destination::Parquet => "members.parquet".into(),
            Destination::TtdUid2 => "ttd_uid2.txt".into(),
            d => format!("{}.csv", d.name()),
        }
    }

    /// Whether a member needs an e-mail or phone (platform match keys) to be exported.
    pub fn needs_contact(self) -> bool {
        matches!(
            self,
            Destination::GoogleCustomerMatch
                | Destination::MetaCustomAudience
                | Destination::TtdUid2
                | Destination::EmailList
        )
    }
}

/// Lower-case hex SHA-256.
pub fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// Lower-case hex SHA-256 of bytes (file checksums).
pub fn sha256_hex_bytes(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// Base64 (standard alphabet, padded) of the 32 SHA-256 bytes, as UID2 wants.
pub fn sha256_base64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(Sha256::digest(s.as_bytes()))
}

/// Trimmed, lower case; `None` when it is not an address (no single `@` between text).
fn basic_email(raw: &str) -> Option<(String, String)> {
    split_email(raw.trim().to_lowercase())
}

fn split_email(e: String) -> Option<(String, String)> {
    let (local, domain) = e.split_once('@')?;
    (!local.is_empty() && domain.contains('.') && !domain.contains('@'))
        .then(|| (local.to_string(), domain.to_string()))
}

/// Gmail addresses: dots in the local part are not significant, nor is a `+tag`.
fn without_gmail_aliases(local: &str, domain: &str) -> String {
    if domain == "gmail.com" || domain == "googlemail.com" {
        let base = local.split('+').next().unwrap_or(local);
        format!("{}@{domain}", base.replace('.', ""))
    } else {
        format!("{local}@{domain}")
    }
}

/// Google Customer Match: trimmed, lower case, and for gmail.com / googlemail.com no dots and
/// no `+tag` before the `@`.
pub fn google_email(raw: &str) -> Option<String> {
    basic_email(raw).map(|(l, d)| without_gmail_aliases(&l, &d))
}

/// Meta: trimmed and lower case; Meta keeps gmail dots and tags as typed.
pub fn meta_email(raw: &str) -> Option<String> {
    basic_email(raw).map(|(l, d)| format!("{l}@{d}"))
}

/// UID2: trimmed, ASCII letters in lower case (as the UID2 operator does); for gmail.com (not
/// googlemail.com) the dots and the `+tag` of the local part go.
pub fn uid2_email(raw: &str) -> Option<String> {
    split_email(raw.trim().to_ascii_lowercase()).map(|(l, d)| {
        if d == "gmail.com" {
            without_gmail_aliases(&l, &d)
        } else {
            format!("{l}@{d}")
        }
    })
}

/// A phone number in E.164 (`+441234567890`), parsed with libphonenumber's rules; numbers
/// without a `+` country code are read as national numbers of `default_country`.
pub fn e164(raw: &str, default_country: Option<phonenumber::country::Id>) -> Option<String> {
    let number = phonenumber::parse(default_country, raw.trim()).ok()?;
    phonenumber::is_valid(&number)
        .then(|| number.format().mode(phonenumber::Mode::E164).to_string())
}

/// Meta: the E.164 digits without the `+` (country code included, no leading zeros).
pub fn meta_phone(raw: &str, default_country: Option<phonenumber::country::Id>) -> Option<String> {
    e164(raw, default_country).map(|p| p.trim_start_matches('+').to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use phonenumber::country::Id;

    #[test]
    fn google_normalises_gmail_but_keeps_other_domains() {
        assert_eq!(
            google_email("  Jane.Doe+promo@Gmail.com ").as_deref(),
            Some("janedoe@gmail.com")
        );
        assert_eq!(
            google_email("jane.doe@googlemail.com").as_deref(),
            Some("janedoe@googlemail.com")
        );
        assert_eq!(
            google_email("Jane.Doe+x@Example.co.uk").as_deref(),
            Some("jane.doe+x@example.co.uk")
        );
        assert_eq!(google_email("not an address"), None);
    }

    #[test]
    fn meta_keeps_what_was_typed_apart_from_case_and_spaces() {
        assert_eq!(
            meta_email(" Jane.Doe+promo@Gmail.com").as_deref(),
            Some("jane.doe+promo@gmail.com")
        );
    }

    #[test]
    fn uid2_drops_gmail_aliases_only_for_gmail() {
        assert_eq!(
            uid2_email("Jane.Doe+promo@gmail.com").as_deref(),
            Some("janedoe@gmail.com")
        );
        assert_eq!(
            uid2_email("jane.doe@googlemail.com").as_deref(),
            Some("jane.doe@googlemail.com")
        );
    }

    /// Published examples: Google's Data Manager (ALEXZ), Meta's conversions API page
    /// (John_Smith, (650)555-1212), the UID2 normalisation page and SDK tests.
    #[test]
    fn hashes_match_the_platforms_published_examples() {
        let google = |e: &str| sha256_hex(&google_email(e).unwrap());
        assert_eq!(
            google("  ALEXZ@example.com   "),
            "509e933019bb285a134a9334b8bb679dff79d0ce023d529af4bd744d47b4fd8a"
        );
        assert_eq!(
            sha256_hex(&e164("   +1-800-555-0100", None).unwrap()),
            "fb4f73a6ec5fdb7077d564cdd22c3554b43ce49168550c3b12c547b78c517b30"
        );
        assert_eq!(
            sha256_hex(&meta_email("John_Smith@gmail.com").unwrap()),
            "62a14e44f765419d10fea99367361a727c12365e2520f32218d505ed9aa0f62f"
        );
        assert_eq!(
            sha256_hex(&meta_phone("(650)555-1212", Some(Id::US)).unwrap()),
            "e323ec626319ca94ee8bff2e4c87cf613be6ea19919ed1364124e16807ab3176"
        );
        let uid2 = |e: &str| sha256_base64(&uid2_email(e).unwrap());
        for (raw, expected) in [
            (
                "USER@example.com",
                "tMmiiTI7IaAcPpQPFQ65uMVCWH8av9jw4cwf/F5HVRQ=",
            ),
            (
                "My.Email@example.com",
                "4itTvG+HEnTzpiqzejyu1yFPwU1nYhWpaiQvz62hyB8=",
            ),
            (
                "JaneSaoirse+Work@example.com",
                "KKruSBUjDNO069iMUVImVQZm6RrAGZKeOtrD9mwogYA=",
            ),
            (
                "JaneSaoirse+Work@gmail.com",
                "ku4mBX7Z3qJTXWyLFB1INzkyR2WZGW4ANSJUiW21iI8=",
            ),
            (
                "JANE.SAOIRSE@gmail.com",
                "ku4mBX7Z3qJTXWyLFB1INzkyR2WZGW4ANSJUiW21iI8=",
            ),
            (
                "TEst.TEst+123@GMail.Com",
                "LkLfFrut8Tc3h/fIvYDiBKSbaMiau/DtaLBPQYszdMw=",
            ),
            (
                "  testtest@test.com  ",
                "d1Lr/s4GLLX3SvQVMoQdIMfbQPMAGZYry+2V+0pZlQg=",
            ),
        ] {
            assert_eq!(uid2(raw), expected, "{raw}");
        }
        assert_eq!(
            sha256_base64(&e164("1 (234) 567-8901", Some(Id::US)).unwrap()),
            "EObwtHBUqDNZR33LNSMdtt5cafsYFuGmuY4ZLenlue4="
        );
        // One address, three platforms, three hashes.
        let raw = "jane.doe+promo@Gmail.com";
        assert_eq!(
            google(raw),
            "d6117306485ed0e50afab3ac871e98f81699151f30281527d63ff5f233656c69"
        );
        assert_eq!(
            sha256_hex(&meta_email(raw).unwrap()),
            "5f0d1df1fc49e30424381b57b1d4c73e067772a4267dde043a19b026935602c8"
        );
        assert_eq!(uid2(raw), "1hFzBkhe0OUK+rOshx6Y+BaZFR8wKBUn1j/18jNlbGk=");
    }

    #[test]
    fn phones_become_e164_for_google_and_digits_for_meta() {
        assert_eq!(
            e164("(415) 555-2671", Some(Id::US)).as_deref(),
            Some("+14155552671")
        );
        assert_eq!(
            e164("+44 20 7946 0958", None).as_deref(),
            Some("+442079460958")
        );
        assert_eq!(
            e164("020 7946 0958", Some(Id::GB)).as_deref(),
            Some("+442079460958")
        );
        assert_eq!(
            meta_phone("020 7946 0958", Some(Id::GB)).as_deref(),
            Some("442079460958")
        );
        assert_eq!(e164("12", Some(Id::GB)), None, "not a phone number");
        assert_eq!(
            e164("020 7946 0958", None),
            None,
            "national without a country"
        );
    }
}
