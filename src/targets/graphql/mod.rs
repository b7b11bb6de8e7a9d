//! GraphQL: a put's rows sent as the `$rows` variable of a configured mutation, `batch_rows`
//! rows per request, each row a JSON object (the mapping of docs/types.md).
//!
//! A request is retried like a webhook's (429, 5xx, connection failures; exponential backoff
//! honouring `Retry-After`). A GraphQL server reports a refused request in the body, usually
//! with status 200: the first entry of `errors` fails the put, naming its message and path.
//! Requests go out while the put streams; like the webhook, the target is write-only and
//! at-least-once (see docs/protocol.md).

use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use async_trait::async_trait;
use bytes::Bytes;
use reqwest::Method;
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderMap, HeaderValue};
use serde::Deserialize;

use crate::asset::{AssetKey, Partition};
use crate::catalog::PendingPut;
use crate::error::{Error, Result};
use crate::protocol::Mode;
use crate::targets::delivery::{
    Batcher, Headers, Http, Reply, RetryPolicy, check_http_url, check_json_schema, check_retry,
    default_backoff_ms, default_max_backoff_secs, default_retries, default_timeout_secs,
    delivery_location, excerpt, json_rows, put_headers, redacted_url, request_headers,
    resolve_interrupted, write_only,
};
use crate::targets::util::refuse_options;
use crate::targets::{
    AssetWriter, DeleteRequest, ReadRequest, SendableBatchStream, Target, TargetKind, WriteRequest,
    WriteSummary,
};

/// GraphQL target settings.
#[derive(Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GraphqlConfig {
    /// The GraphQL endpoint, `http://` or `https://`.
    pub endpoint: String,
    /// The document sent with every request; it declares a `$rows` variable, e.g.
    /// `mutation($rows: [OrderInput!]!) { addOrders(rows: $rows) { count } }`.
    pub mutation: String,
    /// Rows per request, at most.
    #[serde(default = "default_batch_rows")]
    pub batch_rows: usize,
    /// Headers sent with every request (`Authorization`, say); their values never print.
    #[serde(default)]
    pub headers: Headers,
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
    #[serde(default = "default_retries")]
    pub retries: u32,
    #[serde(default = "default_backoff_ms")]
    pub backoff_ms: u64,
    #[serde(default = "default_max_backoff_secs")]
    pub max_backoff_secs: u64,
}

fn default_batch_rows() -> usize {
    1000
}

impl GraphqlConfig {
    /// A target for `endpoint` and `mutation` with every other setting at its default.
    pub fn new(endpoint: impl Into<String>, mutation: impl Into<String>) -> Self {
        Self {
            endpoint: endpoint.into(),
            mutation: mutation.into(),
            batch_rows: default_batch_rows(),
            headers: Headers::new(),
            timeout_secs: default_timeout_secs(),
            retries: default_retries(),
            backoff_ms: default_backoff_ms(),
            max_backoff_secs: default_max_backoff_secs(),
        }
    }
}

/// The endpoint may hold a token in its query: it prints redacted, like the headers.
impl std::fmt::Debug for GraphqlConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GraphqlConfig")
            .field("endpoint", &redacted_url(&self.endpoint))
            .field("mutation", &self.mutation)
            .field("batch_rows", &self.batch_rows)
            .field("headers", &self.headers)
            .field("timeout_secs", &self.timeout_secs)
            .field("retries", &self.retries)
            .field("backoff_ms", &self.backoff_ms)
            .field("max_backoff_secs", &self.max_backoff_secs)
            .finish()
    }
}

/// Whether `document` declares or uses the variable `$rows` (and not just `$rowsFoo`).
fn uses_rows_variable(document: &str) -> bool {
    document.match_indices("$rows").any(|(at, m)| {
        !document[at + m.len()..]
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
    })
}

fn check(config: &GraphqlConfig) -> Result<(), String> {
    check_http_url("endpoint", &config.endpoint)?;
    if !uses_rows_variable(&config.mutation) {
        return Err(
            "mutation must declare a $rows variable, which receives each request's rows, e.g. \
             mutation($rows: [OrderInput!]!) { addOrders(rows: $rows) { count } }"
                .into(),
        );
    }
    if config.batch_rows == 0 {
        return Err("batch_rows must be at least 1".into());
    }
    check_retry(
        config.timeout_secs,
        config.backoff_ms,
        config.max_backoff_secs,
    )
}

/// The `graphql` kind.
pub struct Graphql;

impl TargetKind for Graphql {
    type Config = GraphqlConfig;

    fn validate(config: &GraphqlConfig) -> Result<(), String> {
        check(config)
    }

