//! Email target settings, and its entry in the target registry.

use std::sync::Arc;

use lettre::message::Mailbox;
use serde::Deserialize;

use super::EmailTarget;
use crate::error::Result;
use crate::targets::delivery::redacted_url;
use crate::targets::{Target, TargetKind};

/// What the message carries as an attachment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Attach {
    #[default]
    Csv,
    Parquet,
    /// An Excel workbook: refused for now (see docs/configuration.md).
    Xlsx,
    /// No attachment: the summary and the first rows only.
    None,
}

impl Attach {
    pub fn extension(self) -> &'static str {
        match self {
            Self::Csv => "csv",
            Self::Parquet => "parquet",
            Self::Xlsx => "xlsx",
            Self::None => "",
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Self::Csv => "text/csv; charset=utf-8",
            Self::Parquet => "application/vnd.apache.parquet",
            Self::Xlsx => "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
            Self::None => "",
        }
    }
}

/// Email target settings.
#[derive(Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EmailConfig {
    /// `smtps://user:pass@host:port` (TLS), `smtp://…?tls=required` (STARTTLS) or
    /// `smtp://host:port` (unencrypted).
    pub smtp: String,
    /// The sender, `Name <address>` or `address`.
    pub from: String,
    /// Recipients; a put may replace them with its `to` option.
    #[serde(default)]
    pub to: Vec<String>,
    #[serde(default)]
    pub cc: Vec<String>,
    #[serde(default)]
    pub attach: Attach,
    /// With `{asset}`, `{partition}`, `{rows}` and `{date}` (UTC, YYYY-MM-DD) filled in.
    #[serde(default = "default_subject")]
    pub subject: String,
    /// Rows shown as a table in the message body.
    #[serde(default = "default_preview_rows")]
    pub preview_rows: usize,
    /// Largest attachment in bytes; a put whose attachment grows past it is refused.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: usize,
    /// Seconds the SMTP conversation may take.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
}

impl EmailConfig {
    /// A target sending through `smtp` from `from` to `to`, every other setting at its default.
    pub fn new(smtp: &str, from: &str, to: &[&str]) -> Self {
        Self {
            smtp: smtp.into(),
            from: from.into(),
            to: to.iter().map(|s| s.to_string()).collect(),
            cc: Vec::new(),
            attach: Attach::default(),
            subject: default_subject(),
            preview_rows: default_preview_rows(),
            max_bytes: default_max_bytes(),
            timeout_secs: default_timeout_secs(),
        }
    }
}

/// The SMTP URL holds the password: it prints without it.
impl std::fmt::Debug for EmailConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmailConfig")
            .field("smtp", &redacted_url(&self.smtp))
            .field("from", &self.from)
            .field("to", &self.to)
            .field("cc", &self.cc)
            .field("attach", &self.attach)
            .field("subject", &self.subject)
            .field("preview_rows", &self.preview_rows)
            .field("max_bytes", &self.max_bytes)
            .field("timeout_secs", &self.timeout_secs)
            .finish()
    }
}

fn default_subject() -> String {
    "{asset}: {rows} rows ({date})".to_string()
}

fn default_preview_rows() -> usize {
    20
}

/// 10 MiB: most mail servers refuse messages over 10 to 25 MiB, and base64 adds a third.
fn default_max_bytes() -> usize {
    10 << 20
}

fn default_timeout_secs() -> u64 {
    60
}

/// The placeholders a subject may use.
pub(super) const PLACEHOLDERS: [&str; 4] = ["asset", "partition", "rows", "date"];

/// Parses a list of addresses; `setting` names them in the message.
pub(super) fn mailboxes(setting: &str, addresses: &[String]) -> Result<Vec<Mailbox>, String> {
    addresses
        .iter()
        .map(|a| {
            a.parse::<Mailbox>().map_err(|e| {
                format!(
                    "{setting}: {a:?} is not an email address ({e}); e.g. \"Ops <ops@example.com>\""
                )
            })
        })
        .collect()
}

