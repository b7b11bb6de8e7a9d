//! Redis target settings, and its entry in the target registry.

use std::sync::Arc;

use serde::Deserialize;

use super::RedisTarget;
use crate::error::Result;
use crate::targets::{Target, TargetKind};

/// How an asset's rows are laid out in Redis.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// The asset as Arrow IPC streams (zstd) in versioned string keys behind a pointer hash.
    #[default]
    Table,
    /// One Redis hash per row, named by the row's key columns.
    Hash,
}

impl Layout {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Table => "table",
            Self::Hash => "hash",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "table" => Some(Self::Table),
            "hash" => Some(Self::Hash),
            _ => None,
        }
    }
}

/// Redis target settings.
#[derive(Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[user:password@]host[:port][/db]`, `rediss://…` for TLS, or
    /// `redis+unix:///path/to/socket[?db=N]`.
    pub url: String,
    /// The first part of every key this target writes: `{<prefix>:<asset>}…`.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// The layout of puts that do not choose one with the `layout` option.
    #[serde(default)]
    pub layout: Layout,
    /// Seconds after which the keys of a put expire, for puts without a `ttl` option; none
    /// when absent.
    pub ttl: Option<u64>,
    /// Table layout: bytes of Arrow IPC per key, at most. Redis holds at most 512 MiB in one value.
    #[serde(default = "default_chunk_bytes")]
    pub chunk_bytes: usize,
    /// Hash layout: commands sent per round trip.
    #[serde(default = "default_pipeline")]
    pub pipeline: usize,
    /// Seconds one request may wait for Redis' answer.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
}

impl RedisConfig {
    /// A target for `url` with every other setting at its default.
    pub fn from_url(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            prefix: default_prefix(),
            layout: Layout::default(),
            ttl: None,
            chunk_bytes: default_chunk_bytes(),
            pipeline: default_pipeline(),
            timeout_secs: default_timeout_secs(),
        }
    }
}

/// The URL may hold a password: it is printed without it.
impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &redacted(&self.url))
            .field("prefix", &self.prefix)
            .field("layout", &self.layout)
            .field("ttl", &self.ttl)
            .field("chunk_bytes", &self.chunk_bytes)
            .field("pipeline", &self.pipeline)
            .field("timeout_secs", &self.timeout_secs)
            .finish()
    }
}

fn default_prefix() -> String {
    "quiver".to_string()
}

/// 64 MiB: far below Redis' 512 MiB value limit, large enough that a read is a few round trips.
fn default_chunk_bytes() -> usize {
    64 << 20
}

fn default_pipeline() -> usize {
    10_000
}

fn default_timeout_secs() -> u64 {
    60
}

/// Largest `chunk_bytes`: a chunk may exceed it by one slice of a batch, and Redis refuses
/// values over 512 MiB.
pub(super) const MAX_CHUNK_BYTES: usize = 256 << 20;

/// The URL as messages and logs show it: the password replaced by `***`.
pub fn redacted(url: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(url) else {
        return "<an unparsable URL>".to_string();
    };
    if parsed.password().is_none() {
        return parsed.to_string();
    }
    let _ = parsed.set_password(None);
    let mut shown = parsed.to_string();
    let after_scheme = shown.find("://").map_or(0, |i| i + 3);
    match parsed.username() {
        "" => shown.insert_str(after_scheme, ":***@"),
        user => shown.insert_str(after_scheme + user.len(), ":***"),
    }
    shown
}

