//! Webhook: a put's rows sent to an HTTP endpoint in requests of at most `batch_rows` rows and
//! `batch_bytes` bytes, as JSON, NDJSON, Arrow IPC or Parquet.
//!
//! Requests go out while the put streams (the writer holds one request's rows at most), each
//! with an `Idempotency-Key` of the put id and its sequence number, retried with exponential
//! backoff on 429, 5xx and connection failures. The receiver sees rows before the put commits:
//! with `commit_url`, one last request after every row was delivered lists the put's request
//! ids, so a receiver that stages requests by key can apply a put all or nothing (two-phase
//! delivery). A delivery cannot be recalled; the target is write-only and at-least-once (see
//! docs/protocol.md).

mod config;
mod sign;

use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use async_trait::async_trait;
use bytes::Bytes;
use reqwest::Method;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderValue};

use crate::asset::{AssetKey, Partition};
use crate::catalog::PendingPut;
use crate::error::{Error, Result};
use crate::protocol::Mode;
use crate::targets::delivery::{
    Batcher, Http, check_json_schema, delivery_location, json_rows, ndjson_rows, put_headers,
    request_headers, resolve_interrupted, write_only,
};
use crate::targets::util::refuse_options;
use crate::targets::{
    AssetWriter, DeleteRequest, ReadRequest, SendableBatchStream, Target, WriteRequest,
    WriteSummary,
};
pub use config::{Format, Webhook, WebhookConfig};

/// The header carrying the signature, see [`sign`].
pub const SIGNATURE_HEADER: &str = "x-quiver-signature";

pub struct WebhookTarget {
    name: String,
    config: WebhookConfig,
    method: Method,
    http: Arc<Http>,
}

impl WebhookTarget {
    /// Checks the settings; connects to nothing until the first put or health check.
    pub fn open(name: &str, config: &WebhookConfig) -> Result<Self> {
        let fail = |e: String| Error::config(format!("[targets.{name}] {e}"));
        config::check(config).map_err(fail)?;
        let http =
            Http::new(name, &config.headers, config.timeout_secs, config.retry()).map_err(fail)?;
        Ok(Self {
            name: name.to_string(),
            method: Method::from_bytes(config.method.as_bytes())
                .map_err(|e| fail(e.to_string()))?,
            config: config.clone(),
            http: Arc::new(http),
        })
    }
}

#[async_trait]
impl Target for WebhookTarget {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "webhook"
    }

    /// Both mean "deliver these rows"; the receiver learns which from `X-Quiver-Mode`.
    fn modes(&self) -> &'static [Mode] {
        &[Mode::Overwrite, Mode::Append]
    }

    fn location(&self, asset: &AssetKey, partition: Option<&Partition>) -> String {
        delivery_location(&self.config.url, asset, partition)
    }

    async fn begin(&self, req: &WriteRequest, schema: SchemaRef) -> Result<Box<dyn AssetWriter>> {
        refuse_options("webhook", &req.options, &[])?;
        if matches!(self.config.format, Format::Json | Format::Ndjson) {
            check_json_schema(&schema).map_err(|reason| {
                Error::invalid_data(format!(
                    "target '{}' cannot deliver asset '{}' as JSON: {reason}; set format = \
                     \"arrow\" or \"parquet\"",
                    self.name, req.asset
                ))
            })?;
        }
        let headers = put_headers(req)?;
        Ok(Box::new(WebhookWriter {
            target: self.name.clone(),
            config: self.config.clone(),
            method: self.method.clone(),
            http: Arc::clone(&self.http),
            batcher: Batcher::new(
                Arc::clone(&schema),
                self.config.batch_rows,
                self.config.batch_bytes,
            ),
            headers,
            put_id: req.put_id.clone(),
            asset: req.asset.to_string(),
            partition: req.partition.as_ref().map(Partition::to_json),
            mode: req.mode,
            location: self.location(&req.asset, req.partition.as_ref()),
            requests: Vec::new(),
            rows: 0,
            bytes: 0,
        }))
    }

    async fn read(&self, req: &ReadRequest) -> Result<SendableBatchStream> {
        Err(write_only(&self.name, "webhook", &req.asset))
    }

    /// Nothing is kept here; the receiver's copy is the receiver's.
    async fn delete(&self, _req: &DeleteRequest) -> Result<()> {
        Ok(())
    }

    async fn healthcheck(&self) -> Result<()> {
        self.http.probe(&self.config.url).await
    }

    async fn resolve(&self, put: &PendingPut) -> Result<Option<WriteSummary>> {
        Ok(resolve_interrupted("webhook", put))
    }
}

struct WebhookWriter {
    target: String,
    config: WebhookConfig,
    method: Method,
    http: Arc<Http>,
    batcher: Batcher,
    /// The headers every request of the put carries.
    headers: HeaderMap,
    put_id: String,
    asset: String,
    partition: Option<serde_json::Value>,
    mode: Mode,
    location: String,
    /// Idempotency keys of the requests delivered so far.
    requests: Vec<String>,
    rows: u64,
    bytes: u64,
}

