//! Configuration: a strict TOML file, overridden by flags and `QUIVER_*` variables.
//!
//! Defaults live here and nowhere else. [`Config::validate`] is pure and runs before anything
//! connects or touches the disk, so a typo is an error at start-up rather than a silent default.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::protocol::check_target_name;

/// Default Flight listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8815";
/// Default directory for data and the catalog.
pub const DEFAULT_DATA_DIR: &str = "./data";
/// Default largest gRPC message accepted or sent (one record batch travels in one message).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// The whole configuration of a Quiver server.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address the Flight service listens on.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// How many servers run this configuration side by side. Above 1, start-up refuses
    /// storage one process owns (SQLite catalog, DuckDB, local file roots).
    #[serde(default = "default_replicas")]
    pub replicas: u32,
    /// Directory holding the catalog and the default roots of file targets.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    #[serde(default)]
    pub catalog: CatalogConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub transport: TransportConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// TLS for the Flight endpoint; plaintext when absent.
    pub tls: Option<TlsConfig>,
    /// Who may call; when absent the server is open, which it allows only on a loopback
    /// address (see `anonymous`).
    pub auth: Option<AuthConfig>,
    /// Named targets. When absent, the built-in `parquet`, `json`, `csv`, `arrow` and `duckdb`
    /// targets are enabled under `data_dir`. When present, exactly these targets exist.
    #[serde(default)]
    pub targets: Option<BTreeMap<String, TargetConfig>>,
    /// With no `[targets]` table, a `postgres` target is added for this URL
    /// (`QUIVER_POSTGRES_URL`). Not read from the file.
    #[serde(skip)]
    pub postgres_url: Option<String>,
    /// With no `[targets]` table, an `elasticsearch` target is added for this URL
    /// (`QUIVER_ELASTICSEARCH_URL`). Not read from the file.
    #[serde(skip)]
    pub elasticsearch_url: Option<String>,
    /// With no `[targets]` table, an `opensearch` target is added for this URL
    /// (`QUIVER_OPENSEARCH_URL`). Not read from the file.
    #[serde(skip)]
    pub opensearch_url: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            replicas: default_replicas(),
            data_dir: default_data_dir(),
            catalog: CatalogConfig::default(),
            limits: LimitsConfig::default(),
            transport: TransportConfig::default(),
            metrics: MetricsConfig::default(),
            auth: None,
            tls: None,
            targets: None,
            postgres_url: None,
            elasticsearch_url: None,
            opensearch_url: None,
        }
    }
}

fn default_listen() -> SocketAddr {
    DEFAULT_LISTEN.parse().expect("a valid default address")
}

fn default_replicas() -> u32 {
    1
}

fn default_data_dir() -> PathBuf {
    PathBuf::from(DEFAULT_DATA_DIR)
}

/// Where the catalog of assets is kept.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogConfig {
    /// SQLite file of the embedded catalog. Default: `<data_dir>/catalog.sqlite`.
    pub path: Option<PathBuf>,
    /// A PostgreSQL URL: keep the catalog there instead, shared by every server using it.
    pub url: Option<String>,
    /// Schema of the PostgreSQL catalog's tables.
    #[serde(default = "default_catalog_schema")]
    pub schema: String,
    /// CA file for `sslmode=verify-ca` / `verify-full` in `url`.
    pub ca_file: Option<PathBuf>,
    /// Most connections to the PostgreSQL catalog.
    #[serde(default = "default_postgres_pool_size")]
    pub pool_size: usize,
}

impl Default for CatalogConfig {
    fn default() -> Self {
        Self {
            path: None,
            url: None,
            schema: default_catalog_schema(),
            ca_file: None,
            pool_size: default_postgres_pool_size(),
        }
    }
}

/// The URL holds a password: never print it.
impl std::fmt::Debug for CatalogConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CatalogConfig")
            .field("path", &self.path)
            .field("url", &self.url.as_ref().map(|_| "<redacted>"))
            .field("schema", &self.schema)
            .field("ca_file", &self.ca_file)
            .field("pool_size", &self.pool_size)
            .finish()
    }
}

fn default_catalog_schema() -> String {
    "quiver".to_string()
}

