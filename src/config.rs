//! Configuration: a strict TOML file, overridden by flags and `QUIVER_*` variables.
//!
//! Defaults live here and nowhere else. [`Config::validate`] is pure and runs before anything
//! connects or touches the disk, so a typo is an error at start-up rather than a silent default.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::auth::{AuthConfig, Authenticator};
use crate::error::{Error, Result};
use crate::protocol::check_target_name;
use crate::targets::registry::KINDS;
pub use crate::targets::registry::TargetConfig;

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
    /// Flight SQL queries.
    #[serde(default)]
    pub sql: SqlConfig,
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
            sql: SqlConfig::default(),
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
    #[serde(default = "default_catalog_pool_size")]
    pub pool_size: usize,
}

impl Default for CatalogConfig {
    fn default() -> Self {
        Self {
            path: None,
            url: None,
            schema: default_catalog_schema(),
            ca_file: None,
            pool_size: default_catalog_pool_size(),
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

/// The HTTP endpoint for Prometheus and Kubernetes probes.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address serving `/metrics`, `/healthz` and `/readyz`; off when absent.
    pub listen: Option<SocketAddr>,
}

/// What one Flight SQL query may use.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlConfig {
    /// DuckDB's memory limit for one query, e.g. `2GB` or `512MiB`.
    #[serde(default = "default_sql_memory_limit")]
    pub memory_limit: String,
    /// Threads one query may use.
    #[serde(default = "default_sql_threads")]
    pub threads: usize,
    /// Seconds a query may run before it is stopped (DEADLINE_EXCEEDED).
    #[serde(default = "default_sql_timeout_secs")]
    pub timeout_secs: u64,
}

impl Default for SqlConfig {
    fn default() -> Self {
        Self {
            memory_limit: default_sql_memory_limit(),
            threads: default_sql_threads(),
            timeout_secs: default_sql_timeout_secs(),
        }
    }
}

fn default_sql_memory_limit() -> String {
    "2GB".to_string()
}

fn default_sql_threads() -> usize {
    4
}

fn default_sql_timeout_secs() -> u64 {
    900
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

fn default_catalog_pool_size() -> usize {
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
            if let Some(reason) = target.unshareable() {
                return Err(Error::config(format!(
                    "replicas = {replicas}: target '{name}' cannot be shared: {reason}"
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
            // Not mutated in a build without the optional kinds.
            #[allow(unused_mut)]
            let mut defaults = BTreeMap::from([
                (
                    "parquet".to_string(),
                    TargetConfig::Parquet(Default::default()),
                ),
                ("json".to_string(), TargetConfig::Json(Default::default())),
                ("csv".to_string(), TargetConfig::Csv(Default::default())),
                ("arrow".to_string(), TargetConfig::Arrow(Default::default())),
            ]);
            #[cfg(feature = "duckdb")]
            defaults.insert(
                "duckdb".to_string(),
                TargetConfig::Duckdb(Default::default()),
            );
            #[cfg(feature = "delta")]
            defaults.insert("delta".to_string(), TargetConfig::Delta(Default::default()));
            #[cfg(feature = "postgres")]
            if let Some(url) = &self.postgres_url {
                defaults.insert(
                    "postgres".to_string(),
                    TargetConfig::Postgres(crate::targets::postgres::PostgresConfig::from_url(url)),
                );
            }
            #[cfg(feature = "search")]
            for (name, url, build) in [
                (
                    "elasticsearch",
                    &self.elasticsearch_url,
                    TargetConfig::Elasticsearch as fn(_) -> _,
                ),
                ("opensearch", &self.opensearch_url, TargetConfig::Opensearch),
            ] {
                if let Some(url) = url {
                    defaults.insert(
                        name.to_string(),
                        build(crate::targets::search::SearchConfig::from_url(url)),
                    );
                }
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

    /// Checks everything that can be checked without touching the outside world, and builds
    /// the authenticator the `[auth]` section describes (checking it is building it).
    pub fn validate(&self) -> Result<Authenticator> {
        if self.limits.max_concurrent_puts == 0 || self.limits.max_concurrent_puts_per_target == 0 {
            return Err(Error::config(
                "limits.max_concurrent_puts and limits.max_concurrent_puts_per_target must be at least 1",
            ));
        }
        if self.sql.threads == 0 || self.sql.timeout_secs == 0 {
            return Err(Error::config(
                "sql.threads and sql.timeout_secs must be at least 1",
            ));
        }
        let memory = regex::Regex::new(r"^(?i)\d+(\.\d+)?\s*(B|KB|MB|GB|TB|KIB|MIB|GIB|TIB)$")
            .expect("a valid pattern");
        if !memory.is_match(self.sql.memory_limit.trim()) {
            return Err(Error::config(format!(
                "sql.memory_limit {:?} is not a size; write it like \"2GB\" or \"512MiB\"",
                self.sql.memory_limit
            )));
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
        let authenticator = Authenticator::from_config(self.auth.as_ref())?;
        if let Some(url) = &self.catalog.url {
            if self.catalog.path.is_some() {
                return Err(Error::config(
                    "[catalog] sets both path (SQLite) and url (PostgreSQL); keep one",
                ));
            }
            crate::pg::settings(url, self.catalog.ca_file.as_deref())
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
            target
                .validate()
                .map_err(|e| Error::config(format!("[targets.{name}] {e}")))?;
        }
        self.check_default_urls()?;
        Ok(authenticator)
    }

    /// A URL variable naming a target kind this build left out is refused, not ignored.
    fn check_default_urls(&self) -> Result<()> {
        if self.targets.is_some() {
            return Ok(());
        }
        for (variable, url, kind) in [
            ("QUIVER_POSTGRES_URL", &self.postgres_url, "postgres"),
            (
                "QUIVER_ELASTICSEARCH_URL",
                &self.elasticsearch_url,
                "elasticsearch",
            ),
            ("QUIVER_OPENSEARCH_URL", &self.opensearch_url, "opensearch"),
        ] {
            let missing = KINDS.iter().find(|k| k.kind == kind && !k.compiled);
            if let (Some(_), Some(info)) = (url, missing) {
                return Err(Error::config(format!(
                    "{variable} asks for a {kind} target, but target kind `{kind}` is not in this \
                     build (cargo feature `{}`)",
                    info.feature.unwrap_or(kind)
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(feature = "duckdb")]
    fn no_file_means_the_built_in_targets_under_data() {
        let config = Config::default();
        config.validate().unwrap();
        let targets = config.resolved_targets();
        let mut expected = vec!["arrow", "csv", "duckdb", "json", "parquet"];
        if cfg!(feature = "delta") {
            expected.insert(2, "delta");
        }
        assert_eq!(targets.keys().collect::<Vec<_>>(), expected);
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
    #[cfg(feature = "postgres")]
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
            TargetConfig::Postgres(crate::targets::postgres::PostgresConfig::from_url(
                "postgres://u@db/w",
            )),
        )]));
        config.validate().unwrap();
    }

    #[test]
    #[cfg(not(feature = "postgres"))]
    fn a_url_for_a_kind_left_out_of_the_build_is_refused() {
        let config = Config {
            postgres_url: Some("postgres://u:pw@db/x".into()),
            ..Config::default()
        };
        let err = config.validate().unwrap_err().to_string();
        assert!(
            err.contains("QUIVER_POSTGRES_URL")
                && err.contains("is not in this build (cargo feature `postgres`)"),
            "{err}"
        );
        assert!(!err.contains("pw"), "{err}");
    }

    #[test]
    #[cfg(feature = "search")]
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
