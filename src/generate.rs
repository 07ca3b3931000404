//! `propel generate`: realistic synthetic Snowplow Lake Loader Parquet with planted purchase
//! behaviour, for the demo, the tests and the benchmarks.
//!
//! Each simulated person has one to three devices (cookies), maybe an account (a numeric id or
//! an e-mail), and a hidden "in market" state. Out of market they browse now and then; once
//! in market (more likely for past buyers) they visit daily, search, add to cart and buy, then
//! leave the market. So recent visits, cart activity, searches and past spend all raise the
//! chance of a purchase in the following days: the signal a good model should find.
//! Output: one file per load day under `load_tstamp_date=YYYY-MM-DD/`, about 1% of events
//! delivered twice (same `event_id`), deterministic for a given seed.

use std::path::{Path, PathBuf};

use chrono::{NaiveDate, NaiveTime};
use polars::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::{Context, Result};
use crate::schema::snowplow as sp;

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub customers: usize,
    pub days: u32,
    pub seed: u64,
    /// First simulated day (UTC).
    pub start: NaiveDate,
    pub out: PathBuf,
}

/// What was written.
#[derive(Debug, Clone, Default)]
pub struct GenerateSummary {
    pub events: usize,
    pub duplicates: usize,
    pub files: usize,
    pub orders: usize,
}

const MICROS_PER_SEC: i64 = 1_000_000;
const MICROS_PER_DAY: i64 = 86_400 * MICROS_PER_SEC;
const HOST: &str = "https://shop.example.com";

const CATEGORIES: [&str; 8] = [
    "kitchen",
    "garden",
    "lighting",
    "textiles",
    "toys",
    "stationery",
    "bath",
    "outdoor",
];
const NOUNS: [[&str; 5]; 8] = [
    ["kettle", "teapot", "skillet", "knife", "mug"],
    ["trowel", "planter", "hose", "seeds", "gloves"],
    ["lamp", "lantern", "bulb", "candle", "fairy lights"],
    ["cushion", "throw", "rug", "curtain", "towel"],
    ["puzzle", "kite", "robot", "teddy", "blocks"],
    ["notebook", "pen", "planner", "card", "wrapping paper"],
    ["soap", "bath mat", "robe", "sponge", "diffuser"],
    ["tent", "flask", "hammock", "picnic set", "chair"],
];
const ADJECTIVES: [&str; 5] = ["classic", "vintage", "deluxe", "mini", "eco"];
const USERAGENTS: [&str; 4] = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Safari/605.1.15",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Mobile Safari/537.36",
];
const COUPONS: [&str; 3] = ["WELCOME10", "SPRING15", "VIP20"];
const FIRST: [&str; 8] = [
    "anna", "ben", "chloe", "dan", "eva", "finn", "grace", "hugo",
];
const LAST: [&str; 8] = [
    "smith", "jones", "taylor", "brown", "wilson", "evans", "thomas", "roberts",
];
const DOMAINS: [&str; 3] = ["example.com", "gmail.com", "mail.example.org"];

struct Product {
    sku: String,
    name: String,
    category: usize,
    price: f64,
}

fn catalog() -> Vec<Product> {
    let mut out = Vec::new();
    for (c, cat) in CATEGORIES.iter().enumerate() {
        for (n, noun) in NOUNS[c].iter().enumerate() {
            for (a, adj) in ADJECTIVES.iter().enumerate() {
                // Deterministic prices from 3.50 to about 120, varying by category and item.
                let price = 3.5 + ((c * 7 + n * 13 + a * 5) % 23) as f64 * (1.0 + c as f64 * 0.7);
                out.push(Product {
                    sku: format!("SKU-{}{:02}{}", &cat[..3].to_uppercase(), n, a),
                    name: format!("{adj} {noun}"),
                    category: c,
                    price: (price * 100.0).round() / 100.0,
                });
            }
        }
    }
    out
}

