//! What the delivery kinds (webhook, graphql, email) share. A delivery hands rows to another
//! system instead of storing them: nothing can be read back, and a delivery is not a
//! transaction, so these targets give at-least-once semantics (see docs/protocol.md).
//!
//! Here: secrets that never print, the write-only refusal, the resolution of a put that was
//! interrupted mid-delivery, row batching, rows as JSON objects, and (for the HTTP kinds) one
//! request sent with retries and exponential backoff that honours `Retry-After`.

use std::collections::BTreeMap;
use std::time::Duration;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use serde::Deserialize;

use crate::asset::{AssetKey, Partition};
use crate::catalog::PendingPut;
use crate::error::{Error, Result};
use crate::targets::WriteSummary;
use crate::targets::util::first_non_finite;

/// A password, token or signing key from the configuration: `***` in Debug output, so neither
/// `describe`, logs nor error messages can show it.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"***\"")
    }
}

/// Header names and values to send; the values may be credentials, so they never print.
pub type Headers = BTreeMap<String, Secret>;

/// What DoGet answers for an asset delivered to a write-only target.
pub fn write_only(target: &str, kind: &str, asset: &AssetKey) -> Error {
    Error::failed_precondition(format!(
        "target '{target}' is a write-only target ({kind}): it delivered asset '{asset}' to \
         another system and keeps nothing to read back; the catalog lists what was delivered \
         (rows, version, location); put the asset to a storing target as well to read it"
    ))
}

/// A put interrupted between the catalog's pending record and its catalog commit: some or all
/// of its deliveries may have been sent, and nothing can tell which. The catalog forgets it,
/// so the client sees the put fail and a retry (even with the same idempotency key) delivers
/// again: at least once, never silently lost.
pub fn resolve_interrupted(kind: &str, put: &PendingPut) -> Option<WriteSummary> {
    tracing::warn!(
        target = put.commit.target.as_str(),
        asset = %put.commit.asset,
        put = put.id.as_str(),
        "an interrupted {kind} put may have been delivered in part or in full; it is rolled \
         back in the catalog, and a retry delivers it again"
    );
    None
}

/// Collects incoming batches and hands them out in chunks of at most `max_rows` rows.
pub struct Batcher {
    schema: SchemaRef,
    max_rows: usize,
    max_bytes: usize,
    pending: Vec<RecordBatch>,
    rows: usize,
    /// Arrow memory of the pending rows, estimated.
    bytes: usize,
}

impl Batcher {
    /// Chunks of at most `max_rows` rows; a chunk is also due once the pending rows hold
    /// about `max_bytes` of Arrow memory (the encoder then checks the real size).
    pub fn new(schema: SchemaRef, max_rows: usize, max_bytes: usize) -> Self {
        Self {
            schema,
            max_rows: max_rows.max(1),
            max_bytes,
            pending: Vec::new(),
            rows: 0,
            bytes: 0,
        }
    }

    pub fn push(&mut self, batch: RecordBatch) {
        if batch.num_rows() > 0 {
            self.rows += batch.num_rows();
            self.bytes += batch.get_array_memory_size();
            self.pending.push(batch);
        }
    }

    /// Rows collected and not yet taken.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Whether a full chunk is waiting.
    pub fn full(&self) -> bool {
        self.rows > 0 && (self.rows >= self.max_rows || self.bytes >= self.max_bytes)
    }

    /// The first `max_rows` rows (or all when fewer), without taking them; `None` when empty.
    pub fn peek(&self) -> Result<Option<RecordBatch>> {
        self.head(self.max_rows.min(self.rows))
    }

    /// The first `rows` rows as one batch, without taking them.
    pub fn head(&self, rows: usize) -> Result<Option<RecordBatch>> {
        if rows == 0 {
            return Ok(None);
        }
        let mut parts = Vec::new();
        let mut left = rows;
        for batch in &self.pending {
            let n = left.min(batch.num_rows());
            parts.push(batch.slice(0, n));
            left -= n;
            if left == 0 {
                break;
            }
        }
        arrow::compute::concat_batches(&self.schema, &parts)
            .map(Some)
            .map_err(|e| Error::internal(format!("cannot join batches: {e}")))
    }