/// The Flight endpoint's certificate, and optionally the CA its clients must present
/// certificates from (mutual TLS).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain of the server.
    pub cert_file: PathBuf,
    /// PEM private key of the server.
    pub key_file: PathBuf,
    /// PEM CA certificates; when set, every client must present a certificate signed by one.
    pub client_ca_file: Option<PathBuf>,
}

/// What callers without credentials may do.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AnonymousAccess {
    /// Every call needs credentials.
    #[default]
    None,
    /// Anonymous callers may read every asset.
    Read,
    /// Anonymous callers may read and write every asset.
    Write,
}

/// Users, API tokens and their grants.
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    #[serde(default)]
    pub anonymous: AnonymousAccess,
    #[serde(default)]
    pub users: Vec<UserConfig>,
    #[serde(default)]
    pub tokens: Vec<TokenConfig>,
    /// Hex key (at least 64 digits) signing session tokens; random per process when absent.
    /// Replicas behind one address must share it.
    pub session_secret: Option<String>,
    /// How long a session token from a handshake is valid.
    #[serde(default = "default_session_hours")]
    pub session_hours: u64,
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthConfig")
            .field("anonymous", &self.anonymous)
            .field(
                "users",
                &self.users.iter().map(|u| &u.name).collect::<Vec<_>>(),
            )
            .field(
                "tokens",
                &self.tokens.iter().map(|t| &t.name).collect::<Vec<_>>(),
            )
            .field("session_hours", &self.session_hours)
            .finish_non_exhaustive()
    }
}

fn default_session_hours() -> u64 {
    12
}

/// A user who authenticates with a password (Flight handshake or Basic credentials).
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub name: String,
    /// From `quiver hash-password`.
    pub password_hash: String,
    /// Grants: `*`, `target`, `target:*` or `target:asset/prefix`.
    #[serde(default)]
    pub read: Vec<String>,
    /// Grants to write (writing implies reading).
    #[serde(default)]
    pub write: Vec<String>,
}

/// A static API token, sent as `authorization: Bearer <token>`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    pub name: String,
    /// SHA-256 of the token in hex, from `quiver hash-token`.
    pub token_sha256: String,
    #[serde(default)]
    pub read: Vec<String>,
    #[serde(default)]
    pub write: Vec<String>,
}

/// The HTTP endpoint for Prometheus and Kubernetes probes.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address serving `/metrics`, `/healthz` and `/readyz`; off when absent.
    pub listen: Option<SocketAddr>,
}

/// Limits on what clients may send.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest gRPC message (one record batch) accepted or sent, in bytes.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// Most puts running at once on this server; more are refused with RESOURCE_EXHAUSTED.
    #[serde(default = "default_max_concurrent_puts")]
    pub max_concurrent_puts: usize,
    /// Most puts running at once into one target.
    #[serde(default = "default_max_concurrent_puts_per_target")]
    pub max_concurrent_puts_per_target: usize,
    /// Seconds a put may wait for the client's next message before it is aborted.
    #[serde(default = "default_put_idle_timeout_secs")]
    pub put_idle_timeout_secs: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            max_concurrent_puts: default_max_concurrent_puts(),
            max_concurrent_puts_per_target: default_max_concurrent_puts_per_target(),
            put_idle_timeout_secs: default_put_idle_timeout_secs(),
        }
    }
}

fn default_put_idle_timeout_secs() -> u64 {
    300
}

fn default_max_concurrent_puts() -> usize {
    64
}

fn default_max_concurrent_puts_per_target() -> usize {
    16
}

fn default_max_message_bytes() -> usize {
    DEFAULT_MAX_MESSAGE_BYTES
}

/// HTTP/2 settings of the Flight endpoint.
///
/// HTTP/2's defaults (64 KiB flow-control windows, 16 KiB frames) hold one put stream to a
/// fraction of what loopback or a LAN carries. hyper's adaptive window grows towards 16 MiB
/// from round-trip measurements, and a put spent much of its time below that; fixed windows
/// of that size and 1 MiB frames halved the transfer of a 500 MB put (docs/benchmarks.md). The
/// windows bound what one stream or connection may have in flight, so they also bound the
/// memory a slow writer lets a client fill.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransportConfig {
    /// Bytes a client may send on one stream before the server has read them.
    #[serde(default = "default_window_bytes")]
    pub stream_window_bytes: u32,
    /// Bytes a client may send on one connection, over all its streams, before the server
    /// has read them.
    #[serde(default = "default_window_bytes")]
    pub connection_window_bytes: u32,
    /// Largest HTTP/2 frame the server accepts; clients send up to this much per frame.
    #[serde(default = "default_max_frame_bytes")]
    pub max_frame_bytes: u32,
}

