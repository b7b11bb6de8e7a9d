//! Settings of the `delta` kind, and its entry in the target registry.

use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;

use super::DeltaTarget;
use crate::error::Result;
use crate::targets::file::StorageOptions;
use crate::targets::{Target, TargetKind};

/// Delta Lake target settings.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DeltaConfig {
    /// A directory path, `file://` URL or `s3://bucket/prefix`; asset `a/b` is the table at
    /// `<root>/a/b/`. Default: `<data_dir>/<target name>`.
    pub root: Option<String>,
    /// Object store settings for URL roots (object_store's names, as for the file targets).
    #[serde(default)]
    pub storage: StorageOptions,
    /// Parquet codec of the data files: `none`, `snappy`, `lz4`, `zstd`, `gzip` or `brotli`.
    #[serde(default = "default_compression")]
    pub compression: String,
    /// Codec level for `gzip`, `zstd` and `brotli`; the codec's default when absent.
    pub compression_level: Option<u32>,
    /// A data file is closed and the next one begun once it reaches this many bytes.
    #[serde(default = "default_target_file_size")]
    pub target_file_size: u64,
    /// Most rows per row group.
    #[serde(default = "default_row_group_size")]
    pub row_group_size: usize,
    /// A checkpoint is written every this many commits (0: never), so a reader replays at
    /// most this many JSON commits.
    #[serde(default = "default_checkpoint_interval")]
    pub checkpoint_interval: u64,
}

impl Default for DeltaConfig {
    fn default() -> Self {
        Self {
            root: None,
            storage: StorageOptions::default(),
            compression: default_compression(),
            compression_level: None,
            target_file_size: default_target_file_size(),
            row_group_size: default_row_group_size(),
            checkpoint_interval: default_checkpoint_interval(),
        }
    }
}

fn default_compression() -> String {
    "zstd".to_string()
}

fn default_target_file_size() -> u64 {
    128 * 1024 * 1024
}

fn default_row_group_size() -> usize {
    1024 * 1024
}

fn default_checkpoint_interval() -> u64 {
    10
}

impl DeltaConfig {
    /// The Parquet writer settings of the data files.
    pub(crate) fn writer_properties(
        &self,
    ) -> Result<parquet::file::properties::WriterProperties, String> {
        crate::targets::file::parquet::writer_properties(&crate::targets::file::ParquetConfig {
            compression: self.compression.clone(),
            compression_level: self.compression_level,
            row_group_size: self.row_group_size,
            ..Default::default()
        })
    }
}

/// The `delta` kind.
pub struct Delta;

impl TargetKind for Delta {
    type Config = DeltaConfig;

    fn validate(config: &DeltaConfig) -> Result<(), String> {
        config.writer_properties()?;
        if config.target_file_size < 1024 * 1024 {
            return Err(format!(
                "target_file_size {} is below 1 MiB; give a size in bytes such as 134217728",
                config.target_file_size
            ));
        }
        Ok(())
    }

    fn default_location(config: &mut DeltaConfig, data_dir: &Path, name: &str) {
        if config.root.is_none() {
            config.root = Some(data_dir.join(name).to_string_lossy().into_owned());
        }
    }

    fn unshareable(config: &DeltaConfig) -> Option<String> {
        let shared = config
            .root
            .as_deref()
            .is_some_and(|r| r.starts_with("s3://"));
        (!shared).then(|| {
            "it keeps its tables on a local path, which other replicas cannot see; give it an \
             s3:// root or run one replica"
                .to_string()
        })
    }

    fn build(name: &str, config: &DeltaConfig) -> Result<Arc<dyn Target>> {
        Ok(Arc::new(DeltaTarget::new(name, config)?))
    }
}
