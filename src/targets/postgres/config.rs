//! PostgreSQL target settings, and its entry in the target registry.

use std::path::PathBuf;
use std::sync::Arc;

use serde::Deserialize;

use super::PostgresTarget;
use crate::error::Result;
use crate::targets::Target;
use crate::targets::TargetKind;

/// PostgreSQL target settings.
#[derive(Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// `postgres://user:password@host:port/database?sslmode=...`; `sslmode` may be `disable`,
    /// `prefer`, `require`, `verify-ca` or `verify-full`, `sslrootcert` a CA file.
    pub url: String,
    /// Schema of assets whose key has a single segment.
    #[serde(default = "default_schema")]
    pub schema: String,
    /// PEM file of the certificate authorities trusted for `verify-ca` / `verify-full`.
    pub ca_file: Option<PathBuf>,
    /// Most connections the target opens; each running put or read holds one.
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
}

impl PostgresConfig {
    /// A target for `url` with every other setting at its default.
    pub fn from_url(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            schema: default_schema(),
            ca_file: None,
            pool_size: default_pool_size(),
        }
    }
}

/// The URL holds a password: never print it.
impl std::fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("url", &"<redacted>")
            .field("schema", &self.schema)
            .field("ca_file", &self.ca_file)
            .field("pool_size", &self.pool_size)
            .finish()
    }
}

fn default_schema() -> String {
    "public".to_string()
}

fn default_pool_size() -> usize {
    8
}

/// The `postgres` kind.
pub struct Postgres;

impl TargetKind for Postgres {
    type Config = PostgresConfig;

    fn validate(config: &PostgresConfig) -> Result<(), String> {
        crate::pg::settings(&config.url, config.ca_file.as_deref())?;
        if config.pool_size == 0 {
            return Err("pool_size must be at least 1".to_string());
        }
        Ok(())
    }

    fn unshareable(_config: &PostgresConfig) -> Option<String> {
        None
    }

    fn build(name: &str, config: &PostgresConfig) -> Result<Arc<dyn Target>> {
        Ok(Arc::new(PostgresTarget::open(name, config)?))
    }
}