impl Default for TransportConfig {
    fn default() -> Self {
        Self {
            stream_window_bytes: default_window_bytes(),
            connection_window_bytes: default_window_bytes(),
            max_frame_bytes: default_max_frame_bytes(),
        }
    }
}

impl TransportConfig {
    /// HTTP/2's bounds (RFC 9113 §6.5.2, §6.9.1).
    fn validate(&self) -> Result<()> {
        const MIN_WINDOW: u32 = 65_535;
        const MAX_WINDOW: u32 = (1 << 31) - 1;
        for (key, value) in [
            ("stream_window_bytes", self.stream_window_bytes),
            ("connection_window_bytes", self.connection_window_bytes),
        ] {
            if !(MIN_WINDOW..=MAX_WINDOW).contains(&value) {
                return Err(Error::config(format!(
                    "transport.{key} is {value}; HTTP/2 allows {MIN_WINDOW} to {MAX_WINDOW}"
                )));
            }
        }
        if !(16_384..=16_777_215).contains(&self.max_frame_bytes) {
            return Err(Error::config(format!(
                "transport.max_frame_bytes is {}; HTTP/2 allows 16384 to 16777215",
                self.max_frame_bytes
            )));
        }
        Ok(())
    }
}

fn default_window_bytes() -> u32 {
    16 * 1024 * 1024
}

fn default_max_frame_bytes() -> u32 {
    1024 * 1024
}

/// One target, selected by `kind`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum TargetConfig {
    Parquet(ParquetConfig),
    Json(FileConfig),
    Csv(FileConfig),
    Arrow(ArrowConfig),
    Duckdb(DuckDbConfig),
    Postgres(PostgresConfig),
    Elasticsearch(SearchConfig),
    Opensearch(SearchConfig),
    /// Keeps nothing: for measuring the Flight transport alone (see docs/benchmarks.md).
    Discard(DiscardConfig),
}

/// The discard target has no settings.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DiscardConfig {}

impl TargetConfig {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Parquet(_) => "parquet",
            Self::Json(_) => "json",
            Self::Csv(_) => "csv",
            Self::Arrow(_) => "arrow",
            Self::Duckdb(_) => "duckdb",
            Self::Postgres(_) => "postgres",
            Self::Elasticsearch(_) => "elasticsearch",
            Self::Opensearch(_) => "opensearch",
            Self::Discard(_) => "discard",
        }
    }

    /// Fills in the default storage location under `data_dir`.
    fn default_location(&mut self, data_dir: &Path, name: &str) {
        let root = match self {
            Self::Parquet(c) => &mut c.root,
            Self::Json(c) | Self::Csv(c) => &mut c.root,
            Self::Arrow(c) => &mut c.root,
            Self::Duckdb(c) => {
                if c.path.is_none() {
                    let file = if name == "duckdb" {
                        "quiver.duckdb".to_string()
                    } else {
                        format!("{name}.duckdb")
                    };
                    c.path = Some(data_dir.join(file));
                }
                return;
            }
            Self::Postgres(_) | Self::Elasticsearch(_) | Self::Opensearch(_) | Self::Discard(_) => {
                return;
            }
        };
        if root.is_none() {
            *root = Some(data_dir.join(name).to_string_lossy().into_owned());
        }
    }
}

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

/// PostgreSQL target settings.
#[derive(Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// `postgres://user:password@host:port/database?sslmode=...`; `sslmode` may be `disable`,
    /// `prefer`, `require`, `verify-ca` or `verify-full`, `sslrootcert` a CA file.
    pub url: String,
    /// Schema of assets whose key has a single segment.
    #[serde(default = "default_postgres_schema")]
    pub schema: String,
    /// PEM file of the certificate authorities trusted for `verify-ca` / `verify-full`.
    pub ca_file: Option<PathBuf>,
    /// Most connections the target opens; each running put or read holds one.
    #[serde(default = "default_postgres_pool_size")]
    pub pool_size: usize,
}

