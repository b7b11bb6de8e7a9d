//! The requests Quiver sends to a search cluster, and how their failures map to errors.

use std::time::Duration;

use bytes::Bytes;
use elasticsearch::Elasticsearch;
use elasticsearch::auth::Credentials;
use elasticsearch::cert::{Certificate, CertificateValidation};
use elasticsearch::http::headers::{CONTENT_TYPE, HeaderMap, HeaderValue};
use elasticsearch::http::transport::{SingleNodeConnectionPool, TransportBuilder};
use elasticsearch::http::{Method, StatusCode, Url};
use serde_json::{Value, json};

use super::SearchConfig;
use super::{Flavour, mapping};
use crate::error::{Error, Result};

/// How long a point in time or scroll stays open between two pages.
pub(super) const KEEP_ALIVE: &str = "5m";

/// Splits credentials out of a cluster URL.
pub(super) fn parse_url(url: &str) -> Result<(Url, Option<(String, String)>), String> {
    let mut parsed = Url::parse(url)
        .map_err(|e| format!("url is not a valid URL ({e}); e.g. http://127.0.0.1:9200"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!(
            "url must start with http:// or https://, not {}://",
            parsed.scheme()
        ));
    }
    let credentials = (!parsed.username().is_empty()).then(|| {
        let user = percent_decode(parsed.username());
        let password = parsed.password().map(percent_decode).unwrap_or_default();
        (user, password)
    });
    let _ = parsed.set_username("");
    let _ = parsed.set_password(None);
    Ok((parsed, credentials))
}

/// Decodes `%XX` escapes (URL user info keeps `+` as it is).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub(super) struct Cluster {
    target: String,
    pub(super) flavour: Flavour,
    client: Elasticsearch,
    display: String,
    shards: Option<u32>,
    replicas: Option<u32>,
    bulk_bytes: usize,
    bulk_concurrency: usize,
}

/// A response: its status and body.
pub(super) struct Reply {
    pub status: StatusCode,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

impl Cluster {
    pub fn connect(target: &str, flavour: Flavour, config: &SearchConfig) -> Result<Self> {
        let bad = |e: String| Error::config(format!("[targets.{target}] {e}"));
        let (url, url_credentials) = parse_url(&config.url).map_err(bad)?;
        let display = url.as_str().trim_end_matches('/').to_string();
        let mut builder = TransportBuilder::new(SingleNodeConnectionPool::new(url))
            .timeout(Duration::from_secs(config.timeout_secs))
            .enable_meta_header(false);
        let credentials = match (&config.api_key, &config.username, url_credentials) {
            (Some(key), _, _) => Some(Credentials::EncodedApiKey(key.clone())),
            (None, Some(user), _) => Some(Credentials::Basic(
                user.clone(),
                config.password.clone().unwrap_or_default(),
            )),
            (None, None, Some((user, password))) => Some(Credentials::Basic(user, password)),
            (None, None, None) => None,
        };
        if let Some(credentials) = credentials {
            builder = builder.auth(credentials);
        }
        if let Some(path) = &config.ca_file {
            let pem = std::fs::read(path)
                .map_err(|e| bad(format!("cannot read ca_file {}: {e}", path.display())))?;
            let certificate = Certificate::from_pem(&pem).map_err(|e| {
                bad(format!(
                    "ca_file {} holds no PEM certificate: {e}",
                    path.display()
                ))
            })?;
            builder = builder.cert_validation(CertificateValidation::Full(certificate));
        }
        let transport = builder
            .build()
            .map_err(|e| bad(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self {
            target: target.to_string(),
            flavour,
            client: Elasticsearch::new(transport),
            display,
            shards: config.shards,
            replicas: config.replicas,
            bulk_bytes: config.bulk_bytes,
            bulk_concurrency: config.bulk_concurrency,
        })
    }

    pub fn target(&self) -> &str {
        &self.target
    }

    /// Bytes per `_bulk` body, and bodies in flight per put.
    pub fn bulk_limits(&self) -> (usize, usize) {
        (self.bulk_bytes, self.bulk_concurrency)
    }

    /// The URL without credentials.
    pub fn display_url(&self) -> &str {
        &self.display
    }

    /// Sends one request; fails only when no response arrives.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
        ndjson: bool,
        action: &str,
    ) -> Result<Reply> {
        let mut headers = HeaderMap::new();
        if ndjson {
            headers.insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/x-ndjson"),
            );
        }
        let response = self
            .client
            .send::<Bytes, ()>(method, path, headers, None, body, None)
            .await
            .map_err(|e| self.unreachable(action, e))?;
        let status = response.status_code();
        let body = response
            .bytes()
            .await
            .map_err(|e| self.unreachable(action, e))?;
        Ok(Reply { status, body })
    }

    fn unreachable(&self, action: &str, e: impl std::fmt::Display) -> Error {
        Error::storage(
            &self.target,
            action,
            format!("no answer from {}: {e}", self.display),
        )
    }

