//! Column names, in one place: the canonical event that every input layout is normalised
//! into, the Snowplow Lake Loader columns it is read from, and the per-customer outputs.

/// The canonical event: one row per (deduplicated) event, whatever layout it came from.
pub mod event {
    pub const EVENT_ID: &str = "event_id";
    /// When the event happened: Snowplow's `derived_tstamp`, else `collector_tstamp` (UTC).
    pub const TSTAMP: &str = "tstamp";
    pub const COLLECTOR_TSTAMP: &str = "collector_tstamp";
    /// One of [`super::EventType`]'s names.
    pub const EVENT_TYPE: &str = "event_type";
    pub const CHANNEL: &str = "channel";
    pub const USER_ID: &str = "user_id";
    pub const DOMAIN_USERID: &str = "domain_userid";
    pub const NETWORK_USERID: &str = "network_userid";
    pub const DOMAIN_SESSIONID: &str = "domain_sessionid";
    /// Mobile trackers' session id and user id (client_session context).
    pub const CLIENT_SESSIONID: &str = "client_session_id";
    pub const CLIENT_USERID: &str = "client_session_userid";
    /// Raw e-mail (flat layout); hashed by identity, never written out.
    pub const EMAIL: &str = "email";
    /// Offline customer or loyalty number (flat layout).
    pub const LOYALTY_ID: &str = "loyalty_id";
    /// Raw phone number as given (flat layout); normalised per destination, never written
    /// out raw.
    pub const PHONE: &str = "phone";
    /// What the event says about consent to advertising / e-mail marketing: true (given),
    /// false (refused or withdrawn), null (the event says nothing).
    pub const CONSENT_ADS: &str = "consent_ads";
    pub const CONSENT_EMAIL: &str = "consent_email";
    pub const PAGE_URL: &str = "page_url";
    pub const PAGE_PATH: &str = "page_path";
    pub const PAGE_REFERRER: &str = "page_referrer";
    pub const REFR_MEDIUM: &str = "refr_medium";
    pub const REFR_SOURCE: &str = "refr_source";
    pub const MKT_MEDIUM: &str = "mkt_medium";
    pub const MKT_SOURCE: &str = "mkt_source";
    pub const MKT_CAMPAIGN: &str = "mkt_campaign";
    pub const USERAGENT: &str = "useragent";
    pub const ORDER_ID: &str = "order_id";
    pub const ORDER_TOTAL: &str = "order_total";
    pub const ORDER_TAX: &str = "order_tax";
    pub const ORDER_SHIPPING: &str = "order_shipping";
    pub const ORDER_DISCOUNT: &str = "order_discount";
    pub const COUPON_CODE: &str = "coupon_code";
    pub const SKU: &str = "sku";
    pub const PRODUCT_NAME: &str = "product_name";
    pub const CATEGORY: &str = "category";
    pub const QUANTITY: &str = "quantity";
    pub const UNIT_PRICE: &str = "unit_price";
    /// Line value for cart and order-line events: quantity x unit price.
    pub const LINE_VALUE: &str = "line_value";
    pub const SEARCH_TERMS: &str = "search_terms";
    pub const SEARCH_TOTAL_RESULTS: &str = "search_total_results";
    pub const SEARCH_PAGE_RESULTS: &str = "search_page_results";
    /// The page view an event belongs to (Snowplow's web_page context id).
    pub const PAGE_VIEW_ID: &str = "page_view_id";
    /// The cart's total value after a cart action (ecommerce plugin's cart entity).
    pub const CART_VALUE: &str = "cart_value";
    /// The checkout step reached (ecommerce plugin's checkout_step entity).
    pub const CHECKOUT_STEP: &str = "checkout_step";
    /// Added by the identity stage.
    pub const CUSTOMER_ID: &str = "customer_id";
    /// Added by the sessions stage.
    pub const SESSION_ID: &str = "session_id";

