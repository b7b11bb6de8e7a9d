//! Email: one message per put (so per partition for a partitioned asset), sent through SMTP
//! with `lettre`: a subject from a template, an HTML body with a summary and the first rows
//! as a table, a plain-text alternative, and the rows attached as CSV, Parquet or XLSX.
//!
//! The message is built while the put streams (the attachment grows in memory up to
//! `max_bytes`, and the first `preview_rows` rows are kept for the body) and sent only at
//! commit, so nothing leaves unless the whole stream arrived. The catalog records the
//! message's Message-ID in the put's location. Write-only and at-least-once (see
//! docs/protocol.md).

mod attach;
mod config;
mod message;

use std::time::Duration;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use async_trait::async_trait;
use lettre::message::{Mailbox, MultiPart, header::ContentType};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use crate::asset::{AssetKey, Partition};
use crate::catalog::PendingPut;
use crate::error::{Error, Result};
use crate::protocol::{Mode, Options};
use crate::targets::delivery::{delivery_location, redacted_url, resolve_interrupted, write_only};
use crate::targets::{
    AssetWriter, DeleteRequest, ReadRequest, SendableBatchStream, Target, WriteRequest,
    WriteSummary,
};
pub use config::{Attach, Email, EmailConfig};

/// How long a passed SMTP health check stands: the server checks its targets every 10 s, and
/// a mail provider need not see a login that often.
const HEALTH_VALID_FOR: Duration = Duration::from_secs(300);

pub struct EmailTarget {
    /// When the SMTP server last answered NOOP.
    healthy_at: std::sync::Mutex<Option<std::time::Instant>>,
    name: String,
    config: EmailConfig,
    from: Mailbox,
    to: Vec<Mailbox>,
    cc: Vec<Mailbox>,
    transport: AsyncSmtpTransport<Tokio1Executor>,
}

impl EmailTarget {
    /// Checks the settings; connects to nothing until the first put or health check.
    pub fn open(name: &str, config: &EmailConfig) -> Result<Self> {
        let fail = |e: String| Error::config(format!("[targets.{name}] {e}"));
        config::check(config).map_err(fail)?;
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(&config.smtp)
            .map_err(|e| {
                fail(format!(
                    "smtp {} is not usable: {e}",
                    redacted_url(&config.smtp)
                ))
            })?
            .timeout(Some(Duration::from_secs(config.timeout_secs)))
            .build();
        Ok(Self {
            healthy_at: std::sync::Mutex::new(None),
            name: name.to_string(),
            from: config::mailboxes("from", std::slice::from_ref(&config.from)).map_err(fail)?[0]
                .clone(),
            to: config::mailboxes("to", &config.to).map_err(fail)?,
            cc: config::mailboxes("cc", &config.cc).map_err(fail)?,
            config: config.clone(),
            transport,
        })
    }

    /// The recipients of one put: the `to` option (a list, or addresses separated by commas)
    /// replaces the configured ones.
    fn recipients(&self, options: &Options) -> Result<Vec<Mailbox>> {
        if let Some(key) = options.keys().find(|k| k.as_str() != "to") {
            return Err(Error::invalid_request(format!(
                "option '{key}' is not understood by email targets; accepted options: to"
            )));
        }
        let Some(value) = options.get("to") else {
            return Ok(self.to.clone());
        };
        let addresses: Vec<String> = match value {
            serde_json::Value::String(s) => s
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect(),
            serde_json::Value::Array(items) => items
                .iter()
                .map(|v| {
                    v.as_str().map(String::from).ok_or_else(|| {
                        Error::invalid_request(format!(
                            "option 'to' must list addresses as strings, not {v}"
                        ))
                    })
                })
                .collect::<Result<_>>()?,
            other => {
                return Err(Error::invalid_request(format!(
                    "option 'to' must be an address, addresses separated by commas, or a list \
                     of addresses, not {other}"
                )));
            }
        };
        if addresses.is_empty() && self.cc.is_empty() {
            return Err(Error::invalid_request(
                "option 'to' names no recipient; give at least one address",
            ));
        }
        config::mailboxes("option 'to'", &addresses).map_err(Error::invalid_request)
    }
}

