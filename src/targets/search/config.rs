//! Elasticsearch and OpenSearch target settings, and their entries in the target registry.

use std::path::PathBuf;
use std::sync::Arc;

use serde::Deserialize;

use super::{Flavour, SearchTarget};
use crate::error::Result;
use crate::targets::Target;
use crate::targets::TargetKind;

/// Elasticsearch and OpenSearch target settings.
#[derive(Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SearchConfig {
    /// `http(s)://host:port`; a user and password in the URL are sent as basic credentials.
    pub url: String,
    /// Basic credentials (instead of putting them in the URL).
    pub username: Option<String>,
    pub password: Option<String>,
    /// An encoded API key (base64 of `id:key`), sent as `Authorization: ApiKey …`.
    pub api_key: Option<String>,
    /// PEM file of the certificate authorities trusted for an `https` URL.
    pub ca_file: Option<PathBuf>,
    /// Prepended to every alias and index name this target creates.
    #[serde(default)]
    pub index_prefix: String,
    /// Size of one `_bulk` request body, in bytes.
    #[serde(default = "default_bulk_bytes")]
    pub bulk_bytes: usize,
    /// `_bulk` requests in flight at once per put.
    #[serde(default = "default_bulk_concurrency")]
    pub bulk_concurrency: usize,
    /// `number_of_shards` of new indices; the cluster's default when absent.
    pub shards: Option<u32>,
    /// `number_of_replicas` of new indices once loaded; the cluster's default when absent.
    pub replicas: Option<u32>,
    /// Seconds one request to the cluster may take.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
}

impl SearchConfig {
    /// A target for `url` with every other setting at its default.
    pub fn from_url(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            username: None,
            password: None,
            api_key: None,
            ca_file: None,
            index_prefix: String::new(),
            bulk_bytes: default_bulk_bytes(),
            bulk_concurrency: default_bulk_concurrency(),
            shards: None,
            replicas: None,
            timeout_secs: default_timeout_secs(),
        }
    }
}

/// The URL, password and API key are secrets: never print them.
impl std::fmt::Debug for SearchConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SearchConfig")
            .field("url", &"<redacted>")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("ca_file", &self.ca_file)
            .field("index_prefix", &self.index_prefix)
            .field("bulk_bytes", &self.bulk_bytes)
            .field("bulk_concurrency", &self.bulk_concurrency)
            .field("shards", &self.shards)
            .field("replicas", &self.replicas)
            .field("timeout_secs", &self.timeout_secs)
            .finish()
    }
}

fn default_bulk_bytes() -> usize {
    10 * 1024 * 1024
}

fn default_bulk_concurrency() -> usize {
    4
}

fn default_timeout_secs() -> u64 {
    120
}

/// The two products share settings and code; only the flavour differs.
macro_rules! search_kind {
    ($(#[$doc:meta])* $kind:ident, $flavour:ident) => {
        $(#[$doc])*
        pub struct $kind;

        impl TargetKind for $kind {
            type Config = SearchConfig;

            fn validate(config: &SearchConfig) -> Result<(), String> {
                super::check_config(config)
            }

            fn unshareable(_config: &SearchConfig) -> Option<String> {
                None
            }

            fn build(name: &str, config: &SearchConfig) -> Result<Arc<dyn Target>> {
                Ok(Arc::new(SearchTarget::open(name, Flavour::$flavour, config)?))
            }
        }
    };
}

search_kind!(
    /// The `elasticsearch` kind.
    Elasticsearch,
    Elasticsearch
);
search_kind!(
    /// The `opensearch` kind.
    OpenSearch,
    OpenSearch
);