    /// The descriptive columns whose values repeat (user agents, paths, categories: far
    /// fewer values than events): held in memory as categoricals, four bytes a row instead
    /// of a sixteen-byte string view. Their mapping is the process's, kept for the run; the
    /// page URL (query strings make it nearly unique) and the identifiers stay text.
    pub const CATEGORICAL: [&str; 15] = [
        EVENT_TYPE,
        CHANNEL,
        PAGE_PATH,
        PAGE_REFERRER,
        REFR_MEDIUM,
        REFR_SOURCE,
        MKT_MEDIUM,
        MKT_SOURCE,
        MKT_CAMPAIGN,
        USERAGENT,
        COUPON_CODE,
        SKU,
        PRODUCT_NAME,
        CATEGORY,
        SEARCH_TERMS,
    ];
}

/// Canonical event types. Every input event maps to exactly one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventType {
    PageView,
    Search,
    CartAdd,
    CartRemove,
    Order,
    OrderLine,
    Other,
}

impl EventType {
    pub const ALL: [EventType; 7] = [
        EventType::PageView,
        EventType::Search,
        EventType::CartAdd,
        EventType::CartRemove,
        EventType::Order,
        EventType::OrderLine,
        EventType::Other,
    ];

    pub fn name(self) -> &'static str {
        match self {
            EventType::PageView => "page_view",
            EventType::Search => "search",
            EventType::CartAdd => "cart_add",
            EventType::CartRemove => "cart_remove",
            EventType::Order => "order",
            EventType::OrderLine => "order_line",
            EventType::Other => "other",
        }
    }

    /// Snowplow's names for the same events, accepted wherever an event type is named.
    pub const ALIASES: [(&'static str, EventType); 5] = [
        ("add_to_cart", EventType::CartAdd),
        ("remove_from_cart", EventType::CartRemove),
        ("site_search", EventType::Search),
        ("transaction", EventType::Order),
        ("transaction_item", EventType::OrderLine),
    ];

    /// Every accepted name: canonical names, then Snowplow aliases.
    pub fn all_names() -> impl Iterator<Item = &'static str> {
        EventType::ALL
            .into_iter()
            .map(EventType::name)
            .chain(EventType::ALIASES.into_iter().map(|(n, _)| n))
    }

    pub fn from_name(name: &str) -> Option<EventType> {
        EventType::ALL
            .into_iter()
            .find(|t| t.name() == name)
            .or_else(|| {
                EventType::ALIASES
                    .into_iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, t)| t)
            })
    }
}