#[async_trait]
impl Target for EmailTarget {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "email"
    }

    /// Both mean "send these rows".
    fn modes(&self) -> &'static [Mode] {
        &[Mode::Overwrite, Mode::Append]
    }

    fn location(&self, asset: &AssetKey, partition: Option<&Partition>) -> String {
        delivery_location(&self.config.smtp, asset, partition)
    }

    async fn begin(&self, req: &WriteRequest, schema: SchemaRef) -> Result<Box<dyn AssetWriter>> {
        let to = self.recipients(&req.options)?;
        let file_name = format!(
            "{}{}.{}",
            req.asset.to_string().replace('/', "_"),
            req.partition
                .as_ref()
                .map(|p| format!("_{}", p.to_string().replace(['/', '='], "_")))
                .unwrap_or_default(),
            self.config.attach.extension()
        );
        let attachment = attach::Attachment::new(self.config.attach, &schema).map_err(|e| {
            Error::invalid_data(format!(
                "target '{}' cannot attach asset '{}' as {}: {e}",
                self.name,
                req.asset,
                self.config.attach.extension()
            ))
        })?;
        Ok(Box::new(EmailWriter {
            target: self.name.clone(),
            config: self.config.clone(),
            transport: self.transport.clone(),
            from: self.from.clone(),
            to,
            cc: self.cc.clone(),
            asset: req.asset.to_string(),
            partition: req.partition.as_ref().map(|p| p.to_string()),
            schema,
            preview: Vec::new(),
            preview_rows: 0,
            attachment,
            file_name,
            rows: 0,
        }))
    }

    async fn read(&self, req: &ReadRequest) -> Result<SendableBatchStream> {
        Err(write_only(&self.name, "email", &req.asset))
    }

    /// A message that was sent stays in its recipients' mailboxes.
    async fn delete(&self, _req: &DeleteRequest) -> Result<()> {
        Ok(())
    }

    /// Connects, greets (and logs in, with a user), and sends NOOP; a pass stands for
    /// [`HEALTH_VALID_FOR`], a failure is checked again at the next call.
    async fn healthcheck(&self) -> Result<()> {
        if crate::targets::lock(&self.healthy_at).is_some_and(|at| at.elapsed() < HEALTH_VALID_FOR)
        {
            return Ok(());
        }
        match self.transport.test_connection().await {
            Ok(true) => {
                *crate::targets::lock(&self.healthy_at) = Some(std::time::Instant::now());
                Ok(())
            }
            Ok(false) => Err(Error::storage(
                &self.name,
                format!("checking {}", redacted_url(&self.config.smtp)),
                "the SMTP server did not answer NOOP",
            )),
            Err(e) => Err(Error::storage(
                &self.name,
                format!("checking {}", redacted_url(&self.config.smtp)),
                e,
            )),
        }
    }

    async fn resolve(&self, put: &PendingPut) -> Result<Option<WriteSummary>> {
        Ok(resolve_interrupted("email", put))
    }
}

struct EmailWriter {
    target: String,
    config: EmailConfig,
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    to: Vec<Mailbox>,
    cc: Vec<Mailbox>,
    asset: String,
    partition: Option<String>,
    schema: SchemaRef,
    /// The first `preview_rows` rows, for the body.
    preview: Vec<RecordBatch>,
    preview_rows: usize,
    attachment: attach::Attachment,
    file_name: String,
    rows: u64,
}

impl EmailWriter {
    fn too_large(&self, size: usize) -> Error {
        Error::invalid_data(format!(
            "the {} attachment of asset '{}' reached {size} bytes after {} rows, over max_bytes \
             ({}) of target '{}'; nothing was sent. Raise max_bytes, attach parquet (smaller), \
             or set attach = \"none\" to send the summary only",
            self.config.attach.extension(),
            self.asset,
            self.rows,
            self.config.max_bytes,
            self.target
        ))
    }

    fn build(&mut self, attachment: Option<Vec<u8>>) -> Result<Message> {
        let date = chrono::Utc::now().format("%Y-%m-%d").to_string();
        let facts = message::Facts {
            asset: &self.asset,
            partition: self.partition.as_deref(),
            rows: self.rows,
            date: &date,
        };
        let preview = if self.preview.is_empty() {
            None
        } else {
            Some(
                arrow::compute::concat_batches(&self.schema, &self.preview)
                    .map_err(|e| Error::internal(format!("cannot join the preview rows: {e}")))?,
            )
        };
        let attached = if attachment.is_some() {
            self.file_name.as_str()
        } else {
            ""
        };
        let alternative = MultiPart::alternative_plain_html(
            message::text(&facts, &self.schema, preview.as_ref(), attached),
            message::html(&facts, &self.schema, preview.as_ref(), attached),
        );
        let mut builder = Message::builder()
            .from(self.from.clone())
            .subject(message::subject(&self.config.subject, &facts))
            .message_id(None);
        for to in &self.to {
            builder = builder.to(to.clone());
        }
        for cc in &self.cc {
            builder = builder.cc(cc.clone());
        }
        let body = match attachment {
            Some(bytes) => MultiPart::mixed().multipart(alternative).singlepart(
                lettre::message::Attachment::new(self.file_name.clone()).body(
                    bytes,
                    ContentType::parse(self.config.attach.content_type()).expect("a MIME type"),
                ),
            ),
            None => alternative,
        };
        builder.multipart(body).map_err(|e| {
            Error::invalid_request(format!(
                "target '{}' cannot build the message for asset '{}': {e}",
                self.target, self.asset
            ))
        })
    }
}

