//! Settings of the file targets, and their entries in the target registry.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;

use super::FileTarget;
use crate::error::Result;
use crate::targets::Target;
use crate::targets::TargetKind;
use crate::targets::util::{default_root, unshareable_root};

/// Object store settings of a file target; values may be secrets and are never printed.
#[derive(Clone, Default, Deserialize, PartialEq)]
#[serde(transparent)]
pub struct StorageOptions(pub BTreeMap<String, String>);

impl std::fmt::Debug for StorageOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.0.keys().map(|k| (k, "<redacted>")))
            .finish()
    }
}

/// Settings shared by the JSON (NDJSON) and CSV targets.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// A directory path, `file://` URL or `s3://bucket/prefix`. Default:
    /// `<data_dir>/<target name>`.
    pub root: Option<String>,
    /// Object store settings for URL roots, e.g. `aws_endpoint`, `aws_region`,
    /// `aws_access_key_id`, `aws_secret_access_key`, `aws_allow_http`,
    /// `aws_virtual_hosted_style_request` (object_store's names).
    #[serde(default)]
    pub storage: StorageOptions,
    /// Threads that encode slices of one batch at once; the machine's cores when absent.
    pub threads: Option<usize>,
}

/// Parquet target settings.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ParquetConfig {
    /// A directory path, `file://` URL or `s3://bucket/prefix`. Default:
    /// `<data_dir>/<target name>`.
    pub root: Option<String>,
    /// Object store settings for URL roots, e.g. `aws_endpoint`, `aws_region`,
    /// `aws_access_key_id`, `aws_secret_access_key`, `aws_allow_http`,
    /// `aws_virtual_hosted_style_request` (object_store's names).
    #[serde(default)]
    pub storage: StorageOptions,
    /// `none`, `snappy`, `gzip`, `lz4`, `zstd` or `brotli`.
    #[serde(default = "default_parquet_compression")]
    pub compression: String,
    /// Codec level for `gzip`, `zstd` and `brotli`; the codec's default when absent.
    pub compression_level: Option<u32>,
    /// Most rows per row group.
    #[serde(default = "default_row_group_size")]
    pub row_group_size: usize,
    /// Threads that encode (and read back) the columns of one file; the machine's cores when
    /// absent.
    pub threads: Option<usize>,
}

impl Default for ParquetConfig {
    fn default() -> Self {
        Self {
            root: None,
            storage: StorageOptions::default(),
            compression: default_parquet_compression(),
            compression_level: None,
            row_group_size: default_row_group_size(),
            threads: None,
        }
    }
}

fn default_parquet_compression() -> String {
    "zstd".to_string()
}

fn default_row_group_size() -> usize {
    1024 * 1024
}

/// Arrow IPC file (Feather v2) target settings.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ArrowConfig {
    /// A directory path, `file://` URL or `s3://bucket/prefix`. Default:
    /// `<data_dir>/<target name>`.
    pub root: Option<String>,
    /// Object store settings for URL roots, e.g. `aws_endpoint`, `aws_region`,
    /// `aws_access_key_id`, `aws_secret_access_key`, `aws_allow_http`,
    /// `aws_virtual_hosted_style_request` (object_store's names).
    #[serde(default)]
    pub storage: StorageOptions,
    /// Buffer compression: `none`, `lz4` or `zstd`.
    #[serde(default = "default_ipc_compression")]
    pub compression: String,
}

impl Default for ArrowConfig {
    fn default() -> Self {
        Self {
            root: None,
            storage: StorageOptions::default(),
            compression: default_ipc_compression(),
        }
    }
}

fn default_ipc_compression() -> String {
    "none".to_string()
}

/// The `parquet` kind.
pub struct Parquet;

impl TargetKind for Parquet {
    type Config = ParquetConfig;

    fn validate(config: &ParquetConfig) -> Result<(), String> {
        super::parquet::writer_properties(config)?;
        super::parallel::threads(config.threads)?;
        Ok(())
    }

    fn default_location(config: &mut ParquetConfig, data_dir: &Path, name: &str) {
        default_root(&mut config.root, data_dir, name);
    }

    fn unshareable(config: &ParquetConfig) -> Option<String> {
        unshareable_root(config.root.as_deref())
    }

    fn build(name: &str, config: &ParquetConfig) -> Result<Arc<dyn Target>> {
        Ok(Arc::new(FileTarget::parquet(name, config)?))
    }
}

/// The `arrow` kind (Arrow IPC files).
pub struct Arrow;

impl TargetKind for Arrow {
    type Config = ArrowConfig;

    fn validate(config: &ArrowConfig) -> Result<(), String> {
        super::arrow::compression(&config.compression).map(|_| ())
    }

    fn default_location(config: &mut ArrowConfig, data_dir: &Path, name: &str) {
        default_root(&mut config.root, data_dir, name);
    }

    fn unshareable(config: &ArrowConfig) -> Option<String> {
        unshareable_root(config.root.as_deref())
    }

    fn build(name: &str, config: &ArrowConfig) -> Result<Arc<dyn Target>> {
        Ok(Arc::new(FileTarget::arrow(name, config)?))
    }
}

/// The kinds whose files are text, one per format: they share their settings.
macro_rules! text_kind {
    ($(#[$doc:meta])* $kind:ident, $constructor:ident) => {
        $(#[$doc])*
        pub struct $kind;

        impl TargetKind for $kind {
            type Config = FileConfig;

            fn validate(config: &FileConfig) -> Result<(), String> {
                super::parallel::threads(config.threads).map(|_| ())
            }

            fn default_location(config: &mut FileConfig, data_dir: &Path, name: &str) {
                default_root(&mut config.root, data_dir, name);
            }

            fn unshareable(config: &FileConfig) -> Option<String> {
                unshareable_root(config.root.as_deref())
            }

            fn build(name: &str, config: &FileConfig) -> Result<Arc<dyn Target>> {
                Ok(Arc::new(FileTarget::$constructor(name, config)?))
            }
        }
    };
}

text_kind!(
    /// The `json` kind (NDJSON files).
    Json,
    json
);
text_kind!(
    /// The `csv` kind.
    Csv,
    csv
);
