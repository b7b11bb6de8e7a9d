//! Webhook target settings, and its entry in the target registry.

use std::sync::Arc;

use serde::Deserialize;

use super::WebhookTarget;
use crate::error::Result;
use crate::targets::delivery::{
    Headers, RetryPolicy, Secret, check_http_url, check_retry, default_backoff_ms,
    default_max_backoff_secs, default_retries, default_timeout_secs, redacted_url,
};
use crate::targets::{Target, TargetKind};

/// How a request's rows are encoded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// A JSON array of row objects.
    #[default]
    Json,
    /// One JSON object per line.
    Ndjson,
    /// An Arrow IPC stream.
    Arrow,
    /// A Parquet file.
    Parquet,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Json => "application/json",
            Self::Ndjson => "application/x-ndjson",
            Self::Arrow => "application/vnd.apache.arrow.stream",
            Self::Parquet => "application/vnd.apache.parquet",
        }
    }
}

/// Webhook target settings.
#[derive(Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Where each request goes: `http://` or `https://`.
    pub url: String,
    /// `POST`, `PUT` or `PATCH`.
    #[serde(default = "default_method")]
    pub method: String,
    /// Headers sent with every request (`Authorization`, say); their values never print.
    #[serde(default)]
    pub headers: Headers,
    #[serde(default)]
    pub format: Format,
    /// Rows per request, at most.
    #[serde(default = "default_batch_rows")]
    pub batch_rows: usize,
    /// Bytes of body per request, at most.
    #[serde(default = "default_batch_bytes")]
    pub batch_bytes: usize,
    /// Key of the HMAC-SHA256 signature in `X-Quiver-Signature`; no signature without it.
    pub secret: Option<Secret>,
    /// Receives one last request listing the put's request ids once every one was delivered.
    pub commit_url: Option<String>,
    /// Seconds one attempt may take.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
    /// Attempts after the first for a request answered 429 or 5xx, or not answered.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Milliseconds before the first retry; doubled before each next one.
    #[serde(default = "default_backoff_ms")]
    pub backoff_ms: u64,
    /// Longest wait between attempts in seconds, also for a longer `Retry-After`.
    #[serde(default = "default_max_backoff_secs")]
    pub max_backoff_secs: u64,
}

impl WebhookConfig {
    /// A target for `url` with every other setting at its default.
    pub fn from_url(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            method: default_method(),
            headers: Headers::new(),
            format: Format::default(),
            batch_rows: default_batch_rows(),
            batch_bytes: default_batch_bytes(),
            secret: None,
            commit_url: None,
            timeout_secs: default_timeout_secs(),
            retries: default_retries(),
            backoff_ms: default_backoff_ms(),
            max_backoff_secs: default_max_backoff_secs(),
        }
    }

    pub fn retry(&self) -> RetryPolicy {
        RetryPolicy::from_settings(self.retries, self.backoff_ms, self.max_backoff_secs)
    }
}

/// The URLs may hold tokens: they print redacted, like the headers and the secret.
impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("url", &redacted_url(&self.url))
            .field("method", &self.method)
            .field("headers", &self.headers)
            .field("format", &self.format)
            .field("batch_rows", &self.batch_rows)
            .field("batch_bytes", &self.batch_bytes)
            .field("secret", &self.secret)
            .field("commit_url", &self.commit_url.as_deref().map(redacted_url))
            .field("timeout_secs", &self.timeout_secs)
            .field("retries", &self.retries)
            .field("backoff_ms", &self.backoff_ms)
            .field("max_backoff_secs", &self.max_backoff_secs)
            .finish()
    }
}

fn default_method() -> String {
    "POST".to_string()
}

fn default_batch_rows() -> usize {
    10_000
}

/// 8 MiB: below the request limits of common gateways (10 MiB and up).
fn default_batch_bytes() -> usize {
    8 << 20
}

