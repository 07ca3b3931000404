//! Audiences: named cuts of the ranked scores (the top N % of customers), written as CSV
//! that marketers upload. Exports carry hashed identifiers only (`customer_id`,
//! `email_sha256`), never a raw user id or e-mail.

use std::path::Path;

use polars::prelude::*;

use crate::config::AudienceDef;
use crate::error::{Context, Result};
use crate::schema::{event as ev, output};

/// Size of one written audience.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AudienceSize {
    pub name: String,
    pub size: usize,
    pub file: String,
}

/// Members of an audience: the first `ceil(n * top_percent / 100)` customers by score.
pub fn members(ranked: &DataFrame, def: &AudienceDef) -> DataFrame {
    let n = ranked.height();
    let take = ((n as f64) * def.top_percent / 100.0).ceil() as usize;
    ranked.head(Some(take.min(n)))
}

/// Writes every audience under `dir/<name>/customers.csv`; returns their sizes.
pub fn write_all(
    ranked: &DataFrame,
    defs: &[AudienceDef],
    dir: &Path,
) -> Result<Vec<AudienceSize>> {
    let mut sizes = Vec::new();
    for def in defs {
        let mut m = members(ranked, def)
            .lazy()
            .select([
                col(ev::CUSTOMER_ID),
                col(output::EMAIL_SHA256),
                col(output::SCORE),
                col(output::PERCENTILE),
                col(output::DECILE),
                col("^reason_.*$"),
            ])
            .collect()
            .ctx(format!("audience {}", def.name))?;
        let rel = format!("audiences/{}/customers.csv", def.name);
        let path = dir.join(&rel);
        std::fs::create_dir_all(path.parent().expect("has parent"))
            .ctx(format!("creating {}", path.display()))?;
        let mut file = std::fs::File::create(&path).ctx(format!("creating {}", path.display()))?;
        CsvWriter::new(&mut file)
            .include_header(true)
            .with_float_precision(Some(6))
            .finish(&mut m)
            .ctx(format!("writing {}", path.display()))?;
        sizes.push(AudienceSize {
            name: def.name.clone(),
            size: m.height(),
            file: rel,
        });
    }
    Ok(sizes)
}