    /// Drops the first `rows` rows (after they were delivered).
    pub fn consume(&mut self, mut rows: usize) {
        let before = self.rows.max(1);
        self.rows -= rows.min(self.rows);
        self.bytes = (self.bytes as u128 * self.rows as u128 / before as u128) as usize;
        while rows > 0 && !self.pending.is_empty() {
            let first = self.pending[0].num_rows();
            if first <= rows {
                self.pending.remove(0);
                rows -= first;
            } else {
                self.pending[0] = self.pending[0].slice(rows, first - rows);
                rows = 0;
            }
        }
    }
}

/// Rows as a JSON array of objects, one key per column (null values included), in the JSON
/// encoding of the json file target (arrow-json): see docs/types.md.
pub fn json_rows(batch: &RecordBatch) -> Result<Vec<u8>> {
    check_finite(batch)?;
    let mut writer = arrow_json::WriterBuilder::new()
        .with_explicit_nulls(true)
        .build::<_, arrow_json::writer::JsonArray>(Vec::new());
    writer
        .write(batch)
        .and_then(|()| writer.finish())
        .map_err(|e| Error::invalid_data(format!("cannot encode rows as JSON: {e}")))?;
    let out = writer.into_inner();
    // arrow-json writes nothing at all for no rows.
    Ok(if out.is_empty() { b"[]".to_vec() } else { out })
}

/// Rows as newline-delimited JSON objects.
pub fn ndjson_rows(batch: &RecordBatch) -> Result<Vec<u8>> {
    check_finite(batch)?;
    let mut writer = arrow_json::WriterBuilder::new()
        .with_explicit_nulls(true)
        .build::<_, arrow_json::writer::LineDelimited>(Vec::new());
    writer
        .write(batch)
        .and_then(|()| writer.finish())
        .map_err(|e| Error::invalid_data(format!("cannot encode rows as JSON: {e}")))?;
    Ok(writer.into_inner())
}

fn check_finite(batch: &RecordBatch) -> Result<()> {
    for (column, field) in batch.columns().iter().zip(batch.schema().fields()) {
        if let Some(value) = first_non_finite(column) {
            return Err(Error::invalid_data(format!(
                "column '{}' holds {value}, which JSON cannot represent; replace it with null, \
                 or deliver as arrow or parquet",
                field.name()
            )));
        }
    }
    Ok(())
}

/// The schema check of the JSON encodings: names the first column JSON cannot carry.
pub fn check_json_schema(schema: &arrow_schema::Schema) -> Result<(), String> {
    crate::targets::util::find_unsupported(schema, crate::targets::util::json_supported)
}

/// How often and how patiently a request is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts after the first one.
    pub retries: u32,
    /// Wait before the first retry; doubled before each next one.
    pub initial: Duration,
    /// Longest wait between attempts, also for a `Retry-After` asking for more.
    pub max: Duration,
}

impl RetryPolicy {
    /// The policy of the `retries`, `backoff_ms` and `max_backoff_secs` settings.
    pub fn from_settings(retries: u32, backoff_ms: u64, max_backoff_secs: u64) -> Self {
        Self {
            retries,
            initial: Duration::from_millis(backoff_ms),
            max: Duration::from_secs(max_backoff_secs),
        }
    }

    /// The wait before retry number `retry` (0 for the first retry): `initial * 2^retry`,
    /// at most `max`; a `Retry-After` the server sent replaces it, still at most `max`.
    pub fn delay(&self, retry: u32, retry_after: Option<Duration>) -> Duration {
        let backoff = self
            .initial
            .checked_mul(1u32.checked_shl(retry).unwrap_or(u32::MAX))
            .unwrap_or(self.max);
        retry_after.unwrap_or(backoff).min(self.max)
    }
}