/// Checks settings without connecting.
pub(super) fn check(config: &WebhookConfig) -> Result<(), String> {
    check_http_url("url", &config.url)?;
    if let Some(commit_url) = &config.commit_url {
        check_http_url("commit_url", commit_url)?;
    }
    if !matches!(config.method.as_str(), "POST" | "PUT" | "PATCH") {
        return Err(format!(
            "method must be \"POST\", \"PUT\" or \"PATCH\", not {:?}",
            config.method
        ));
    }
    if config.batch_rows == 0 {
        return Err("batch_rows must be at least 1".into());
    }
    if config.batch_bytes < 1024 {
        return Err("batch_bytes must be at least 1024".into());
    }
    if config
        .secret
        .as_ref()
        .is_some_and(|s| s.expose().is_empty())
    {
        return Err("secret must not be empty; leave it out to send unsigned requests".into());
    }
    check_retry(
        config.timeout_secs,
        config.backoff_ms,
        config.max_backoff_secs,
    )
}

/// The `webhook` kind.
pub struct Webhook;

impl TargetKind for Webhook {
    type Config = WebhookConfig;

    fn validate(config: &WebhookConfig) -> Result<(), String> {
        check(config)
    }

    /// Every replica can send to the same receiver.
    fn unshareable(_config: &WebhookConfig) -> Option<String> {
        None
    }

    fn build(name: &str, config: &WebhookConfig) -> Result<Arc<dyn Target>> {
        Ok(Arc::new(WebhookTarget::open(name, config)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<WebhookConfig, String> {
        toml::from_str::<WebhookConfig>(text).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_and_strictness() {
        let config = parse("url = \"https://hooks.example.com/in\"").unwrap();
        assert_eq!(
            config,
            WebhookConfig::from_url("https://hooks.example.com/in")
        );
        assert_eq!(config.format, Format::Json);
        assert_eq!(config.method, "POST");
        check(&config).unwrap();
        let err = parse("url = \"http://h\"\nformat = \"xml\"").unwrap_err();
        assert!(err.contains("xml"), "{err}");
        let err = parse("url = \"http://h\"\nbatchrows = 3").unwrap_err();
        assert!(err.contains("batchrows"), "{err}");
        assert!(parse("format = \"json\"").unwrap_err().contains("url"));
    }

    #[test]
    fn settings_are_checked() {
        let with = |edit: fn(&mut WebhookConfig)| {
            let mut config = WebhookConfig::from_url("http://127.0.0.1:9/hook");
            edit(&mut config);
            check(&config)
        };
        assert!(
            with(|c| c.url = "ftp://h/x".into())
                .unwrap_err()
                .contains("http://")
        );
        assert!(
            with(|c| c.url = "hooks".into())
                .unwrap_err()
                .contains("not a valid URL")
        );
        assert!(
            with(|c| c.commit_url = Some("nope".into()))
                .unwrap_err()
                .contains("commit_url")
        );
        assert!(
            with(|c| c.method = "GET".into())
                .unwrap_err()
                .contains("method")
        );
        assert!(
            with(|c| c.batch_rows = 0)
                .unwrap_err()
                .contains("batch_rows")
        );
        assert!(
            with(|c| c.batch_bytes = 10)
                .unwrap_err()
                .contains("batch_bytes")
        );
        assert!(
            with(|c| c.secret = Some(Secret::new("")))
                .unwrap_err()
                .contains("secret")
        );
        assert!(
            with(|c| c.timeout_secs = 0)
                .unwrap_err()
                .contains("timeout_secs")
        );
        with(|c| c.method = "PUT".into()).unwrap();
    }

    #[test]
    fn secrets_never_print() {
        let config = parse(
            "url = \"https://hooks.example.com/in?token=t0ken\"\nsecret = \"whs3cret\"\n\
             commit_url = \"https://u:pw@hooks.example.com/commit\"\n\
             headers = { Authorization = \"Bearer b3arer\" }",
        )
        .unwrap();
        let debug = format!("{config:?}");
        for secret in ["t0ken", "whs3cret", "b3arer", ":pw@"] {
            assert!(!debug.contains(secret), "{debug}");
        }
        assert!(debug.contains("Authorization"), "{debug}");
    }
}
