//! Settings of the Excel target, and its entry in the target registry.

use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;

use super::ExcelFormat;
use crate::error::Result;
use crate::targets::file::{FileTarget, StorageOptions};
use crate::targets::util::{default_root, unshareable_root};
use crate::targets::{Target, TargetKind};

/// Excel target settings. How each sheet looks is chosen per put (options `sheet`, `freeze`,
/// `autofilter`, `max_sheets`, `sheet_rows`).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ExcelConfig {
    /// A directory path, `file://` URL or `s3://bucket/prefix`. Default:
    /// `<data_dir>/<target name>`.
    pub root: Option<String>,
    /// Object store settings for URL roots, e.g. `aws_endpoint`, `aws_region`,
    /// `aws_access_key_id`, `aws_secret_access_key`, `aws_allow_http`,
    /// `aws_virtual_hosted_style_request` (object_store's names).
    #[serde(default)]
    pub storage: StorageOptions,
}

/// The `excel` kind: one `.xlsx` workbook per asset (or partition).
pub struct Excel;

impl TargetKind for Excel {
    type Config = ExcelConfig;

    fn default_location(config: &mut ExcelConfig, data_dir: &Path, name: &str) {
        default_root(&mut config.root, data_dir, name);
    }

    fn unshareable(config: &ExcelConfig) -> Option<String> {
        unshareable_root(config.root.as_deref())
    }

    fn build(name: &str, config: &ExcelConfig) -> Result<Arc<dyn Target>> {
        Ok(Arc::new(FileTarget::new(
            name,
            config.root.as_deref(),
            &config.storage,
            Arc::new(ExcelFormat {
                target: name.to_string(),
            }),
        )?))
    }
}