#[async_trait]
impl AssetWriter for EmailWriter {
    async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        if self.preview_rows < self.config.preview_rows {
            let take = batch
                .num_rows()
                .min(self.config.preview_rows - self.preview_rows);
            self.preview.push(batch.slice(0, take));
            self.preview_rows += take;
        }
        self.rows += batch.num_rows() as u64;
        let size = self.attachment.write(&batch).map_err(|e| {
            Error::invalid_data(format!(
                "target '{}' cannot attach rows of asset '{}': {e}",
                self.target, self.asset
            ))
        })?;
        if size > self.config.max_bytes {
            return Err(self.too_large(size));
        }
        Ok(())
    }

    /// Finishes the attachment: the last check that can refuse the put before anything is
    /// sent.
    async fn prepare(&mut self) -> Result<String> {
        self.attachment.finish(&self.schema).map_err(|e| {
            Error::invalid_data(format!(
                "target '{}' cannot finish the attachment of asset '{}': {e}",
                self.target, self.asset
            ))
        })?;
        let size = self.attachment.size();
        if size > self.config.max_bytes {
            return Err(self.too_large(size));
        }
        Ok(String::new())
    }

    /// Sends the message; its Message-ID goes into the location the catalog records.
    async fn commit(mut self: Box<Self>) -> Result<WriteSummary> {
        let bytes = std::mem::replace(&mut self.attachment, attach::Attachment::Sent).into_bytes();
        let size = bytes.as_ref().map_or(0, Vec::len) as u64;
        let message = self.build(bytes)?;
        let id = message
            .headers()
            .get_raw("Message-ID")
            .unwrap_or_default()
            .to_string();
        let recipients: Vec<String> = self.to.iter().map(|m| m.email.to_string()).collect();
        self.transport.send(message).await.map_err(|e| {
            Error::storage(
                &self.target,
                format!(
                    "sending asset '{}' through {}",
                    self.asset,
                    redacted_url(&self.config.smtp)
                ),
                e,
            )
        })?;
        Ok(WriteSummary {
            rows: self.rows,
            bytes: size,
            location: format!("mailto:{}?message-id={id}", recipients.join(",")),
            total_rows: None,
        })
    }

    /// Nothing was sent.
    async fn abort(self: Box<Self>) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_to_option_replaces_the_recipients() {
        let target = EmailTarget::open(
            "mail",
            &EmailConfig::new("smtp://127.0.0.1:25", "q@example.com", &["a@example.com"]),
        )
        .unwrap();
        let emails = |options: &Options| -> Result<Vec<String>> {
            Ok(target
                .recipients(options)?
                .iter()
                .map(|m| m.email.to_string())
                .collect())
        };
        assert_eq!(emails(&Options::new()).unwrap(), ["a@example.com"]);
        let mut options = Options::new();
        options.insert("to".into(), json!(" b@example.com, C <c@example.com> "));
        assert_eq!(
            emails(&options).unwrap(),
            ["b@example.com", "c@example.com"]
        );
        options.insert("to".into(), json!(["d@example.com"]));
        assert_eq!(emails(&options).unwrap(), ["d@example.com"]);
        for bad in [json!(""), json!([3]), json!(7), json!("nobody")] {
            options.insert("to".into(), bad.clone());
            let err = emails(&options).unwrap_err().to_string();
            assert!(err.contains("'to'"), "{bad}: {err}");
        }
        let mut unknown = Options::new();
        unknown.insert("subject".into(), json!("x"));
        let err = emails(&unknown).unwrap_err().to_string();
        assert!(
            err.contains("'subject'") && err.contains("accepted options: to"),
            "{err}"
        );
    }
}
