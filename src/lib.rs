//! propel: a nightly batch job that turns first-party behavioural events (Snowplow) into
//! scored customer audiences.
//!
//! The modules follow the data flow of one run (see `pipeline`):
//! ingest -> identity -> sessions -> labels -> features -> model -> score -> audience -> publish.
//! `generate` writes synthetic Snowplow Lake Loader data for the demo, tests and benchmarks.

pub mod config;
pub mod error;
pub mod schema;

pub mod generate;
pub mod history;

pub mod audience;
pub mod buckets;
pub mod consent;
pub mod destinations;
pub mod feature_report;
pub mod features;
pub mod identity;
pub mod ingest;
pub mod labels;
pub mod model;
pub mod publish;
pub mod report;
pub mod score;
pub mod sessions;
pub mod snapshots;
pub mod state;

pub mod cli;
pub mod pipeline;
pub mod util;
