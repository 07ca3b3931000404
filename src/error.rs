//! Error types, one per area, and the exit code each maps to.
//!
//! Messages say what was expected, what was found, and where.

use std::path::PathBuf;

/// One problem in a configuration file: where it is and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// The file (or `<embedded ...>` for the built-in defaults).
    pub file: String,
    /// Key path inside the file, e.g. `feature[3].window`.
    pub key: String,
    pub message: String,
}

impl std::fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(f, "{}: {}: {}", self.file, self.key, self.message)
        }
    }
}

/// Job, feature and model configuration errors: every problem found, reported at once.
#[derive(Debug, thiserror::Error)]
#[error("{} configuration problem(s):\n  {}", .0.len(), .0.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n  "))]
pub struct ConfigError(pub Vec<ConfigProblem>);

impl ConfigError {
    /// One problem with `file` (a file, a directory or a command-line flag) as a whole.
    pub fn one(file: impl std::fmt::Display, message: impl Into<String>) -> ConfigError {
        ConfigError(vec![ConfigProblem {
            file: file.to_string(),
            key: String::new(),
            message: message.into(),
        }])
    }
}

/// Problems with the input events.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error(
        "input {location}: no Parquet files found (expected *.parquet files, optionally under load_tstamp_date=YYYY-MM-DD/ partitions)"
    )]
    NoFiles { location: String },
    #[error("input {location}: cannot read: {source}")]
    Unreadable {
        location: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{file}: missing mandatory column `{column}` (expected {expected})")]
    MissingColumn {
        file: String,
        column: String,
        expected: String,
    },
    #[error("{file}: column `{column}` has type {found}, expected {expected}")]
    WrongType {
        file: String,
        column: String,
        expected: String,
        found: String,
    },
    #[error("input {location}: no usable events ({read} rows read, {quarantined} quarantined)")]
    Empty {
        location: String,
        read: usize,
        quarantined: usize,
    },
    #[error("--as-of {as_of}: {message}")]
    AsOf { as_of: String, message: String },
    #[error(
        "every one of the {used} events used belongs to a customer on the suppression list: no customer is left to score"
    )]
    AllSuppressed { used: usize },
}

/// The model stage refused to train or score.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("not enough training data: {found} {what}, need at least {needed} ({hint})")]
    Ineligible {
        what: &'static str,
        found: usize,
        needed: usize,
        hint: String,
    },
    #[error("model artifact {path}: feature set differs from the current definitions: {detail}")]
    FeatureMismatch { path: PathBuf, detail: String },
    #[error("model fitting failed: {0}")]
    Fit(String),
}

/// Any error of a run, with its exit code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Input(#[from] InputError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("another propel run holds the lock {path} ({holder}); try again when it has finished")]
    LockHeld { path: PathBuf, holder: String },
    #[error("backfill stopped at --as-of {night} (the nights before it are published): {source}")]
    Backfill {
        night: chrono::NaiveDate,
        #[source]
        source: Box<Error>,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{context}: {source}")]
    Polars {
        context: String,
        #[source]
        source: polars::error::PolarsError,
    },
}

/// Exit codes of the `propel` binary, documented in the README.
pub mod exit_code {
    pub const SUCCESS: i32 = 0;
    pub const FAILURE: i32 = 1;
    pub const CONFIG: i32 = 2;
    pub const INPUT: i32 = 3;
    pub const MODEL_REFUSED: i32 = 4;
    pub const LOCK_HELD: i32 = 5;
}

impl Error {
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Config(_) => exit_code::CONFIG,
            Error::Input(_) => exit_code::INPUT,
            Error::Model(ModelError::Ineligible { .. }) => exit_code::MODEL_REFUSED,
            Error::Model(ModelError::FeatureMismatch { .. }) => exit_code::CONFIG,
            Error::Model(ModelError::Fit(_)) => exit_code::FAILURE,
            Error::LockHeld { .. } => exit_code::LOCK_HELD,
            Error::Backfill { source, .. } => source.exit_code(),
            Error::Io { .. } | Error::Polars { .. } => exit_code::FAILURE,
        }
    }

    /// Marks an error as the one that stopped a backfill at `night`.
    pub fn during_backfill(self, night: chrono::NaiveDate) -> Error {
        Error::Backfill {
            night,
            source: Box::new(self),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Adds a context to polars and io errors: `df.collect().ctx("reading events")?`.
pub trait Context<T> {
    fn ctx(self, context: impl Into<String>) -> Result<T>;
}

impl<T> Context<T> for std::result::Result<T, polars::error::PolarsError> {
    fn ctx(self, context: impl Into<String>) -> Result<T> {
        self.map_err(|source| Error::Polars {
            context: context.into(),
            source,
        })
    }
}

impl<T> Context<T> for std::result::Result<T, std::io::Error> {
    fn ctx(self, context: impl Into<String>) -> Result<T> {
        self.map_err(|source| Error::Io {
            context: context.into(),
            source,
        })
    }
}