fn uuid(rng: &mut ChaCha8Rng) -> String {
    let a: u128 = rng.random();
    let b = (a & !(0xF << 76)) | (0x4 << 76); // version 4
    let b = (b & !(0x3 << 62)) | (0x2 << 62); // variant
    let h = format!("{b:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    PageView,
    Search,
    CartAdd,
    CartRemove,
    Transaction,
    TransactionItem,
    /// A consent banner choice (Snowplow's consent_preferences event).
    Consent,
}

/// A consent banner answer: the event type and the scopes allowed.
type ConsentChoice = (&'static str, &'static str);

/// One generated event (the columns the generator fills).
#[derive(Clone)]
struct Ev {
    event_id: String,
    collector: i64,
    created: i64,
    sent: i64,
    load: i64,
    kind: Kind,
    user_id: Option<String>,
    duid: String,
    sid: String,
    sidx: i32,
    nuid: String,
    ua: &'static str,
    page_path: String,
    page_title: String,
    referrer: Option<String>,
    refr_medium: Option<&'static str>,
    refr_source: Option<&'static str>,
    mkt: Option<(&'static str, &'static str, String)>,
    sku: Option<String>,
    name: Option<String>,
    category: Option<&'static str>,
    price: Option<f64>,
    quantity: Option<i64>,
    terms: Option<String>,
    total_results: Option<i64>,
    page_results: Option<i64>,
    order_id: Option<String>,
    total: Option<f64>,
    tax: Option<f64>,
    shipping: Option<f64>,
    discount: Option<f64>,
    coupon: Option<&'static str>,
    consent: Option<ConsentChoice>,
}

struct Device {
    duid: String,
    nuid: String,
    ua: &'static str,
    sessions: i32,
}

struct Person {
    rng: ChaCha8Rng,
    devices: Vec<Device>,
    /// The id the site shows at login: an account number or the e-mail; None = guest.
    account: Option<String>,
    email: String,
    /// Daily chance of coming into the market, before the past-purchase boost.
    intent: f64,
    /// Daily chance of a casual visit while out of the market.
    browse: f64,
    /// Basket size multiplier.
    value: f64,
    favourite: usize,
    in_market: bool,
    orders: u32,
    last_order_day: Option<u32>,
    /// The answer given to the consent banner on the first visit (None: ignored it), drawn
    /// from a stream of its own so that the rest of the data does not depend on it.
    consent: Option<ConsentChoice>,
    consent_rng: ChaCha8Rng,
    consent_asked: bool,
}

impl Person {
    fn new(index: usize, seed: u64) -> Person {
        let mut rng =
            ChaCha8Rng::seed_from_u64(seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let n_devices =
            1 + (rng.random::<f64>() < 0.45) as usize + (rng.random::<f64>() < 0.15) as usize;
        let devices = (0..n_devices)
            .map(|_| Device {
                duid: uuid(&mut rng),
                nuid: uuid(&mut rng),
                ua: USERAGENTS[rng.random_range(0..USERAGENTS.len())],
                sessions: 0,
            })
            .collect();
        let email = format!(
            "{}.{}{}@{}",
            FIRST[rng.random_range(0..FIRST.len())],
            LAST[rng.random_range(0..LAST.len())],
            index,
            DOMAINS[rng.random_range(0..DOMAINS.len())]
        );
        let account = match rng.random::<f64>() {
            x if x < 0.35 => Some(email.clone()),
            x if x < 0.65 => Some(format!("{}", 100_000 + index)),
            _ => None,
        };
        // Heavy-tailed engagement: most people rarely come into the market.
        let u: f64 = rng.random();
        let intent = 0.004 + 0.05 * u * u * u;
        let browse = 0.01 + 0.08 * rng.random::<f64>().powi(2);
        let value = 0.6 + 1.4 * rng.random::<f64>();
        let favourite = rng.random_range(0..CATEGORIES.len());
        let mut consent_rng = ChaCha8Rng::seed_from_u64(
            seed ^ 0xC0_5E47 ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
        );
        let consent = match consent_rng.random::<f64>() {
            x if x < 0.55 => Some(("allow_all", "necessary,analytics,marketing,newsletter")),
            x if x < 0.65 => Some(("allow_selected", "necessary,analytics")),
            x if x < 0.72 => Some(("allow_selected", "necessary,marketing")),
            x if x < 0.80 => Some(("allow_selected", "necessary,newsletter")),
            x if x < 0.92 => Some(("deny_all", "necessary")),
            _ => None,
        };
        Person {
            consent,
            consent_rng,
            consent_asked: false,
            rng,
            devices,
            account,
            email,
            intent,
            browse,
            value,
            favourite,
            in_market: false,
            orders: 0,
            last_order_day: None,
        }
    }

    /// The id typed at login or checkout: sometimes with different capitals or spaces,
    /// as people type e-mails (identity normalises them).
    fn login_id(&mut self, checkout: bool) -> Option<String> {
        let id = match (&self.account, checkout) {
            (Some(a), _) => a.clone(),
            (None, true) => self.email.clone(),
            (None, false) => return None,
        };
        if id.contains('@') && self.rng.random::<f64>() < 0.1 {
            let mut s = id.to_uppercase();
            if self.rng.random::<bool>() {
                s.push(' ');
            }
            return Some(s);
        }
        Some(id)
    }

    fn step_day(&mut self, day: u32) {
        if self.in_market {
            if self.rng.random::<f64>() < 0.10 {
                self.in_market = false;
            }
        } else {
            let loyal = 1.0 + 0.8 * (1.0 + self.orders as f64).ln();
            let recent = match self.last_order_day {
                Some(d) if day - d < 45 => 1.5,
                _ => 1.0,
            };
            if self.rng.random::<f64>() < self.intent * loyal * recent {
                self.in_market = true;
            }
        }
    }
}

struct SessionCtx<'a> {
    catalog: &'a [Product],
    day: u32,
    day_start: i64,
    week: u32,
}

fn session(p: &mut Person, ctx: &SessionCtx, events: &mut Vec<Ev>, orders: &mut usize) {
    let rng_dev = if p.devices.len() > 1 && p.rng.random::<f64>() < 0.4 {
        p.rng.random_range(1..p.devices.len())
    } else {
        0
    };
    let sid = uuid(&mut p.rng);
    p.devices[rng_dev].sessions += 1;
    // Evening-heavy start hour.
    let hour = [7, 9, 12, 13, 17, 19, 20, 21, 22, 23][p.rng.random_range(0..10)];
    let mut t =
        ctx.day_start + hour * 3600 * MICROS_PER_SEC + p.rng.random_range(0..3600) * MICROS_PER_SEC;
    let (referrer, refr_medium, refr_source, mkt) = match p.rng.random::<f64>() {
        x if x < 0.35 => (None, None, None, None),
        x if x < 0.70 => (
            Some("https://www.google.com/".to_string()),
            Some("search"),
            Some("Google"),
            None,
        ),
        x if x < 0.85 => (
            Some("https://mail.example.com/".to_string()),
            Some("email"),
            None,
            Some(("email", "newsletter", format!("weekly_{}", ctx.week))),
        ),
        _ => (
            Some("https://www.facebook.com/".to_string()),
            Some("social"),
            Some("Facebook"),
            Some(("cpc", "facebook", "retargeting".to_string())),
        ),
    };
    let in_market = p.in_market;
    let mut user_id = if p.account.is_some() && p.rng.random::<f64>() < 0.3 {
        p.login_id(false)
    } else {
        None
    };
    let dev = &p.devices[rng_dev];
    let (duid, nuid, ua, sidx) = (dev.duid.clone(), dev.nuid.clone(), dev.ua, dev.sessions);
    let first = events.len();
    let mk = |p: &mut Person,
              t: &mut i64,
              kind: Kind,
              path: String,
              title: String,
              user_id: &Option<String>|
     -> Ev {
        *t += p.rng.random_range(8..150) * MICROS_PER_SEC;
        let created = *t - p.rng.random_range(0..3) * MICROS_PER_SEC;
        let sent = created + p.rng.random_range(0..2_000_000);
        Ev {
            event_id: uuid(&mut p.rng),
            collector: *t,
            created,
            sent,
            load: *t + p.rng.random_range(60..900) * MICROS_PER_SEC,
            kind,
            user_id: user_id.clone(),
            duid: duid.clone(),
            sid: sid.clone(),
            sidx,
            nuid: nuid.clone(),
            ua,
            page_path: path,
            page_title: title,
            referrer: None,
            refr_medium: None,
            refr_source: None,
            mkt: None,
            sku: None,
            name: None,
            category: None,
            price: None,
            quantity: None,
            terms: None,
            total_results: None,
            page_results: None,
            order_id: None,
            total: None,
            tax: None,
            shipping: None,
            discount: None,
            coupon: None,
            consent: None,
        }
    };
    let fav = p.favourite;
    let pick = |p: &mut Person| -> usize {
        let cat = if p.rng.random::<f64>() < 0.6 {
            fav
        } else {
            p.rng.random_range(0..CATEGORIES.len())
        };
        cat * 25 + p.rng.random_range(0..25)
    };
    // Landing page.
    let landing = match p.rng.random_range(0..3) {
        0 => ("/".to_string(), "Home".to_string()),
        1 => {
            let c = CATEGORIES[fav];
            (format!("/c/{c}"), format!("{c} | Shop"))
        }
        _ => {
            let pr = &ctx.catalog[pick(p)];
            (format!("/p/{}", pr.sku), pr.name.clone())
        }
    };
    events.push(mk(
        p,
        &mut t,
        Kind::PageView,
        landing.0,
        landing.1,
        &user_id,
    ));
    // First visit: the consent banner is answered (or ignored) a second after landing.
    if !p.consent_asked {
        p.consent_asked = true;
        if let Some(choice) = p.consent {
            let landing = events.last().expect("just pushed");
            let mut e = landing.clone();
            e.event_id = uuid(&mut p.consent_rng);
            e.kind = Kind::Consent;
            e.consent = Some(choice);
            e.collector += MICROS_PER_SEC;
            e.created += MICROS_PER_SEC;
            e.sent += MICROS_PER_SEC;
            e.load += MICROS_PER_SEC;
            events.push(e);
        }
    }
    let n_pages = if in_market {
        p.rng.random_range(2..10)
    } else {
        p.rng.random_range(0..3)
    };
    for _ in 0..n_pages {
        let pr = &ctx.catalog[pick(p)];
        events.push(mk(
            p,
            &mut t,
            Kind::PageView,
            format!("/p/{}", pr.sku),
            pr.name.clone(),
            &user_id,
        ));
    }
    let n_searches = match (in_market, p.rng.random::<f64>()) {
        (true, x) if x < 0.55 => p.rng.random_range(1..4),
        (false, x) if x < 0.12 => 1,
        _ => 0,
    };
    for _ in 0..n_searches {
        let zero = p.rng.random::<f64>() < 0.12;
        let pr = &ctx.catalog[pick(p)];
        let noun = pr.name.split(' ').skip(1).collect::<Vec<_>>().join(" ");
        let (terms, total) = if zero {
            let mut s: Vec<char> = noun.chars().collect();
            let last = s.len() - 1;
            s.swap(0, last);
            (s.into_iter().collect::<String>(), 0)
        } else {
            (noun.clone(), p.rng.random_range(3..60))
        };
        let mut e = mk(
            p,
            &mut t,
            Kind::Search,
            format!("/search?q={}", terms.replace(' ', "+")),
            "Search".into(),
            &user_id,
        );
        e.terms = Some(terms);
        e.total_results = Some(total);
        e.page_results = Some(total.min(24));
        events.push(e);
    }
    let n_adds = match (in_market, p.rng.random::<f64>()) {
        (true, x) if x < 0.6 => p.rng.random_range(1..4),
        (false, x) if x < 0.05 => 1,
        _ => 0,
    };
    let mut cart: Vec<(usize, i64)> = Vec::new();
    for _ in 0..n_adds {
        let k = pick(p);
        let q = 1 + (p.rng.random::<f64>() < 0.2 * p.value) as i64;
        let pr = &ctx.catalog[k];
        let mut e = mk(
            p,
            &mut t,
            Kind::CartAdd,
            format!("/p/{}", pr.sku),
            pr.name.clone(),
            &user_id,
        );
        set_product(&mut e, pr, q);
        events.push(e);
        cart.push((k, q));
    }
    let mut kept = Vec::new();
    for (k, q) in cart {
        if p.rng.random::<f64>() < 0.15 {
            let pr = &ctx.catalog[k];
            let mut e = mk(
                p,
                &mut t,
                Kind::CartRemove,
                "/cart".into(),
                "Cart".into(),
                &user_id,
            );
            set_product(&mut e, pr, q);
            events.push(e);
        } else {
            kept.push((k, q));
        }
    }
    let buy_p = if in_market { 0.5 } else { 0.1 };
    if !kept.is_empty() && p.rng.random::<f64>() < buy_p {
        user_id = user_id.or_else(|| p.login_id(true));
        events.push(mk(
            p,
            &mut t,
            Kind::PageView,
            "/checkout".into(),
            "Checkout".into(),
            &user_id,
        ));
        let order_id = format!("ORD-{}", &uuid(&mut p.rng)[..13].to_uppercase());
        let subtotal: f64 = kept
            .iter()
            .map(|(k, q)| ctx.catalog[*k].price * *q as f64)
            .sum();
        let coupon =
            (p.rng.random::<f64>() < 0.15).then(|| COUPONS[p.rng.random_range(0..COUPONS.len())]);
        let discount = if coupon.is_some() {
            round2(subtotal * 0.1)
        } else {
            0.0
        };
        let shipping = if subtotal >= 50.0 { 0.0 } else { 4.95 };
        let total = round2(subtotal - discount + shipping);
        let mut e = mk(
            p,
            &mut t,
            Kind::Transaction,
            "/checkout/confirmation".into(),
            "Thank you".into(),
            &user_id,
        );
        e.order_id = Some(order_id.clone());
        e.total = Some(total);
        e.tax = Some(round2(total / 6.0)); // 20% VAT included
        e.shipping = Some(shipping);
        e.discount = Some(discount);
        e.coupon = coupon;
        events.push(e);
        for (k, q) in kept {
            let pr = &ctx.catalog[k];
            let mut e = mk(
                p,
                &mut t,
                Kind::TransactionItem,
                "/checkout/confirmation".into(),
                "Thank you".into(),
                &user_id,
            );
            set_product(&mut e, pr, q);
            e.order_id = Some(order_id.clone());
            events.push(e);
        }
        *orders += 1;
        p.orders += 1;
        p.last_order_day = Some(ctx.day);
        if p.rng.random::<f64>() < 0.7 {
            p.in_market = false;
        }
    }
    let e = &mut events[first];
    e.referrer = referrer;
    e.refr_medium = refr_medium;
    e.refr_source = refr_source;
    e.mkt = mkt;
}

fn set_product(e: &mut Ev, pr: &Product, q: i64) {
    e.sku = Some(pr.sku.clone());
    e.name = Some(pr.name.clone());
    e.category = Some(CATEGORIES[pr.category]);
    e.price = Some(pr.price);
    e.quantity = Some(q);
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Generates the data set; see the module documentation.
pub fn generate(opts: &GenerateOptions) -> Result<GenerateSummary> {
    let catalog = catalog();
    let mut people: Vec<Person> = (0..opts.customers)
        .map(|i| Person::new(i, opts.seed))
        .collect();
    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).expect("valid date");
    let start_day = (opts.start - epoch).num_days();
    let mut summary = GenerateSummary::default();
    let mut carry: Vec<Ev> = Vec::new();
    std::fs::create_dir_all(&opts.out).ctx(format!("creating {}", opts.out.display()))?;
    for day in 0..opts.days {
        let day_start = (start_day + day as i64) * MICROS_PER_DAY;
        let ctx = SessionCtx {
            catalog: &catalog,
            day,
            day_start,
            week: day / 7,
        };
        let mut events = std::mem::take(&mut carry);
        for p in people.iter_mut() {
            p.step_day(day);
            let rate = if p.in_market { 0.6 } else { p.browse };
            if p.rng.random::<f64>() < rate {
                let n = 1 + (p.rng.random::<f64>() < 0.2) as usize;
                for _ in 0..n {
                    session(p, &ctx, &mut events, &mut summary.orders);
                }
            }
        }
        // At-least-once delivery: about 1% of events arrive twice, some with a later
        // collector time.
        let mut dup_rng = ChaCha8Rng::seed_from_u64(opts.seed ^ 0xD0_0B1E ^ (day as u64) << 20);
        let originals = events.len();
        for i in 0..originals {
            if events[i].load >= day_start + MICROS_PER_DAY || dup_rng.random::<f64>() >= 0.01 {
                continue;
            }
            let mut d = events[i].clone();
            if dup_rng.random::<bool>() {
                let delay = dup_rng.random_range(1..300) * MICROS_PER_SEC;
                d.collector += delay;
                d.load += delay;
            }
            events.push(d);
            summary.duplicates += 1;
        }
        // Events loaded after midnight belong to the next day's partition.
        let next_day = day_start + MICROS_PER_DAY;
        let (today, later): (Vec<Ev>, Vec<Ev>) = events
            .into_iter()
            .partition(|e| e.load < next_day || day + 1 == opts.days);
        carry = later;
        let mut today = today;
        today.sort_by(|a, b| (a.collector, &a.event_id).cmp(&(b.collector, &b.event_id)));
        if today.is_empty() {
            continue;
        }
        let date = epoch + chrono::Duration::days(start_day + day as i64);
        let dir = opts
            .out
            .join(format!("{}={}", sp::PARTITION_KEY, date.format("%Y-%m-%d")));
        std::fs::create_dir_all(&dir).ctx(format!("creating {}", dir.display()))?;
        let path = dir.join("part-00000.parquet");
        write_lake_loader(&today, &path)?;
        summary.events += today.len();
        summary.files += 1;
    }
    let _ = NaiveTime::MIN;
    Ok(summary)
}

/// Writes events as Snowplow Lake Loader Parquet.
fn write_lake_loader(events: &[Ev], path: &Path) -> Result<()> {
    let ts = |f: fn(&Ev) -> i64, name: &str| -> Column {
        Series::new(name.into(), events.iter().map(f).collect::<Vec<_>>())
            .cast(&DataType::Datetime(
                TimeUnit::Microseconds,
                Some(TimeZone::UTC),
            ))
            .expect("i64 to datetime")
            .into()
    };
    let s = |name: &str, v: Vec<Option<String>>| -> Column { Series::new(name.into(), v).into() };
    let kind_of = |e: &Ev| e.kind;
    let event = events
        .iter()
        .map(|e| match kind_of(e) {
            Kind::PageView => "page_view",
            Kind::Search | Kind::CartAdd | Kind::CartRemove | Kind::Consent => "unstruct",
            Kind::Transaction => "transaction",
            Kind::TransactionItem => "transaction_item",
        })
        .collect::<Vec<_>>();
    let event_name = events
        .iter()
        .map(|e| match e.kind {
            Kind::PageView => "page_view",
            Kind::Search => "site_search",
            Kind::CartAdd => "add_to_cart",
            Kind::CartRemove => "remove_from_cart",
            Kind::Transaction => "transaction",
            Kind::TransactionItem => "transaction_item",
            Kind::Consent => "consent_preferences",
        })
        .collect::<Vec<_>>();
    let opt = |f: &dyn Fn(&Ev) -> Option<String>| -> Vec<Option<String>> {
        events.iter().map(f).collect()
    };
    let is = |k: Kind| events.iter().map(move |e| e.kind == k);
    let when_kind = |k: Kind, v: &dyn Fn(&Ev) -> Option<String>| -> Vec<Option<String>> {
        events
            .iter()
            .map(|e| if e.kind == k { v(e) } else { None })
            .collect()
    };
    let num_kind = |k: Kind, v: &dyn Fn(&Ev) -> Option<f64>| -> Vec<Option<f64>> {
        events
            .iter()
            .map(|e| if e.kind == k { v(e) } else { None })
            .collect()
    };
    let n = events.len();
    let columns: Vec<Column> = vec![
        Series::new(sp::APP_ID.into(), vec!["shop"; n]).into(),
        Series::new(sp::PLATFORM.into(), vec!["web"; n]).into(),
        ts(|e| e.collector, sp::COLLECTOR_TSTAMP),
        ts(|e| e.created, sp::DVCE_CREATED_TSTAMP),
        ts(|e| e.sent, sp::DVCE_SENT_TSTAMP),
        // derived = collector - (sent - created): Snowplow's clock-skew correction.
        ts(|e| e.collector - (e.sent - e.created), sp::DERIVED_TSTAMP),
        ts(|e| e.load, sp::LOAD_TSTAMP),
        Series::new(sp::EVENT.into(), event).into(),
        s(sp::EVENT_ID, opt(&|e| Some(e.event_id.clone()))),
        Series::new(
            sp::EVENT_VENDOR.into(),
            events
                .iter()
                .map(|e| match e.kind {
                    Kind::Search | Kind::CartAdd | Kind::CartRemove => {
                        "com.snowplowanalytics.snowplow"
                    }
                    _ => "com.snowplowanalytics.snowplow",
                })
                .collect::<Vec<_>>(),
        )
        .into(),
        Series::new(sp::EVENT_NAME.into(), event_name).into(),
        Series::new(sp::EVENT_FORMAT.into(), vec!["jsonschema"; n]).into(),
        Series::new(sp::EVENT_VERSION.into(), vec!["1-0-0"; n]).into(),
        s(sp::USER_ID, opt(&|e| e.user_id.clone())),
        s(sp::DOMAIN_USERID, opt(&|e| Some(e.duid.clone()))),
        Series::new(
            sp::DOMAIN_SESSIONIDX.into(),
            events.iter().map(|e| e.sidx).collect::<Vec<_>>(),
        )
        .into(),
        s(sp::DOMAIN_SESSIONID, opt(&|e| Some(e.sid.clone()))),
        s(sp::NETWORK_USERID, opt(&|e| Some(e.nuid.clone()))),
        s(
            sp::PAGE_URL,
            opt(&|e| Some(format!("{HOST}{}", e.page_path))),
        ),
        s(sp::PAGE_TITLE, opt(&|e| Some(e.page_title.clone()))),
        s(
            sp::PAGE_URLPATH,
            opt(&|e| Some(e.page_path.split('?').next().unwrap_or("/").to_string())),
        ),
        s(sp::PAGE_REFERRER, opt(&|e| e.referrer.clone())),
        s(sp::REFR_MEDIUM, opt(&|e| e.refr_medium.map(str::to_string))),
        s(sp::REFR_SOURCE, opt(&|e| e.refr_source.map(str::to_string))),
        s(
            sp::MKT_MEDIUM,
            opt(&|e| e.mkt.as_ref().map(|m| m.0.to_string())),
        ),
        s(
            sp::MKT_SOURCE,
            opt(&|e| e.mkt.as_ref().map(|m| m.1.to_string())),
        ),
        s(
            sp::MKT_CAMPAIGN,
            opt(&|e| e.mkt.as_ref().map(|m| m.2.clone())),
        ),
        s(sp::USERAGENT, opt(&|e| Some(e.ua.to_string()))),
        s(
            sp::TR_ORDERID,
            when_kind(Kind::Transaction, &|e| e.order_id.clone()),
        ),
        s(
            sp::TR_AFFILIATION,
            when_kind(Kind::Transaction, &|_| Some("web".into())),
        ),
        Series::new(
            sp::TR_TOTAL.into(),
            num_kind(Kind::Transaction, &|e| e.total),
        )
        .into(),
        Series::new(sp::TR_TAX.into(), num_kind(Kind::Transaction, &|e| e.tax)).into(),
        Series::new(
            sp::TR_SHIPPING.into(),
            num_kind(Kind::Transaction, &|e| e.shipping),
        )
        .into(),
        s(
            sp::TR_CURRENCY,
            when_kind(Kind::Transaction, &|_| Some("GBP".into())),
        ),
        s(
            sp::TI_ORDERID,
            when_kind(Kind::TransactionItem, &|e| e.order_id.clone()),
        ),
        s(
            sp::TI_SKU,
            when_kind(Kind::TransactionItem, &|e| e.sku.clone()),
        ),
        s(
            sp::TI_NAME,
            when_kind(Kind::TransactionItem, &|e| e.name.clone()),
        ),
        s(
            sp::TI_CATEGORY,
            when_kind(Kind::TransactionItem, &|e| e.category.map(str::to_string)),
        ),
        Series::new(
            sp::TI_PRICE.into(),
            num_kind(Kind::TransactionItem, &|e| e.price),
        )
        .into(),
        Series::new(
            sp::TI_QUANTITY.into(),
            events
                .iter()
                .map(|e| {
                    if e.kind == Kind::TransactionItem {
                        e.quantity
                    } else {
                        None
                    }
                })
                .collect::<Vec<_>>(),
        )
        .into(),
        s(
            sp::TI_CURRENCY,
            when_kind(Kind::TransactionItem, &|_| Some("GBP".into())),
        ),
        // Helper columns, folded into struct columns below.
        Series::new("_is_add".into(), is(Kind::CartAdd).collect::<Vec<_>>()).into(),
        Series::new(
            "_is_remove".into(),
            is(Kind::CartRemove).collect::<Vec<_>>(),
        )
        .into(),
        Series::new("_is_search".into(), is(Kind::Search).collect::<Vec<_>>()).into(),
        Series::new("_is_page".into(), is(Kind::PageView).collect::<Vec<_>>()).into(),
        Series::new("_is_consent".into(), is(Kind::Consent).collect::<Vec<_>>()).into(),
        s(
            "_consent_type",
            opt(&|e| e.consent.map(|c| c.0.to_string())),
        ),
        s(
            "_consent_scopes",
            opt(&|e| e.consent.map(|c| c.1.to_string())),
        ),
        Series::new("_is_tr".into(), is(Kind::Transaction).collect::<Vec<_>>()).into(),
        s("_sku", opt(&|e| e.sku.clone())),
        s("_name", opt(&|e| e.name.clone())),
        s("_category", opt(&|e| e.category.map(str::to_string))),
        Series::new(
            "_unit_price".into(),
            events.iter().map(|e| e.price).collect::<Vec<_>>(),
        )
        .into(),
        Series::new(
            "_quantity".into(),
            events
                .iter()
                .map(|e| e.quantity.map(|q| q as f64))
                .collect::<Vec<_>>(),
        )
        .into(),
        s("_terms", opt(&|e| e.terms.clone())),
        Series::new(
            "_total_results".into(),
            events.iter().map(|e| e.total_results).collect::<Vec<_>>(),
        )
        .into(),
        Series::new(
            "_page_results".into(),
            events.iter().map(|e| e.page_results).collect::<Vec<_>>(),
        )
        .into(),
        s(
            "_page_view_id",
            opt(&|e| Some(format!("pv-{}", &e.event_id[..18]))),
        ),
        s("_order_id", opt(&|e| e.order_id.clone())),
        Series::new(
            "_revenue".into(),
            events.iter().map(|e| e.total).collect::<Vec<_>>(),
        )
        .into(),
        Series::new(
            "_tax".into(),
            events.iter().map(|e| e.tax).collect::<Vec<_>>(),
        )
        .into(),
        Series::new(
            "_shipping".into(),
            events.iter().map(|e| e.shipping).collect::<Vec<_>>(),
        )
        .into(),
        Series::new(
            "_discount".into(),
            events.iter().map(|e| e.discount).collect::<Vec<_>>(),
        )
        .into(),
        s("_coupon", opt(&|e| e.coupon.map(str::to_string))),
    ];
    let df = DataFrame::new(n, columns).ctx("building generated events")?;
    let money = DataType::Decimal(18, 2);
    let cart_struct = || {
        as_struct(vec![
            col("_sku").alias("sku"),
            col("_name").alias("name"),
            col("_category").alias("category"),
            col("_unit_price").alias("unit_price"),
            col("_quantity").alias("quantity"),
            lit("GBP").alias("currency"),
        ])
    };
    let null_unless = |cond: &str, e: Expr| when(col(cond)).then(e).otherwise(lit(NULL));
    let out = df
        .lazy()
        .with_columns([
            col(sp::TR_TOTAL).cast(money.clone()),
            col(sp::TR_TAX).cast(money.clone()),
            col(sp::TR_SHIPPING).cast(money.clone()),
            col(sp::TI_PRICE).cast(money.clone()),
            null_unless("_is_add", cart_struct()).alias(sp::ADD_TO_CART),
            null_unless("_is_remove", cart_struct()).alias(sp::REMOVE_FROM_CART),
            null_unless(
                "_is_search",
                as_struct(vec![
                    col("_terms").str().split(lit(" ")).alias("terms"),
                    col("_total_results").alias("total_results"),
                    col("_page_results").alias("page_results"),
                ]),
            )
            .alias(sp::SITE_SEARCH),
            null_unless(
                "_is_consent",
                as_struct(vec![
                    lit("consent").alias("basis_for_processing"),
                    lit("https://shop.example/privacy").alias("consent_url"),
                    lit("3.1").alias("consent_version"),
                    col("_consent_scopes")
                        .str()
                        .split(lit(","))
                        .alias("consent_scopes"),
                    col("_consent_type").alias("event_type"),
                ]),
            )
            .alias(sp::CONSENT_PREFERENCES),
            null_unless(
                "_is_page",
                concat_list([as_struct(vec![
                    lit("1-0-0").alias("_schema_version"),
                    col("_page_view_id").alias("id"),
                ])])
                .ctx("web_page context")?,
            )
            .alias(sp::WEB_PAGE),
            null_unless(
                "_is_tr",
                concat_list([as_struct(vec![
                    lit("1-0-0").alias("_schema_version"),
                    col("_order_id").alias("transaction_id"),
                    col("_revenue").cast(money.clone()).alias("revenue"),
                    lit("GBP").alias("currency"),
                    lit("card").alias("payment_method"),
                    col("_tax").cast(money.clone()).alias("tax"),
                    col("_shipping").cast(money.clone()).alias("shipping"),
                    col("_coupon").alias("discount_code"),
                    col("_discount")
                        .cast(money.clone())
                        .alias("discount_amount"),
                ])])
                .ctx("transaction context")?,
            )
            .alias(sp::ECOMMERCE_TRANSACTION),
        ])
        .select([all().exclude_cols(["^_.*$"]).as_expr()])
        .collect()
        .ctx("building Lake Loader columns")?;
    crate::util::write_parquet(&out, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_are_v4_shaped_and_deterministic() {
        let mut a = ChaCha8Rng::seed_from_u64(1);
        let mut b = ChaCha8Rng::seed_from_u64(1);
        let u = uuid(&mut a);
        assert_eq!(u, uuid(&mut b));
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
    }

    #[test]
    fn catalog_has_unique_skus() {
        let c = catalog();
        let skus: std::collections::BTreeSet<_> = c.iter().map(|p| p.sku.clone()).collect();
        assert_eq!(skus.len(), c.len());
        assert_eq!(c.len(), 200);
    }
}
