//! DuckDB target settings, and its entry in the target registry.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use super::DuckDbTarget;
use crate::error::Result;
use crate::targets::Target;
use crate::targets::TargetKind;

/// DuckDB target settings.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DuckDbConfig {
    /// Database file. Default: `<data_dir>/quiver.duckdb` for the target named `duckdb`,
    /// `<data_dir>/<name>.duckdb` for others.
    pub path: Option<PathBuf>,
    /// DuckDB worker threads; DuckDB's default (all cores) when absent.
    pub threads: Option<u32>,
    /// DuckDB memory limit, e.g. "4GB"; DuckDB's default (80% of RAM) when absent.
    pub memory_limit: Option<String>,
}

/// The `duckdb` kind.
pub struct DuckDb;

impl TargetKind for DuckDb {
    type Config = DuckDbConfig;

    fn validate(config: &DuckDbConfig) -> Result<(), String> {
        if config.threads == Some(0) {
            return Err("threads must be at least 1".to_string());
        }
        Ok(())
    }

    fn default_location(config: &mut DuckDbConfig, data_dir: &Path, name: &str) {
        if config.path.is_none() {
            let file = if name == "duckdb" {
                "quiver.duckdb".to_string()
            } else {
                format!("{name}.duckdb")
            };
            config.path = Some(data_dir.join(file));
        }
    }

    fn unshareable(_config: &DuckDbConfig) -> Option<String> {
        Some(
            "it is DuckDB, whose database file one process owns; remove it or run one replica"
                .to_string(),
        )
    }

    fn build(name: &str, config: &DuckDbConfig) -> Result<Arc<dyn Target>> {
        Ok(Arc::new(DuckDbTarget::open(name, config)?))
    }
}