/// Checks settings without connecting.
pub(super) fn check(config: &RedisConfig) -> Result<(), String> {
    let url = url::Url::parse(&config.url).map_err(|e| {
        format!(
            "url {} is not a valid URL ({e}); e.g. redis://127.0.0.1:6379/0",
            redacted(&config.url)
        )
    })?;
    if !matches!(url.scheme(), "redis" | "rediss" | "redis+unix" | "unix") {
        return Err(format!(
            "url must start with redis://, rediss:// or redis+unix://, not {}://",
            url.scheme()
        ));
    }
    redis::Client::open(config.url.as_str())
        .map_err(|e| format!("url {} is not usable: {e}", redacted(&config.url)))?;
    if config.prefix.is_empty()
        || !config
            .prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | ':'))
    {
        return Err(format!(
            "prefix {:?} must be non-empty and use only [A-Za-z0-9_.:-]",
            config.prefix
        ));
    }
    if config.ttl == Some(0) {
        return Err(
            "ttl must be at least 1 second; leave it out for keys that never expire".into(),
        );
    }
    if !(1024..=MAX_CHUNK_BYTES).contains(&config.chunk_bytes) {
        return Err(format!(
            "chunk_bytes must be between 1024 and {MAX_CHUNK_BYTES} (256 MiB)"
        ));
    }
    if config.pipeline < 2 {
        return Err("pipeline must be at least 2 commands".into());
    }
    if config.timeout_secs == 0 {
        return Err("timeout_secs must be at least 1".into());
    }
    Ok(())
}

/// The `redis` kind.
pub struct Redis;

impl TargetKind for Redis {
    type Config = RedisConfig;

    fn validate(config: &RedisConfig) -> Result<(), String> {
        check(config)
    }

    fn unshareable(_config: &RedisConfig) -> Option<String> {
        None
    }

    fn build(name: &str, config: &RedisConfig) -> Result<Arc<dyn Target>> {
        Ok(Arc::new(RedisTarget::open(name, config)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<RedisConfig, String> {
        toml::from_str::<RedisConfig>(text).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_and_strictness() {
        let config = parse("url = \"redis://127.0.0.1:6379/0\"").unwrap();
        assert_eq!(config, RedisConfig::from_url("redis://127.0.0.1:6379/0"));
        assert_eq!(config.prefix, "quiver");
        assert_eq!(config.layout, Layout::Table);
        check(&config).unwrap();
        let err = parse("url = \"redis://h\"\nlayuot = \"hash\"").unwrap_err();
        assert!(err.contains("layuot"), "{err}");
        let err = parse("url = \"redis://h\"\nlayout = \"rows\"").unwrap_err();
        assert!(err.contains("rows"), "{err}");
        assert!(parse("prefix = \"x\"").unwrap_err().contains("url"));
    }

    #[test]
    fn settings_are_checked() {
        let with = |edit: fn(&mut RedisConfig)| {
            let mut config = RedisConfig::from_url("redis://127.0.0.1/0");
            edit(&mut config);
            check(&config)
        };
        assert!(
            with(|c| c.url = "http://h:6379".into())
                .unwrap_err()
                .contains("redis://")
        );
        assert!(
            with(|c| c.prefix = "a{b}".into())
                .unwrap_err()
                .contains("prefix")
        );
        assert!(
            with(|c| c.prefix = String::new())
                .unwrap_err()
                .contains("prefix")
        );
        assert!(with(|c| c.ttl = Some(0)).unwrap_err().contains("ttl"));
        assert!(
            with(|c| c.chunk_bytes = 1 << 30)
                .unwrap_err()
                .contains("chunk_bytes")
        );
        assert!(with(|c| c.pipeline = 1).unwrap_err().contains("pipeline"));
        with(|c| c.url = "rediss://default:pw@cache.example.com:6380/2".into()).unwrap();
        with(|c| c.prefix = "app:cache".into()).unwrap();
    }

    #[test]
    fn the_password_never_prints() {
        let config = RedisConfig::from_url("redis://app:s3cret@cache:6379/1");
        let debug = format!("{config:?}");
        assert!(!debug.contains("s3cret"), "{debug}");
        assert!(debug.contains("redis://app:***@cache:6379/1"), "{debug}");
        assert_eq!(
            redacted("redis://:pw@cache:6379"),
            "redis://:***@cache:6379"
        );
        assert_eq!(redacted("redis://cache:6379"), "redis://cache:6379");
        let err = check(&RedisConfig::from_url("redis://app:s3cret@ca che")).unwrap_err();
        assert!(!err.contains("s3cret"), "{err}");
    }
}