    fn unshareable(_config: &GraphqlConfig) -> Option<String> {
        None
    }

    fn build(name: &str, config: &GraphqlConfig) -> Result<Arc<dyn Target>> {
        Ok(Arc::new(GraphqlTarget::open(name, config)?))
    }
}

pub struct GraphqlTarget {
    name: String,
    config: GraphqlConfig,
    http: Arc<Http>,
}

impl GraphqlTarget {
    /// Checks the settings; connects to nothing until the first put or health check.
    pub fn open(name: &str, config: &GraphqlConfig) -> Result<Self> {
        let fail = |e: String| Error::config(format!("[targets.{name}] {e}"));
        check(config).map_err(fail)?;
        let retry =
            RetryPolicy::from_settings(config.retries, config.backoff_ms, config.max_backoff_secs);
        let http = Http::new(name, &config.headers, config.timeout_secs, retry).map_err(fail)?;
        Ok(Self {
            name: name.to_string(),
            config: config.clone(),
            http: Arc::new(http),
        })
    }
}

#[async_trait]
impl Target for GraphqlTarget {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "graphql"
    }

    /// Both mean "send these rows"; the server learns which from `X-Quiver-Mode`.
    fn modes(&self) -> &'static [Mode] {
        &[Mode::Overwrite, Mode::Append]
    }

    fn location(&self, asset: &AssetKey, partition: Option<&Partition>) -> String {
        delivery_location(&self.config.endpoint, asset, partition)
    }

    async fn begin(&self, req: &WriteRequest, schema: SchemaRef) -> Result<Box<dyn AssetWriter>> {
        refuse_options("graphql", &req.options, &[])?;
        check_json_schema(&schema).map_err(|reason| {
            Error::invalid_data(format!(
                "target '{}' cannot send asset '{}' as GraphQL variables: {reason}",
                self.name, req.asset
            ))
        })?;
        let mut headers = put_headers(req)?;
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(
            ACCEPT,
            HeaderValue::from_static("application/graphql-response+json, application/json"),
        );
        Ok(Box::new(GraphqlWriter {
            target: self.name.clone(),
            endpoint: self.config.endpoint.clone(),
            query: serde_json::to_string(&self.config.mutation).expect("a string"),
            http: Arc::clone(&self.http),
            batcher: Batcher::new(schema, self.config.batch_rows, usize::MAX),
            headers,
            put_id: req.put_id.clone(),
            asset: req.asset.to_string(),
            location: self.location(&req.asset, req.partition.as_ref()),
            requests: 0,
            rows: 0,
            bytes: 0,
        }))
    }

    async fn read(&self, req: &ReadRequest) -> Result<SendableBatchStream> {
        Err(write_only(&self.name, "graphql", &req.asset))
    }

    /// Nothing is kept here; the server's copy is the server's.
    async fn delete(&self, _req: &DeleteRequest) -> Result<()> {
        Ok(())
    }

    async fn healthcheck(&self) -> Result<()> {
        self.http.probe(&self.config.endpoint).await
    }

    async fn resolve(&self, put: &PendingPut) -> Result<Option<WriteSummary>> {
        Ok(resolve_interrupted("graphql", put))
    }
}

struct GraphqlWriter {
    target: String,
    endpoint: String,
    /// The mutation as a JSON string.
    query: String,
    http: Arc<Http>,
    batcher: Batcher,
    headers: HeaderMap,
    put_id: String,
    asset: String,
    location: String,
    requests: u64,
    rows: u64,
    bytes: u64,
}