    /// Sends a JSON request and fails on any status but 2xx.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        action: &str,
    ) -> Result<Value> {
        let body = body.map(|b| Bytes::from(b.to_string()));
        let reply = self.send(method, path, body, false, action).await?;
        if !reply.status.is_success() {
            return Err(self.refused(action, &reply));
        }
        Ok(reply.json())
    }

    /// The error for a non-2xx reply, with the cluster's own reason.
    pub fn refused(&self, action: &str, reply: &Reply) -> Error {
        let reason = error_reason(&reply.json()).unwrap_or_else(|| {
            String::from_utf8_lossy(&reply.body)
                .chars()
                .take(300)
                .collect()
        });
        let message = format!(
            "{} target '{}' refused {action} ({}): {reason}",
            self.flavour.kind(),
            self.target,
            reply.status.as_u16()
        );
        match reply.status.as_u16() {
            400 | 409 => Error::failed_precondition(message),
            _ => Error::storage(&self.target, action, message),
        }
    }

    /// The indices an alias points to; empty when there is no such alias.
    pub async fn indices_behind(&self, alias: &str) -> Result<Vec<String>> {
        let reply = self
            .send(
                Method::Get,
                &format!("/_alias/{alias}"),
                None,
                false,
                "looking up an alias",
            )
            .await?;
        if reply.status == StatusCode::NOT_FOUND {
            return Ok(Vec::new());
        }
        if !reply.status.is_success() {
            return Err(self.refused("looking up an alias", &reply));
        }
        let mut indices: Vec<String> = match reply.json() {
            Value::Object(map) => map.keys().cloned().collect(),
            _ => Vec::new(),
        };
        indices.sort();
        Ok(indices)
    }

    pub async fn index_exists(&self, name: &str) -> Result<bool> {
        let reply = self
            .send(
                Method::Head,
                &format!("/{name}"),
                None,
                false,
                "checking for an index",
            )
            .await?;
        Ok(reply.status.is_success())
    }

    /// Creates an index set up for a bulk load: no refreshes, no replicas.
    pub async fn create_index(&self, index: &str, mut mappings: Value, meta: Value) -> Result<()> {
        mappings["_meta"] = json!({ "quiver": meta });
        let mut settings = json!({ "refresh_interval": "-1", "number_of_replicas": 0 });
        if let Some(shards) = self.shards {
            settings["number_of_shards"] = json!(shards);
        }
        self.call(
            Method::Put,
            &format!("/{index}"),
            Some(json!({ "settings": { "index": settings }, "mappings": mappings })),
            "creating an index",
        )
        .await
        .map(|_| ())
    }

    /// The mapping of one index.
    pub async fn mapping(&self, index: &str) -> Result<Value> {
        let mut reply = self
            .call(
                Method::Get,
                &format!("/{index}/_mapping"),
                None,
                "reading a mapping",
            )
            .await?;
        Ok(reply[index]["mappings"].take())
    }

    /// Adds the fields of `mappings` that `current`, the index's mapping, lacks, and replaces
    /// its `_meta` with `meta` when given.
    pub async fn extend_mapping(
        &self,
        index: &str,
        current: &Value,
        mappings: &Value,
        meta: Option<Value>,
    ) -> Result<()> {
        let missing = mapping::missing_fields(current, mappings);
        let mut body = serde_json::Map::new();
        if !missing.is_empty() {
            body.insert("properties".into(), Value::Object(missing));
        }
        if let Some(meta) = meta {
            body.insert("_meta".into(), meta);
        }
        if body.is_empty() {
            return Ok(());
        }
        self.call(
            Method::Put,
            &format!("/{index}/_mapping"),
            Some(Value::Object(body)),
            "updating a mapping",
        )
        .await
        .map(|_| ())
    }

    /// Turns a loaded index into a normal one: refreshes on, replicas back, searchable now.
    pub async fn finish_load(&self, index: &str) -> Result<()> {
        self.call(
            Method::Put,
            &format!("/{index}/_settings"),
            Some(json!({ "index": { "refresh_interval": null, "number_of_replicas": self.replicas } })),
            "restoring index settings after a load",
        )
        .await?;
        self.refresh(index).await
    }

    pub async fn refresh(&self, index: &str) -> Result<()> {
        self.call(
            Method::Post,
            &format!("/{index}/_refresh"),
            None,
            "refreshing an index",
        )
        .await
        .map(|_| ())
    }

    /// Applies alias actions in one atomic call.
    pub async fn update_aliases(&self, actions: Vec<Value>) -> Result<()> {
        self.call(
            Method::Post,
            "/_aliases",
            Some(json!({ "actions": actions })),
            "moving an alias",
        )
        .await
        .map(|_| ())
    }

    /// Documents visible through an alias or index.
    pub async fn count(&self, name: &str) -> Result<u64> {
        let reply = self
            .call(
                Method::Post,
                &format!("/{name}/_count"),
                None,
                "counting documents",
            )
            .await?;
        reply["count"].as_u64().ok_or_else(|| {
            Error::storage(&self.target, "counting documents", "the reply has no count")
        })
    }

    pub async fn delete_indices(&self, indices: &[String]) -> Result<()> {
        if indices.is_empty() {
            return Ok(());
        }
        let reply = self
            .send(
                Method::Delete,
                &format!("/{}", indices.join(",")),
                None,
                false,
                "deleting an index",
            )
            .await?;
        if reply.status.is_success() || reply.status == StatusCode::NOT_FOUND {
            Ok(())
        } else {
            Err(self.refused("deleting an index", &reply))
        }
    }

    /// Indices matching `pattern`, created with `_meta.quiver.prefix` = `prefix`, that no
    /// alias points to and that are at least `min_age` old.
    pub async fn unaliased_indices(
        &self,
        pattern: &str,
        prefix: &str,
        min_age: Duration,
    ) -> Result<Vec<String>> {
        let action = "listing indices";
        let aliases = self
            .call(Method::Get, &format!("/{pattern}/_alias"), None, action)
            .await?;
        let settings = self
            .call(Method::Get, &format!("/{pattern}/_settings"), None, action)
            .await?;
        let mappings = self
            .call(Method::Get, &format!("/{pattern}/_mapping"), None, action)
            .await?;
        let now_ms = chrono::Utc::now().timestamp_millis();
        let mut orphans: Vec<String> = aliases
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(_, v)| v["aliases"].as_object().is_none_or(|a| a.is_empty()))
            // Another deployment's prefix may match the pattern too.
            .filter(|(index, _)| {
                let quiver = &mappings[index.as_str()]["mappings"]["_meta"]["quiver"];
                match quiver["prefix"].as_str() {
                    Some(recorded) => recorded == prefix,
                    // A `_bulk` request of a dead put, run after its index was deleted,
                    // creates the index again without Quiver's mapping; its name is a put's.
                    None => quiver.is_null() && is_put_index(index, prefix),
                }
            })
            .filter(|(index, _)| {
                let created = settings[index.as_str()]["settings"]["index"]["creation_date"]
                    .as_str()
                    .and_then(|c| c.parse::<i64>().ok())
                    .unwrap_or(now_ms);
                now_ms.saturating_sub(created) >= min_age.as_millis() as i64
            })
            .map(|(index, _)| index.clone())
            .collect();
        orphans.sort();
        Ok(orphans)
    }

    pub async fn ping(&self) -> Result<()> {
        self.call(Method::Get, "/", None, "a health check")
            .await
            .map(|_| ())
    }
}