/// A `Retry-After` value: delay seconds, or an HTTP date (RFC 7231), relative to `now`.
pub fn parse_retry_after(value: &str, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let date = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    Some(
        (date.with_timezone(&chrono::Utc) - now)
            .to_std()
            .unwrap_or(Duration::ZERO),
    )
}

/// At most this many bytes of a refusing server's answer go into the error message.
pub const BODY_EXCERPT: usize = 300;

/// The start of a response body, as text for an error message.
pub fn excerpt(body: &[u8]) -> String {
    let cut = &body[..body.len().min(BODY_EXCERPT)];
    let text = String::from_utf8_lossy(cut).replace(['\n', '\r'], " ");
    if body.len() > BODY_EXCERPT {
        format!("{}… ({} bytes)", text.trim_end(), body.len())
    } else {
        text.trim_end().to_string()
    }
}

/// A URL as messages and logs show it: no password, and no query values (tokens often travel
/// there).
pub fn redacted_url(url: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(url) else {
        return "<an unparsable URL>".to_string();
    };
    if parsed.password().is_some() {
        let _ = parsed.set_password(Some("***"));
    }
    if parsed.query().is_some() {
        let keys: Vec<String> = parsed.query_pairs().map(|(k, _)| k.into_owned()).collect();
        let mut query = parsed.query_pairs_mut();
        query.clear();
        for key in keys {
            query.append_pair(&key, "***");
        }
    }
    parsed.to_string()
}

// Defaults and checks of the HTTP kinds' shared settings.

pub fn default_timeout_secs() -> u64 {
    30
}

pub fn default_retries() -> u32 {
    5
}

pub fn default_backoff_ms() -> u64 {
    500
}

pub fn default_max_backoff_secs() -> u64 {
    30
}

/// Checks that `url` is an absolute http(s) URL; `setting` names it in the message.
pub fn check_http_url(setting: &str, url: &str) -> Result<(), String> {
    let parsed = url::Url::parse(url).map_err(|e| {
        format!(
            "{setting} {} is not a valid URL ({e}); e.g. https://hooks.example.com/quiver",
            redacted_url(url)
        )
    })?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!(
            "{setting} must start with http:// or https://, not {}://",
            parsed.scheme()
        ));
    }
    Ok(())
}

/// Checks the retry settings the HTTP kinds share.
pub fn check_retry(
    timeout_secs: u64,
    backoff_ms: u64,
    max_backoff_secs: u64,
) -> Result<(), String> {
    if timeout_secs == 0 {
        return Err("timeout_secs must be at least 1".into());
    }
    if backoff_ms == 0 {
        return Err("backoff_ms must be at least 1".into());
    }
    if max_backoff_secs == 0 {
        return Err("max_backoff_secs must be at least 1".into());
    }
    Ok(())
}

/// `<url>#asset=<asset>[&partition=<p>]`: where a put's rows went, for display.
pub fn delivery_location(url: &str, asset: &AssetKey, partition: Option<&Partition>) -> String {
    let mut location = format!("{}#asset={asset}", redacted_url(url));
    if let Some(p) = partition {
        location.push_str(&format!("&partition={p}"));
    }
    location
}

#[cfg(any(feature = "webhook", feature = "graphql"))]
pub use http::{Http, Reply, put_headers, request_headers};

#[cfg(any(feature = "webhook", feature = "graphql"))]
mod http {
    use std::time::Duration;