/// What a GraphQL response says about errors: the first one's message and path.
fn first_error(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Response {
        errors: Option<Vec<GraphqlError>>,
    }
    #[derive(Deserialize)]
    struct GraphqlError {
        message: Option<String>,
        path: Option<Vec<serde_json::Value>>,
    }
    let response: Response = serde_json::from_slice(body).ok()?;
    let first = response.errors?.into_iter().next()?;
    let mut text = first
        .message
        .unwrap_or_else(|| "an error without a message".into());
    if let Some(path) = first.path.filter(|p| !p.is_empty()) {
        let path: Vec<String> = path
            .iter()
            .map(|p| match p {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect();
        text.push_str(&format!(" (path: {})", path.join(".")));
    }
    Some(text)
}

impl GraphqlWriter {
    async fn deliver_next(&mut self) -> Result<()> {
        let Some(chunk) = self.batcher.peek()? else {
            return Ok(());
        };
        let rows = chunk.num_rows();
        let json = json_rows(&chunk)?;
        let mut body = Vec::with_capacity(json.len() + self.query.len() + 40);
        body.extend_from_slice(b"{\"query\":");
        body.extend_from_slice(self.query.as_bytes());
        body.extend_from_slice(b",\"variables\":{\"rows\":");
        body.extend_from_slice(&json);
        body.extend_from_slice(b"}}");
        let sequence = self.requests + 1;
        let headers = request_headers(&self.headers, &self.put_id, sequence, rows);
        let body = Bytes::from(body);
        let reply = self
            .http
            .send(&Method::POST, &self.endpoint, &body, &headers, |_| {
                Ok(HeaderMap::new())
            })
            .await?;
        self.check_reply(reply, rows)?;
        self.batcher.consume(rows);
        self.requests = sequence;
        self.rows += rows as u64;
        self.bytes += body.len() as u64;
        Ok(())
    }

    /// Errors in the body fail the put whatever the status; then a non-2xx status does.
    fn check_reply(&self, reply: Reply, rows: usize) -> Result<()> {
        if let Some(error) = first_error(&reply.body) {
            let first = self.rows + 1;
            return Err(Error::invalid_data(format!(
                "target '{}': the GraphQL server refused rows {first} to {} of asset '{}': \
                 {error}",
                self.target,
                self.rows + rows as u64,
                self.asset
            )));
        }
        let reply = self.http.accept(&self.endpoint, reply)?;
        if serde_json::from_slice::<serde_json::Value>(&reply.body)
            .ok()
            .and_then(|v| v.get("data").cloned())
            .is_none()
        {
            return Err(Error::failed_precondition(format!(
                "target '{}': {} answered {} without GraphQL data: {}; check the endpoint",
                self.target,
                redacted_url(&self.endpoint),
                reply.status,
                excerpt(&reply.body)
            )));
        }
        Ok(())
    }
}

#[async_trait]
impl AssetWriter for GraphqlWriter {
    async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        self.batcher.push(batch);
        while self.batcher.full() {
            self.deliver_next().await?;
        }
        Ok(())
    }

    async fn prepare(&mut self) -> Result<String> {
        while self.batcher.rows() > 0 {
            self.deliver_next().await?;
        }
        Ok(String::new())
    }

    async fn commit(self: Box<Self>) -> Result<WriteSummary> {
        Ok(WriteSummary {
            rows: self.rows,
            bytes: self.bytes,
            location: format!("{}&put={}", self.location, self.put_id),
            total_rows: None,
        })
    }

    async fn abort(self: Box<Self>) -> Result<()> {
        if self.requests > 0 {
            tracing::warn!(
                target = self.target.as_str(),
                put = self.put_id.as_str(),
                requests = self.requests,
                "a failed put had already sent some of its rows"
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mutation_must_use_rows() {
        let mut config = GraphqlConfig::new(
            "http://127.0.0.1:9/graphql",
            "mutation($rows: [R!]!) { add(rows: $rows) }",
        );
        check(&config).unwrap();
        config.mutation = "mutation($rowsX: [R!]!) { add(rows: $rowsX) }".into();
        assert!(check(&config).unwrap_err().contains("$rows"));
        config.mutation = "mutation($rows: [R!]!) { add(rows: $rows) }".into();
        config.endpoint = "graphql".into();
        assert!(check(&config).unwrap_err().contains("endpoint"));
        let parsed: Result<GraphqlConfig, _> =
            toml::from_str("endpoint = \"http://h/g\"\nmutation = \"m\"\nbatch = 3");
        assert!(parsed.unwrap_err().to_string().contains("batch"));
    }

    #[test]
    fn the_first_error_names_message_and_path() {
        let body = br#"{"data": null, "errors": [
            {"message": "Expected type Int", "path": ["addOrders", 0, "qty"]},
            {"message": "second"}]}"#;
        assert_eq!(
            first_error(body).unwrap(),
            "Expected type Int (path: addOrders.0.qty)"
        );
        assert_eq!(
            first_error(br#"{"errors": [{"message": "Variable '$rows' got invalid value"}]}"#)
                .unwrap(),
            "Variable '$rows' got invalid value"
        );
        assert_eq!(first_error(br#"{"data": {"add": 1}}"#), None);
        assert_eq!(first_error(br#"{"data": {}, "errors": []}"#), None);
        assert_eq!(first_error(b"<html>"), None);
    }

    #[test]
    fn headers_never_print() {
        let mut config = GraphqlConfig::new("https://api.example.com/graphql?key=k3y", "$rows");
        config.headers.insert(
            "Authorization".into(),
            crate::targets::delivery::Secret::new("t0k"),
        );
        let debug = format!("{config:?}");
        assert!(!debug.contains("k3y") && !debug.contains("t0k"), "{debug}");
    }
}