/// `type: reason` of an error reply.
pub(super) fn error_reason(reply: &Value) -> Option<String> {
    let error = reply.get("error")?;
    if let Some(text) = error.as_str() {
        return Some(text.to_string());
    }
    let kind = error.get("type").and_then(Value::as_str).unwrap_or("error");
    let reason = error.get("reason").and_then(Value::as_str).unwrap_or("");
    let cause = error
        .get("caused_by")
        .and_then(|c| c.get("reason"))
        .and_then(Value::as_str)
        .map(|c| format!(" ({c})"))
        .unwrap_or_default();
    Some(format!("{kind}: {reason}{cause}"))
}

/// Whether `index` is named as a put's index under `prefix`: `<prefix>….quiver-<32 hex digits>`.
fn is_put_index(index: &str, prefix: &str) -> bool {
    index.starts_with(prefix)
        && index.rsplit_once(".quiver-").is_some_and(|(_, id)| {
            id.len() == 32
                && id
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_indices_are_told_by_name() {
        let id = "0123456789abcdef0123456789abcdef";
        assert!(is_put_index(&format!("qp-s.base.quiver-{id}"), "qp-"));
        assert!(!is_put_index(&format!("other-s.base.quiver-{id}"), "qp-"));
        assert!(!is_put_index("qp-s.base.quiver-p0123", "qp-"));
        assert!(!is_put_index(
            &format!("qp-s.base.quiver-{}", id.to_uppercase()),
            "qp-"
        ));
        assert!(!is_put_index("qp-s.base", "qp-"));
    }

    #[test]
    fn credentials_come_out_of_the_url() {
        let (url, credentials) = parse_url("https://elastic:p%40s+s@search:9200").unwrap();
        assert_eq!(url.as_str(), "https://search:9200/");
        assert_eq!(credentials, Some(("elastic".into(), "p@s+s".into())));
        assert!(parse_url("ftp://x").unwrap_err().contains("http://"));
        assert!(parse_url("not a url").is_err());
    }

    #[test]
    fn error_reasons_are_read() {
        let reply = json!({"error": {"type": "mapper_parsing_exception", "reason": "bad",
            "caused_by": {"reason": "For input string"}}, "status": 400});
        assert_eq!(
            error_reason(&reply).unwrap(),
            "mapper_parsing_exception: bad (For input string)"
        );
        assert_eq!(
            error_reason(&json!({"error": "no handler"})).unwrap(),
            "no handler"
        );
    }
}