/// Snowplow Lake Loader (atomic + self-describing) column names that propel reads.
pub mod snowplow {
    pub const EVENT_ID: &str = "event_id";
    pub const COLLECTOR_TSTAMP: &str = "collector_tstamp";
    pub const DERIVED_TSTAMP: &str = "derived_tstamp";
    pub const DVCE_CREATED_TSTAMP: &str = "dvce_created_tstamp";
    pub const DVCE_SENT_TSTAMP: &str = "dvce_sent_tstamp";
    pub const LOAD_TSTAMP: &str = "load_tstamp";
    pub const EVENT: &str = "event";
    pub const EVENT_VENDOR: &str = "event_vendor";
    pub const EVENT_NAME: &str = "event_name";
    pub const EVENT_FORMAT: &str = "event_format";
    pub const EVENT_VERSION: &str = "event_version";
    pub const APP_ID: &str = "app_id";
    pub const PLATFORM: &str = "platform";
    pub const USER_ID: &str = "user_id";
    pub const DOMAIN_USERID: &str = "domain_userid";
    pub const NETWORK_USERID: &str = "network_userid";
    pub const DOMAIN_SESSIONID: &str = "domain_sessionid";
    pub const DOMAIN_SESSIONIDX: &str = "domain_sessionidx";
    pub const PAGE_URL: &str = "page_url";
    pub const PAGE_URLPATH: &str = "page_urlpath";
    pub const PAGE_TITLE: &str = "page_title";
    pub const PAGE_REFERRER: &str = "page_referrer";
    pub const REFR_MEDIUM: &str = "refr_medium";
    pub const REFR_SOURCE: &str = "refr_source";
    pub const MKT_MEDIUM: &str = "mkt_medium";
    pub const MKT_SOURCE: &str = "mkt_source";
    pub const MKT_CAMPAIGN: &str = "mkt_campaign";
    pub const USERAGENT: &str = "useragent";
    pub const TR_ORDERID: &str = "tr_orderid";
    pub const TR_AFFILIATION: &str = "tr_affiliation";
    pub const TR_TOTAL: &str = "tr_total";
    pub const TR_TAX: &str = "tr_tax";
    pub const TR_SHIPPING: &str = "tr_shipping";
    pub const TR_CURRENCY: &str = "tr_currency";
    pub const TI_ORDERID: &str = "ti_orderid";
    pub const TI_SKU: &str = "ti_sku";
    pub const TI_NAME: &str = "ti_name";
    pub const TI_CATEGORY: &str = "ti_category";
    pub const TI_PRICE: &str = "ti_price";
    pub const TI_QUANTITY: &str = "ti_quantity";
    pub const TI_CURRENCY: &str = "ti_currency";
    pub const ADD_TO_CART: &str = "unstruct_event_com_snowplowanalytics_snowplow_add_to_cart_1";
    pub const REMOVE_FROM_CART: &str =
        "unstruct_event_com_snowplowanalytics_snowplow_remove_from_cart_1";
    pub const SITE_SEARCH: &str = "unstruct_event_com_snowplowanalytics_snowplow_site_search_1";
    pub const WEB_PAGE: &str = "contexts_com_snowplowanalytics_snowplow_web_page_1";
    pub const CLIENT_SESSION: &str = "contexts_com_snowplowanalytics_snowplow_client_session_1";
    pub const ECOMMERCE_TRANSACTION: &str =
        "contexts_com_snowplowanalytics_snowplow_ecommerce_transaction_1";
    pub const ECOMMERCE_USER: &str = "contexts_com_snowplowanalytics_snowplow_ecommerce_user_1";
    pub const ECOMMERCE_CART: &str = "contexts_com_snowplowanalytics_snowplow_ecommerce_cart_1";
    pub const ECOMMERCE_CHECKOUT_STEP: &str =
        "contexts_com_snowplowanalytics_snowplow_ecommerce_checkout_step_1";
    pub const ECOMMERCE_PRODUCT: &str =
        "contexts_com_snowplowanalytics_snowplow_ecommerce_product_1";
    pub const ECOMMERCE_ACTION: &str =
        "unstruct_event_com_snowplowanalytics_snowplow_ecommerce_snowplow_ecommerce_action_1";
    /// Enhanced consent plugin: the visitor's choice in the consent banner.
    pub const CONSENT_PREFERENCES: &str =
        "unstruct_event_com_snowplowanalytics_snowplow_consent_preferences_1";
    pub const CONSENT_WITHDRAWN: &str =
        "unstruct_event_com_snowplowanalytics_snowplow_consent_withdrawn_1";
    /// `consent_scopes` of a consent_preferences event that mean consent to advertising.
    pub const AD_CONSENT_SCOPES: [&str; 4] = ["marketing", "advertising", "targeting", "ads"];
    /// ... and consent to e-mail marketing.
    pub const EMAIL_CONSENT_SCOPES: [&str; 4] = ["email", "email_marketing", "newsletter", "crm"];

    /// Hive partition key of the Lake Loader layout.
    pub const PARTITION_KEY: &str = "load_tstamp_date";
}

/// Per-customer outputs.
pub mod output {
    pub const CUSTOMER_ID: &str = "customer_id";
    pub const CUTOFF: &str = "cutoff";
    pub const LABEL: &str = "label";
    pub const USER_ID: &str = "user_id";
    pub const EMAIL_SHA256: &str = "email_sha256";
    pub const SCORE: &str = "score";
    pub const PERCENTILE: &str = "percentile";
    pub const DECILE: &str = "decile";
    pub const REASONS: &str = "reasons";
    pub const QUARANTINE_REASON: &str = "quarantine_reason";
}