/// Checks settings without connecting.
pub(super) fn check(config: &EmailConfig) -> Result<(), String> {
    let url = url::Url::parse(&config.smtp).map_err(|e| {
        format!(
            "smtp {} is not a valid URL ({e}); e.g. smtps://user:password@smtp.example.com:465",
            redacted_url(&config.smtp)
        )
    })?;
    if !matches!(url.scheme(), "smtp" | "smtps") {
        return Err(format!(
            "smtp must start with smtps:// (TLS) or smtp:// (add ?tls=required for STARTTLS), \
             not {}://",
            url.scheme()
        ));
    }
    lettre::AsyncSmtpTransport::<lettre::Tokio1Executor>::from_url(&config.smtp)
        .map_err(|e| format!("smtp {} is not usable: {e}", redacted_url(&config.smtp)))?;
    mailboxes("from", std::slice::from_ref(&config.from))?;
    mailboxes("to", &config.to)?;
    mailboxes("cc", &config.cc)?;
    if config.to.is_empty() && config.cc.is_empty() {
        return Err(
            "to is empty: name at least one recipient (a put may replace them with its \"to\" \
             option)"
                .into(),
        );
    }
    check_subject(&config.subject)?;
    if config.attach == Attach::Xlsx {
        return Err(
            "attach = \"xlsx\" is not available for email targets yet; attach csv or parquet \
             (both open in Excel's Power Query), or deliver the workbook with an excel target"
                .into(),
        );
    }
    if config.max_bytes < 1024 {
        return Err("max_bytes must be at least 1024".into());
    }
    if config.timeout_secs == 0 {
        return Err("timeout_secs must be at least 1".into());
    }
    Ok(())
}

/// Refuses a placeholder the subject template does not know, and unbalanced braces.
fn check_subject(subject: &str) -> Result<(), String> {
    let mut rest = subject;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let close = after
            .find('}')
            .ok_or_else(|| format!("subject {subject:?} opens a '{{' it never closes"))?;
        let name = &after[..close];
        if !PLACEHOLDERS.contains(&name) {
            return Err(format!(
                "subject {subject:?} uses {{{name}}}; the placeholders are {{asset}}, \
                 {{partition}}, {{rows}} and {{date}}"
            ));
        }
        rest = &after[close + 1..];
    }
    Ok(())
}

/// The `email` kind.
pub struct Email;

impl TargetKind for Email {
    type Config = EmailConfig;

    fn validate(config: &EmailConfig) -> Result<(), String> {
        check(config)
    }

    fn unshareable(_config: &EmailConfig) -> Option<String> {
        None
    }

    fn build(name: &str, config: &EmailConfig) -> Result<Arc<dyn Target>> {
        Ok(Arc::new(EmailTarget::open(name, config)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<EmailConfig, String> {
        toml::from_str::<EmailConfig>(text).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_and_checks() {
        let config = parse(
            "smtp = \"smtp://127.0.0.1:2525\"\nfrom = \"q@example.com\"\nto = [\"a@example.com\"]",
        )
        .unwrap();
        assert_eq!(
            config,
            EmailConfig::new("smtp://127.0.0.1:2525", "q@example.com", &["a@example.com"])
        );
        check(&config).unwrap();
        let with = |edit: fn(&mut EmailConfig)| {
            let mut c = config.clone();
            edit(&mut c);
            check(&c)
        };
        assert!(
            with(|c| c.smtp = "http://h".into())
                .unwrap_err()
                .contains("smtps://")
        );
        assert!(
            with(|c| c.from = "not an address".into())
                .unwrap_err()
                .contains("from")
        );
        assert!(
            with(|c| c.to = vec!["x@".into()])
                .unwrap_err()
                .contains("to:")
        );
        assert!(with(|c| c.to.clear()).unwrap_err().contains("recipient"));
        assert!(
            with(|c| c.subject = "{asset} {when}".into())
                .unwrap_err()
                .contains("{when}")
        );
        assert!(
            with(|c| c.subject = "{asset".into())
                .unwrap_err()
                .contains("never closes")
        );
        assert!(with(|c| c.max_bytes = 1).unwrap_err().contains("max_bytes"));
        with(|c| c.subject = "Daily {asset} {partition} {rows} {date}".into()).unwrap();
        with(|c| c.smtp = "smtps://u:p@smtp.example.com:465".into()).unwrap();
        let err = parse("smtp = \"smtp://h\"\nfrom = \"a@b.c\"\natach = \"csv\"").unwrap_err();
        assert!(err.contains("atach"), "{err}");
    }

    #[test]
    fn the_password_never_prints() {
        let config = EmailConfig::new("smtps://ops:s3cret@smtp.example.com:465", "a@b.c", &[]);
        let debug = format!("{config:?}");
        assert!(!debug.contains("s3cret"), "{debug}");
        let mut bad = config.clone();
        bad.smtp = "smtps://ops:s3cret@smtp.example.com:465?tls=sometimes".into();
        if let Err(e) = check(&bad) {
            assert!(!e.contains("s3cret"), "{e}");
        }
    }
}