    use reqwest::header::{HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
    use reqwest::{Method, StatusCode};

    use super::{Headers, RetryPolicy, excerpt, parse_retry_after, redacted_url};
    use crate::error::{Error, Result};
    use crate::targets::WriteRequest;

    /// `base` with the headers of request number `sequence` (from 1) of a put, holding `rows`
    /// rows: `Idempotency-Key` (`<put id>-<sequence>`), `X-Quiver-Sequence`, `X-Quiver-Rows`.
    pub fn request_headers(
        base: &HeaderMap,
        put_id: &str,
        sequence: u64,
        rows: usize,
    ) -> HeaderMap {
        let mut headers = base.clone();
        headers.insert(
            "idempotency-key",
            HeaderValue::from_str(&format!("{put_id}-{sequence}")).expect("a put id is ASCII"),
        );
        headers.insert("x-quiver-sequence", HeaderValue::from(sequence));
        headers.insert("x-quiver-rows", HeaderValue::from(rows));
        headers
    }

    /// The headers every request of a put carries: `X-Quiver-Asset`, `X-Quiver-Version`
    /// (Quiver's), `X-Quiver-Put`, `X-Quiver-Mode`, and `X-Quiver-Partition` for a partition.
    pub fn put_headers(req: &WriteRequest) -> Result<HeaderMap> {
        let mut headers = HeaderMap::new();
        let partition = req.partition.as_ref().map(|p| p.to_string());
        for (name, value) in [
            ("x-quiver-asset", Some(req.asset.to_string())),
            (
                "x-quiver-version",
                Some(env!("CARGO_PKG_VERSION").to_string()),
            ),
            ("x-quiver-put", Some(req.put_id.clone())),
            ("x-quiver-mode", Some(req.mode.as_str().to_string())),
            ("x-quiver-partition", partition),
        ] {
            let Some(value) = value else { continue };
            let value = HeaderValue::from_str(&value).map_err(|_| {
                Error::invalid_request(format!(
                    "{value:?} cannot travel in the {name} header; use ASCII names"
                ))
            })?;
            headers.insert(HeaderName::from_static(name), value);
        }
        Ok(headers)
    }

    /// A 2xx answer.
    #[derive(Debug)]
    pub struct Reply {
        pub status: StatusCode,
        pub body: bytes::Bytes,
    }

    /// An HTTP client for one target: its fixed headers, timeout and retry policy.
    pub struct Http {
        target: String,
        client: reqwest::Client,
        headers: HeaderMap,
        retry: RetryPolicy,
    }

    impl Http {
        /// Checks the headers; connects to nothing. `timeout_secs` bounds each attempt.
        pub fn new(
            target: &str,
            fixed: &Headers,
            timeout_secs: u64,
            retry: RetryPolicy,
        ) -> Result<Self, String> {
            let timeout = Duration::from_secs(timeout_secs);
            let mut headers = HeaderMap::new();
            for (name, value) in fixed {
                let name = HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| format!("headers: {name:?} is not a valid header name"))?;
                let mut value = HeaderValue::from_str(value.expose()).map_err(|_| {
                    format!("headers: the value of {name} is not a valid header value")
                })?;
                value.set_sensitive(true);
                headers.insert(name, value);
            }
            // A redirect is refused, not followed: a 301/302 would turn a POST into a GET and
            // drop the rows while answering 2xx.
            let client = reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(timeout)
                .connect_timeout(timeout.min(Duration::from_secs(10)))
                .build()
                .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
            Ok(Self {
                target: target.to_string(),
                client,
                headers,
                retry,
            })
        }

        /// Sends one request, again while the server answers 429 or 5xx or cannot be reached,
        /// as the retry policy allows. `extra` gives the per-attempt headers (a signature with
        /// its timestamp, say). Returns the first answer not worth retrying, whatever its
        /// status: [`Http::accept`] refuses the non-2xx ones.
        pub async fn send(
            &self,
            method: &Method,
            url: &str,
            body: &bytes::Bytes,
            headers: &HeaderMap,
            extra: impl Fn(&[u8]) -> Result<HeaderMap>,
        ) -> Result<Reply> {
            let mut retry = 0;
            loop {
                let mut all = self.headers.clone();
                all.extend(headers.clone());
                all.extend(extra(body)?);
                let sent = self
                    .client
                    .request(method.clone(), url)
                    .headers(all)
                    .body(body.clone())
                    .send()
                    .await;
                let (problem, retry_after) = match sent {
                    Ok(response) => {
                        let status = response.status();
                        let retry_after = response
                            .headers()
                            .get(RETRY_AFTER)
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| parse_retry_after(v, chrono::Utc::now()));
                        let body = response.bytes().await.unwrap_or_default();
                        if status != StatusCode::TOO_MANY_REQUESTS && !status.is_server_error() {
                            return Ok(Reply { status, body });
                        }
                        (
                            format!("it answered {status}: {}", excerpt(&body)),
                            retry_after,
                        )
                    }
                    Err(e) => (describe(e), None),
                };
                if retry >= self.retry.retries {
                    return Err(Error::storage(
                        &self.target,
                        format!("delivering to {}", redacted_url(url)),
                        format!(
                            "{problem}, and still after {} retries; check the receiver and \
                             put again (a retry delivers every request again)",
                            self.retry.retries
                        ),
                    ));
                }
                let wait = self.retry.delay(retry, retry_after);
                tracing::warn!(
                    target = self.target.as_str(),
                    url = %redacted_url(url),
                    retry = retry + 1,
                    wait_ms = wait.as_millis() as u64,
                    "delivery attempt failed: {problem}; retrying"
                );
                tokio::time::sleep(wait).await;
                retry += 1;
            }
        }