impl WebhookWriter {
    fn encode(&self, batch: &RecordBatch) -> Result<Vec<u8>> {
        let encoded = match self.config.format {
            Format::Json => return json_rows(batch),
            Format::Ndjson => return ndjson_rows(batch),
            Format::Arrow => (|| {
                let mut writer =
                    arrow_ipc::writer::StreamWriter::try_new(Vec::new(), &batch.schema())?;
                writer.write(batch)?;
                writer.finish()?;
                writer.into_inner()
            })()
            .map_err(|e: arrow_schema::ArrowError| e.to_string()),
            Format::Parquet => {
                let mut out = Vec::new();
                parquet::arrow::ArrowWriter::try_new(&mut out, batch.schema(), None)
                    .and_then(|mut w| {
                        w.write(batch)?;
                        w.close()
                    })
                    .map(|_| out)
                    .map_err(|e| e.to_string())
            }
        };
        encoded.map_err(|e| {
            Error::invalid_data(format!(
                "target '{}' cannot encode rows of asset '{}' for delivery: {e}",
                self.target, self.asset
            ))
        })
    }

    /// Encodes the next request's rows, fewer than `batch_rows` when their encoding would
    /// exceed `batch_bytes`, and delivers them.
    async fn deliver_next(&mut self) -> Result<()> {
        let limit = self.config.batch_bytes;
        let mut take = self.batcher.rows().min(self.config.batch_rows);
        let (rows, body) = loop {
            let Some(chunk) = self.batcher.head(take)? else {
                return Ok(());
            };
            let body = self.encode(&chunk)?;
            if body.len() <= limit {
                break (take, body);
            }
            if take == 1 {
                return Err(Error::invalid_data(format!(
                    "a row of asset '{}' encodes to {} bytes, more than batch_bytes ({limit}) of \
                     target '{}' allows in one request; raise batch_bytes",
                    self.asset,
                    body.len(),
                    self.target
                )));
            }
            // Shrink in proportion, at least by one row.
            take =
                ((take as u128 * limit as u128 / body.len() as u128) as usize).clamp(1, take - 1);
        };
        let sequence = self.requests.len() as u64 + 1;
        let mut headers = request_headers(&self.headers, &self.put_id, sequence, rows);
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static(self.config.format.content_type()),
        );
        let body = Bytes::from(body);
        self.send(&self.config.url.clone(), &body, headers).await?;
        self.batcher.consume(rows);
        self.rows += rows as u64;
        self.bytes += body.len() as u64;
        self.requests.push(format!("{}-{sequence}", self.put_id));
        Ok(())
    }

    async fn send(&self, url: &str, body: &Bytes, headers: HeaderMap) -> Result<()> {
        let secret = self.config.secret.clone();
        let reply = self
            .http
            .send(&self.method, url, body, &headers, |body| {
                let mut signed = HeaderMap::new();
                if let Some(secret) = &secret {
                    let now = chrono::Utc::now().timestamp();
                    let value = sign::signature(secret.expose().as_bytes(), now, body);
                    signed.insert(
                        SIGNATURE_HEADER,
                        HeaderValue::from_str(&value).expect("ASCII"),
                    );
                }
                Ok(signed)
            })
            .await?;
        self.http.accept(url, reply).map(|_| ())
    }
}

#[async_trait]
impl AssetWriter for WebhookWriter {
    async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        self.batcher.push(batch);
        while self.batcher.full() {
            self.deliver_next().await?;
        }
        Ok(())
    }

    /// Delivers the last rows.
    async fn prepare(&mut self) -> Result<String> {
        while self.batcher.rows() > 0 {
            self.deliver_next().await?;
        }
        Ok(String::new())
    }

    /// Sends the commit request, when there is a `commit_url`.
    async fn commit(self: Box<Self>) -> Result<WriteSummary> {
        if let Some(commit_url) = &self.config.commit_url {
            let body = serde_json::json!({
                "put": self.put_id,
                "asset": self.asset,
                "partition": self.partition,
                "mode": self.mode.as_str(),
                "rows": self.rows,
                "requests": self.requests,
            });
            let mut headers = self.headers.clone();
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            headers.insert(
                "idempotency-key",
                HeaderValue::from_str(&format!("{}-commit", self.put_id)).expect("ASCII"),
            );
            let body = Bytes::from(body.to_string());
            self.send(commit_url, &body, headers).await?;
        }
        Ok(WriteSummary {
            rows: self.rows,
            bytes: self.bytes,
            location: format!("{}&put={}", self.location, self.put_id),
            total_rows: None,
        })
    }

    /// Requests already delivered cannot be recalled; without a commit request a receiver
    /// using `commit_url` discards them.
    async fn abort(self: Box<Self>) -> Result<()> {
        if !self.requests.is_empty() {
            tracing::warn!(
                target = self.target.as_str(),
                put = self.put_id.as_str(),
                requests = self.requests.len(),
                "a failed put had already delivered some requests{}",
                if self.config.commit_url.is_some() {
                    "; no commit request follows them"
                } else {
                    ""
                }
            );
        }
        Ok(())
    }
}