impl PostgresConfig {
    /// A target for `url` with every other setting at its default.
    pub fn from_url(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            schema: default_postgres_schema(),
            ca_file: None,
            pool_size: default_postgres_pool_size(),
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
    #[serde(default = "default_search_timeout_secs")]
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
            timeout_secs: default_search_timeout_secs(),
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

fn default_search_timeout_secs() -> u64 {
    120
}

fn default_postgres_schema() -> String {
    "public".to_string()
}

fn default_postgres_pool_size() -> usize {
    8
}

impl Config {
    /// With several replicas, every piece of state must live in shared storage.
    fn check_shareable(&self, targets: &BTreeMap<String, TargetConfig>) -> Result<()> {
        let replicas = self.replicas;
        if self.catalog.url.is_none() {
            return Err(Error::config(format!(
                "replicas = {replicas} needs a shared catalog: set [catalog] url = \"postgres://…\" \
                 (the SQLite catalog belongs to one process)"
            )));
        }
        for (name, target) in targets {
            let root = match target {
                TargetConfig::Duckdb(_) => {
                    return Err(Error::config(format!(
                        "replicas = {replicas}: target '{name}' is DuckDB, whose database file one \
                         process owns; remove it or run one replica"
                    )));
                }
                TargetConfig::Postgres(_)
                | TargetConfig::Elasticsearch(_)
                | TargetConfig::Opensearch(_)
                | TargetConfig::Discard(_) => continue,
                TargetConfig::Parquet(c) => c.root.as_deref(),
                TargetConfig::Arrow(c) => c.root.as_deref(),
                TargetConfig::Json(c) | TargetConfig::Csv(c) => c.root.as_deref(),
            };
            let shared = root.is_some_and(|r| r.starts_with("s3://"));
            if !shared {
                return Err(Error::config(format!(
                    "replicas = {replicas}: target '{name}' keeps files on a local path, which \
                     other replicas cannot see; give it an s3:// root or run one replica"
                )));
            }
        }
        Ok(())
    }

    /// Reads a TOML file; unknown keys are errors.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::config(format!("cannot read config file {}: {e}", path.display()))
        })?;
        Self::from_toml(&text)
            .map_err(|e| Error::config(format!("config file {}: {e}", path.display())))
    }

    pub fn from_toml(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }

    /// The targets this configuration enables, with every default filled in.
    pub fn resolved_targets(&self) -> BTreeMap<String, TargetConfig> {
        let mut targets = self.targets.clone().unwrap_or_else(|| {
            let mut defaults = BTreeMap::from([
                (
                    "parquet".to_string(),
                    TargetConfig::Parquet(ParquetConfig::default()),
                ),
                (
                    "json".to_string(),
                    TargetConfig::Json(FileConfig::default()),
                ),
                ("csv".to_string(), TargetConfig::Csv(FileConfig::default())),
                (
                    "arrow".to_string(),
                    TargetConfig::Arrow(ArrowConfig::default()),
                ),
                (
                    "duckdb".to_string(),
                    TargetConfig::Duckdb(DuckDbConfig::default()),
                ),
            ]);
            if let Some(url) = &self.postgres_url {
                defaults.insert(
                    "postgres".to_string(),
                    TargetConfig::Postgres(PostgresConfig::from_url(url)),
                );
            }
            if let Some(url) = &self.elasticsearch_url {
                defaults.insert(
                    "elasticsearch".to_string(),
                    TargetConfig::Elasticsearch(SearchConfig::from_url(url)),
                );
            }
            if let Some(url) = &self.opensearch_url {
                defaults.insert(
                    "opensearch".to_string(),
                    TargetConfig::Opensearch(SearchConfig::from_url(url)),
                );
            }
            defaults
        });
        for (name, target) in &mut targets {
            target.default_location(&self.data_dir, name);
        }
        targets
    }

    /// Path of the embedded catalog.
    pub fn catalog_path(&self) -> PathBuf {
        self.catalog
            .path
            .clone()
            .unwrap_or_else(|| self.data_dir.join("catalog.sqlite"))
    }

    /// Checks everything that can be checked without touching the outside world.
    pub fn validate(&self) -> Result<()> {
        if self.limits.max_concurrent_puts == 0 || self.limits.max_concurrent_puts_per_target == 0 {
            return Err(Error::config(
                "limits.max_concurrent_puts and limits.max_concurrent_puts_per_target must be at least 1",
            ));
        }
        if self.limits.put_idle_timeout_secs == 0 {
            return Err(Error::config(
                "limits.put_idle_timeout_secs must be at least 1",
            ));
        }
        if self.limits.max_message_bytes < 1024 {
            return Err(Error::config(
                "limits.max_message_bytes must be at least 1024",
            ));
        }
        self.transport.validate()?;
        if self.auth.is_none() && !self.listen.ip().is_loopback() {
            return Err(Error::config(format!(
                "listening on {} without authentication: add an [auth] section with users or \
                 tokens, or allow anonymous callers explicitly with [auth] anonymous = \"write\" \
                 (or --anonymous write); without [auth] the server listens on loopback only",
                self.listen
            )));
        }
        crate::auth::Authenticator::from_config(self.auth.as_ref())?;
        if let Some(url) = &self.catalog.url {
            if self.catalog.path.is_some() {
                return Err(Error::config(
                    "[catalog] sets both path (SQLite) and url (PostgreSQL); keep one",
                ));
            }
            crate::targets::postgres::connection::settings(url, self.catalog.ca_file.as_deref())
                .map_err(|e| Error::config(format!("[catalog] {e}")))?;
            if self.catalog.pool_size == 0 {
                return Err(Error::config("[catalog] pool_size must be at least 1"));
            }
        }
        let targets = self.resolved_targets();
        if self.replicas > 1 {
            self.check_shareable(&targets)?;
        }
        if targets.is_empty() {
            return Err(Error::config(
                "no targets are configured; add a [targets.<name>] table with a kind",
            ));
        }
        for (name, target) in &targets {
            check_target_name(name).map_err(|e| Error::config(e.to_string()))?;
            match target {
                TargetConfig::Parquet(c) => {
                    crate::targets::file::parquet::writer_properties(c)
                        .and_then(|_| crate::targets::file::parallel::threads(c.threads))
                        .map_err(|e| Error::config(format!("[targets.{name}] {e}")))?;
                }
                TargetConfig::Arrow(c) => {
                    crate::targets::file::arrow::compression(&c.compression)
                        .map_err(|e| Error::config(format!("[targets.{name}] {e}")))?;
                }
                TargetConfig::Duckdb(c) => {
                    if c.threads == Some(0) {
                        return Err(Error::config(format!(
                            "[targets.{name}] threads must be at least 1"
                        )));
                    }
                }
                TargetConfig::Postgres(c) => {
                    crate::targets::postgres::connection::settings(&c.url, c.ca_file.as_deref())
                        .map_err(|e| Error::config(format!("[targets.{name}] {e}")))?;
                    if c.pool_size == 0 {
                        return Err(Error::config(format!(
                            "[targets.{name}] pool_size must be at least 1"
                        )));
                    }
                }
                TargetConfig::Elasticsearch(c) | TargetConfig::Opensearch(c) => {
                    crate::targets::search::check_config(c)
                        .map_err(|e| Error::config(format!("[targets.{name}] {e}")))?;
                }
                TargetConfig::Json(c) | TargetConfig::Csv(c) => {
                    crate::targets::file::parallel::threads(c.threads)
                        .map_err(|e| Error::config(format!("[targets.{name}] {e}")))?;
                }
                TargetConfig::Discard(_) => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_file_means_the_built_in_targets_under_data() {
        let config = Config::default();
        config.validate().unwrap();
        let targets = config.resolved_targets();
        assert_eq!(
            targets.keys().collect::<Vec<_>>(),
            ["arrow", "csv", "duckdb", "json", "parquet"]
        );
        let TargetConfig::Duckdb(d) = &targets["duckdb"] else {
            panic!("duckdb target has kind {}", targets["duckdb"].kind());
        };
        assert_eq!(d.path.as_deref(), Some(Path::new("./data/quiver.duckdb")));
        let TargetConfig::Parquet(p) = &targets["parquet"] else {
            panic!("parquet target has kind {}", targets["parquet"].kind());
        };
        assert_eq!(p.root.as_deref(), Some("./data/parquet"));
        assert_eq!(config.listen.to_string(), DEFAULT_LISTEN);
    }

    #[test]
    fn named_targets_replace_the_defaults() {
        let config = Config::from_toml(
            r#"
            data_dir = "/srv/quiver"
            [targets.lake]
            kind = "parquet"
            compression = "snappy"
            [targets.exports]
            kind = "csv"
            root = "file:///tmp/exports"
            "#,
        )
        .unwrap();
        config.validate().unwrap();
        let targets = config.resolved_targets();
        assert_eq!(targets.len(), 2);
        let TargetConfig::Parquet(lake) = &targets["lake"] else {
            panic!("lake is {}", targets["lake"].kind());
        };
        assert_eq!(lake.root.as_deref(), Some("/srv/quiver/lake"));
        assert_eq!(lake.compression, "snappy");
    }

    #[test]
    fn typos_are_errors() {
        for text in [
            "listen_addr = \"0.0.0.0:1\"",
            "[targets.a]\nkind = \"parquet\"\ncompresion = \"zstd\"",
            "[targets.a]\nkind = \"parquett\"",
            "[catalog]\nuri = \"x\"",
        ] {
            assert!(Config::from_toml(text).is_err(), "{text}");
        }
    }

    #[test]
    fn validate_refuses_bad_values() {
        let bad_codec =
            Config::from_toml("[targets.a]\nkind = \"parquet\"\ncompression = \"lzma\"").unwrap();
        let err = bad_codec.validate().unwrap_err().to_string();
        assert!(err.contains("[targets.a]") && err.contains("lzma"), "{err}");
        let bad_name = Config::from_toml("[targets.\"a b\"]\nkind = \"csv\"").unwrap();
        assert!(bad_name.validate().is_err());
        let bad_ipc =
            Config::from_toml("[targets.a]\nkind = \"arrow\"\ncompression = \"gzip\"").unwrap();
        assert!(bad_ipc.validate().is_err());
        for (text, key) in [
            (
                "stream_window_bytes = 1000",
                "transport.stream_window_bytes is 1000",
            ),
            (
                "connection_window_bytes = 2147483648",
                "transport.connection_window_bytes",
            ),
            (
                "max_frame_bytes = 16383",
                "transport.max_frame_bytes is 16383",
            ),
            (
                "max_frame_bytes = 16777216",
                "HTTP/2 allows 16384 to 16777215",
            ),
        ] {
            let err = Config::from_toml(&format!("[transport]\n{text}"))
                .unwrap()
                .validate()
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
        for kind in ["parquet", "csv", "json"] {
            let no_threads =
                Config::from_toml(&format!("[targets.a]\nkind = \"{kind}\"\nthreads = 0")).unwrap();
            let err = no_threads.validate().unwrap_err().to_string();
            assert!(
                err.contains("[targets.a] threads must be at least 1"),
                "{err}"
            );
        }
    }

    #[test]
    fn several_replicas_need_shared_storage() {
        let mut config = Config {
            replicas: 3,
            ..Config::default()
        };
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("[catalog] url"), "{err}");
        config.catalog.url = Some("postgres://u:pw@db/quiver".into());
        let err = config.validate().unwrap_err().to_string();
        assert!(
            err.contains("DuckDB") || err.contains("local path"),
            "{err}"
        );
        assert!(!err.contains("pw@"), "{err}");
        config.targets = Some(BTreeMap::from([(
            "warehouse".to_string(),
            TargetConfig::Postgres(PostgresConfig::from_url("postgres://u@db/w")),
        )]));
        config.validate().unwrap();
    }

    #[test]
    fn search_targets_come_from_urls_or_tables() {
        let config = Config {
            elasticsearch_url: Some("http://elastic:pw@es:9200".into()),
            opensearch_url: Some("https://os:9200".into()),
            ..Config::default()
        };
        config.validate().unwrap();
        let targets = config.resolved_targets();
        assert_eq!(targets["elasticsearch"].kind(), "elasticsearch");
        assert_eq!(targets["opensearch"].kind(), "opensearch");
        let debug = format!("{:?}", targets["elasticsearch"]);
        assert!(!debug.contains("pw"), "{debug}");

        let config = Config::from_toml(
            "[targets.search]\nkind = \"opensearch\"\nurl = \"http://os:9200\"\nbulk_concurrency = 0\n",
        )
        .unwrap();
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("[targets.search] bulk_concurrency"), "{err}");
        let config =
            Config::from_toml("[targets.search]\nkind = \"elasticsearch\"\nurl = \"ftp://es\"\n")
                .unwrap();
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("http://"), "{err}");
    }
}