        /// The reply if it is a 2xx; otherwise the receiver refused the request (a 4xx other
        /// than 429, or a redirect): the error names the status and the start of the body.
        pub fn accept(&self, url: &str, reply: Reply) -> Result<Reply> {
            if reply.status.is_success() {
                return Ok(reply);
            }
            let (status, body) = (reply.status, reply.body);
            let message = format!(
                "target '{}': {} refused the delivery with {status}: {}",
                self.target,
                redacted_url(url),
                excerpt(&body)
            );
            Err(match status {
                StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => {
                    Error::invalid_data(message)
                }
                _ => Error::failed_precondition(message),
            })
        }

        /// Whether the receiver answers at all: a HEAD request (an OPTIONS one if HEAD is not
        /// allowed); any HTTP answer means it is reachable.
        pub async fn probe(&self, url: &str) -> Result<()> {
            let mut last = None;
            for method in [Method::HEAD, Method::OPTIONS] {
                match self
                    .client
                    .request(method, url)
                    .headers(self.headers.clone())
                    .send()
                    .await
                {
                    Ok(response) if response.status() == StatusCode::METHOD_NOT_ALLOWED => {}
                    Ok(_) => return Ok(()),
                    Err(e) => last = Some(describe(e)),
                }
            }
            match last {
                // Both methods answered 405: the server is there.
                None => Ok(()),
                Some(problem) => Err(Error::storage(
                    &self.target,
                    format!("checking {}", redacted_url(url)),
                    problem,
                )),
            }
        }
    }

    /// A transport error without the URL (its query may hold a token).
    fn describe(error: reqwest::Error) -> String {
        let error = error.without_url();
        let kind = if error.is_timeout() {
            "it did not answer in time"
        } else if error.is_connect() {
            "it could not be reached"
        } else {
            "the request failed"
        };
        let mut text = format!("{kind} ({error}");
        let mut source = std::error::Error::source(&error);
        while let Some(cause) = source {
            text.push_str(&format!(": {cause}"));
            source = cause.source();
        }
        text.push(')');
        text
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::{Int64Array, StringArray};
    use arrow_schema::{DataType, Field, Schema};

    use super::*;

    fn batch(start: i64, n: i64) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from_iter_values(start..start + n)),
                Arc::new(StringArray::from_iter(
                    (start..start + n).map(|i| (i % 2 == 0).then(|| format!("n{i}"))),
                )),
            ],
        )
        .unwrap()
    }

    #[test]
    fn batches_come_out_in_chunks_of_at_most_max_rows() {
        let first = batch(0, 7);
        let mut batcher = Batcher::new(first.schema(), 5, usize::MAX);
        batcher.push(first);
        batcher.push(batch(7, 0));
        batcher.push(batch(7, 6));
        let mut ids = Vec::new();
        let mut sizes = Vec::new();
        while batcher.full() {
            let chunk = batcher.peek().unwrap().unwrap();
            sizes.push(chunk.num_rows());
            let col = chunk
                .column(0)
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap();
            ids.extend(col.values().iter().copied());
            batcher.consume(chunk.num_rows());
        }
        assert_eq!(batcher.rows(), 3);
        let rest = batcher.peek().unwrap().unwrap();
        let col = rest
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        ids.extend(col.values().iter().copied());
        batcher.consume(rest.num_rows());
        assert_eq!(sizes, vec![5, 5]);
        assert_eq!(ids, (0..13).collect::<Vec<_>>());
        assert!(batcher.peek().unwrap().is_none());
        // A chunk is also due once the pending rows' Arrow memory reaches the byte limit.
        let size = batch(0, 2).get_array_memory_size();
        let mut by_bytes = Batcher::new(batch(0, 1).schema(), 1000, size * 2 + 1);
        by_bytes.push(batch(0, 2));
        by_bytes.push(batch(2, 2));
        assert!(!by_bytes.full());
        by_bytes.push(batch(4, 2));
        assert!(by_bytes.full());
        by_bytes.consume(3);
        assert!(!by_bytes.full());
        assert_eq!(by_bytes.rows(), 3);
        // A smaller head, as the byte limit asks for.
        batcher.push(batch(20, 4));
        assert_eq!(batcher.head(2).unwrap().unwrap().num_rows(), 2);
        batcher.consume(2);
        assert_eq!(batcher.rows(), 2);
    }

    #[test]
    fn rows_encode_as_json_objects_with_nulls() {
        let out = json_rows(&batch(1, 2)).unwrap();
        let value: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            value,
            serde_json::json!([{"id": 1, "name": null}, {"id": 2, "name": "n2"}])
        );
        assert_eq!(json_rows(&batch(0, 0)).unwrap(), b"[]");
        let lines = ndjson_rows(&batch(1, 2)).unwrap();
        assert_eq!(
            String::from_utf8(lines).unwrap(),
            "{\"id\":1,\"name\":null}\n{\"id\":2,\"name\":\"n2\"}\n"
        );
    }

    #[test]
    fn the_retry_schedule_doubles_up_to_its_cap_and_honours_retry_after() {
        let policy = RetryPolicy {
            retries: 5,
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        let waits: Vec<u128> = (0..6).map(|r| policy.delay(r, None).as_millis()).collect();
        assert_eq!(waits, vec![100, 200, 400, 800, 1000, 1000]);
        assert_eq!(policy.delay(40, None), Duration::from_secs(1));
        assert_eq!(
            policy.delay(0, Some(Duration::from_millis(700))),
            Duration::from_millis(700)
        );
        assert_eq!(
            policy.delay(0, Some(Duration::from_secs(120))),
            Duration::from_secs(1)
        );
        let now = chrono::DateTime::parse_from_rfc3339("2015-10-21T07:28:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        assert_eq!(parse_retry_after("3", now), Some(Duration::from_secs(3)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:05 GMT", now),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:27:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn secrets_and_url_credentials_never_print() {
        let mut headers = Headers::new();
        headers.insert("Authorization".into(), Secret::new("Bearer tok3n"));
        let debug = format!("{headers:?}");
        assert!(
            !debug.contains("tok3n") && debug.contains("Authorization"),
            "{debug}"
        );
        assert_eq!(
            redacted_url("https://u:pw@hooks.example.com/in?token=abc&x=1"),
            "https://u:***@hooks.example.com/in?token=***&x=***"
        );
        assert_eq!(
            redacted_url("http://127.0.0.1:8080/hook"),
            "http://127.0.0.1:8080/hook"
        );
        assert_eq!(excerpt(b"bad\nrow"), "bad row");
        let long = vec![b'x'; 1000];
        assert!(excerpt(&long).ends_with("(1000 bytes)"));
    }
}
