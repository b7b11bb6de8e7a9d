//! Quiver's error type and its mapping to gRPC status codes.
//!
//! Every variant carries what the person at the client needs: which asset, which target, and
//! what to do about it. [`From<Error> for tonic::Status`] maps each variant to one gRPC code;
//! nothing is reported as a blanket `INTERNAL` unless it really is a server bug.
//!
//! A message repeats what the client sent only through [`echo`] (one value), [`echo_list`]
//! (a list of values) and [`echo_in`] (another library's message that quotes values), which
//! show a long value as its start and its length. A status message is cut at
//! [`MAX_STATUS_MESSAGE_BYTES`] in any case: it travels in the `grpc-message` trailer, and
//! clients refuse trailers over a few kilobytes (gRPC C++, and so pyarrow, answers
//! `RESOURCE_EXHAUSTED` instead of the real error from 16 KiB, sometimes from 8 KiB).

use std::fmt;

/// A `Result` whose error defaults to Quiver's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A boxed source error.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A descriptor, ticket, criteria, action body or name that cannot be understood.
    #[error("{message}")]
    InvalidRequest { message: String },

    /// The descriptor names a target that is not configured.
    #[error("unknown target '{}'; configured targets: {}", echo(.target), .available.join(", "))]
    UnknownTarget {
        target: String,
        available: Vec<String>,
    },

    /// No committed asset (or partition) under that name.
    #[error("asset '{asset}' not found in target '{target}'{}", partition_suffix(.partition))]
    AssetNotFound {
        target: String,
        asset: String,
        partition: Option<String>,
    },

    /// The target cannot perform this write mode.
    #[error(
        "target '{target}' does not support mode '{}'; {}",
        echo(.mode),
        supported_hint(.supported_by)
    )]
    UnsupportedMode {
        target: String,
        mode: String,
        supported_by: Vec<String>,
    },

    /// The request is valid but conflicts with the asset's current state.
    #[error("{message}")]
    FailedPrecondition { message: String },

    /// The data sent does not match what the stream declared, or a format cannot hold it.
    #[error("{message}")]
    InvalidData { message: String },

    /// The asset changed while it was being read; the read can simply be retried.
    #[error(
        "asset '{asset}' in target '{target}' was overwritten while it was being read; retry the read"
    )]
    ReadConflict { target: String, asset: String },

    /// A limit of the server is reached; the call may be retried later.
    #[error("{message}")]
    ResourceExhausted { message: String },

    /// A client took too long: a put's stream stalled, say.
    #[error("{message}")]
    Timeout { message: String },

    /// The caller may not do this to this asset.
    #[error("{message}")]
    PermissionDenied { message: String },

    /// The client went away or cancelled before the put finished.
    #[error("the client cancelled the request: {message}")]
    Cancelled { message: String },

    /// The storage behind a target failed.
    #[error("target '{target}' storage failed while {action}: {source}")]
    Storage {
        target: String,
        action: String,
        #[source]
        source: BoxError,
    },

    /// Encoding or decoding Arrow data for a stored asset failed.
    #[error("target '{target}' could not {action}: {source}")]
    Format {
        target: String,
        action: String,
        #[source]
        source: BoxError,
    },

    /// The catalog of assets failed.
    #[error("catalog failed while {action}: {source}")]
    Catalog {
        action: String,
        #[source]
        source: BoxError,
    },

    /// The configuration is not usable; found before anything starts.
    #[error("invalid configuration: {message}")]
    Config { message: String },

    /// A bug or an unexpected runtime failure (a panicked task, say).
    #[error("internal error: {message}")]
    Internal { message: String },

    /// What the call would create exists already.
    #[error("{message}")]
    AlreadyExists { message: String },

    /// A call or command this server does not implement.
    #[error("{message}")]
    Unimplemented { message: String },

    /// An error a server reported to the client commands.
    #[error("{message} ({code:?})")]
    Remote { code: tonic::Code, message: String },
}

fn partition_suffix(partition: &Option<String>) -> String {
    match partition {
        Some(p) => format!(" (partition '{}')", echo(p)),
        None => String::new(),
    }
}

fn supported_hint(targets: &[String]) -> String {
    if targets.is_empty() {
        "no configured target supports it".to_string()
    } else {
        format!("targets that support it: {}", targets.join(", "))
    }
}

impl Error {
    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::InvalidRequest {
            message: message.into(),
        }
    }

    pub fn invalid_data(message: impl Into<String>) -> Self {
        Self::InvalidData {
            message: message.into(),
        }
    }

    pub fn failed_precondition(message: impl Into<String>) -> Self {
        Self::FailedPrecondition {
            message: message.into(),
        }
    }

    pub fn config(message: impl Into<String>) -> Self {
        Self::Config {
            message: message.into(),
        }
    }

    pub fn unimplemented(message: impl Into<String>) -> Self {
        Self::Unimplemented {
            message: message.into(),
        }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::Internal {
            message: message.into(),
        }
    }

    pub fn catalog(action: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self::Catalog {
            action: action.into(),
            source: source.into(),
        }
    }

    pub fn storage(
        target: impl Into<String>,
        action: impl Into<String>,
        source: impl Into<BoxError>,
    ) -> Self {
        Self::Storage {
            target: target.into(),
            action: action.into(),
            source: source.into(),
        }
    }

    pub fn format(
        target: impl Into<String>,
        action: impl Into<String>,
        source: impl Into<BoxError>,
    ) -> Self {
        Self::Format {
            target: target.into(),
            action: action.into(),
            source: source.into(),
        }
    }

    /// The gRPC code this error is reported with.
    pub fn code(&self) -> tonic::Code {
        use tonic::Code;
        match self {
            Self::InvalidRequest { .. } | Self::InvalidData { .. } => Code::InvalidArgument,
            Self::UnknownTarget { .. } | Self::AssetNotFound { .. } => Code::NotFound,
            Self::UnsupportedMode { .. } | Self::FailedPrecondition { .. } => {
                Code::FailedPrecondition
            }
            Self::ReadConflict { .. } => Code::Aborted,
            Self::PermissionDenied { .. } => Code::PermissionDenied,
            Self::ResourceExhausted { .. } => Code::ResourceExhausted,
            Self::Timeout { .. } => Code::DeadlineExceeded,
            Self::Cancelled { .. } => Code::Cancelled,
            Self::Storage { .. } | Self::Catalog { .. } => Code::Unavailable,
            Self::Format { .. } | Self::Config { .. } | Self::Internal { .. } => Code::Internal,
            Self::Unimplemented { .. } => Code::Unimplemented,
            Self::AlreadyExists { .. } => Code::AlreadyExists,
            Self::Remote { code, .. } => *code,
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(err: Error) -> Self {
        tonic::Status::new(err.code(), capped(err.to_string()))
    }
}

/// How many characters of a value the client sent an error message repeats.
pub const ECHO_CHARS: usize = 64;

/// How many values of a list the client sent an error message repeats.
pub const ECHO_ITEMS: usize = 4;

/// How many characters of another library's message [`echo_in`] keeps, after shortening the
/// values it quotes.
const ECHO_MESSAGE_CHARS: usize = 256;

/// The longest message a status carries, in bytes. tonic percent-encodes the message into the
/// `grpc-message` trailer, which can triple its size; 2 KiB stays under the 8 KiB gRPC C++
/// starts refusing.
pub const MAX_STATUS_MESSAGE_BYTES: usize = 2048;

/// A value the client sent, as an error message shows it: whole when it is at most
/// [`ECHO_CHARS`] characters long, else its first [`ECHO_CHARS`] characters followed by
/// `… (N bytes)`. `{}` shows the text, `{:?}` shows it quoted and escaped, the escapes
/// counted among the characters shown, so either form is at most 4 × [`ECHO_CHARS`] bytes
/// and the length.
#[derive(Clone, Copy)]
pub struct Echo<'a> {
    value: &'a str,
    chars: usize,
}

/// `value` as an error message may repeat it; see [`Echo`].
pub fn echo(value: &str) -> Echo<'_> {
    Echo {
        value,
        chars: ECHO_CHARS,
    }
}

impl Echo<'_> {
    /// Says how long the value is unless `shown` bytes of it were all of it.
    fn write_length(&self, f: &mut fmt::Formatter<'_>, shown: usize) -> fmt::Result {
        if shown < self.value.len() {
            write!(f, "… ({} bytes)", self.value.len())?;
        }
        Ok(())
    }
}

impl fmt::Display for Echo<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let end = self
            .value
            .char_indices()
            .nth(self.chars)
            .map_or(self.value.len(), |(at, _)| at);
        f.write_str(&self.value[..end])?;
        self.write_length(f, end)
    }
}

impl fmt::Debug for Echo<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use fmt::Write as _;
        f.write_char('"')?;
        let mut room = self.chars;
        let mut shown = 0;
        for c in self.value.chars() {
            let escaped = c.escape_debug();
            let width = if c == '\'' { 1 } else { escaped.len() };
            if width > room {
                break;
            }
            if c == '\'' {
                f.write_char(c)?;
            } else {
                write!(f, "{escaped}")?;
            }
            room -= width;
            shown += c.len_utf8();
        }
        f.write_char('"')?;
        self.write_length(f, shown)
    }
}

/// Values the client sent, as an error message shows them: the first [`ECHO_ITEMS`], each
/// through [`echo`], and how many more there are. `{:?}` shows `["a", "b", … 3 more]`, `{}`
/// shows `a, b, … 3 more`.
pub struct EchoList<'a> {
    shown: Vec<Echo<'a>>,
    more: usize,
}

/// `values` as an error message may repeat them; see [`EchoList`].
pub fn echo_list<'a>(values: impl IntoIterator<Item = &'a str>) -> EchoList<'a> {
    let mut values = values.into_iter();
    let shown = values.by_ref().take(ECHO_ITEMS).map(echo).collect();
    EchoList {
        shown,
        more: values.count(),
    }
}

impl<'a> EchoList<'a> {
    fn write(
        &self,
        f: &mut fmt::Formatter<'_>,
        item: fn(&Echo<'a>, &mut fmt::Formatter<'_>) -> fmt::Result,
    ) -> fmt::Result {
        for (i, value) in self.shown.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            item(value, f)?;
        }
        if self.more > 0 {
            write!(f, ", … {} more", self.more)?;
        }
        Ok(())
    }
}

impl<'a> fmt::Display for EchoList<'a> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write(f, <Echo<'a> as fmt::Display>::fmt)
    }
}

impl<'a> fmt::Debug for EchoList<'a> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        self.write(f, <Echo<'a> as fmt::Debug>::fmt)?;
        f.write_str("]")
    }
}

/// Another library's error message (serde's, say) that quotes what the client sent, with
/// every quoted value — between backticks, or in double quotes with escapes — shortened by
/// [`echo`]; whatever the quoting, the whole is kept to its first 256 characters.
pub fn echo_in(message: &str) -> String {
    let mut out = String::new();
    let mut rest = message;
    while let Some(open) = rest.find(['`', '"']) {
        let quote = if rest[open..].starts_with('`') {
            '`'
        } else {
            '"'
        };
        out.push_str(&rest[..=open]);
        let quoted = &rest[open + 1..];
        let Some(close) = closing_quote(quoted, quote) else {
            out.push_str(&echo(quoted).to_string());
            rest = "";
            break;
        };
        out.push_str(&echo(&quoted[..close]).to_string());
        out.push(quote);
        rest = &quoted[close + 1..];
    }
    out.push_str(rest);
    Echo {
        value: &out,
        chars: ECHO_MESSAGE_CHARS,
    }
    .to_string()
}

/// Where the quoted text `text` ends: the next `quote`, past backslash escapes in double quotes.
fn closing_quote(text: &str, quote: char) -> Option<usize> {
    let mut escaped = false;
    for (at, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quote == '"' => escaped = true,
            _ if c == quote => return Some(at),
            _ => {}
        }
    }
    None
}

/// `message` cut to at most [`MAX_STATUS_MESSAGE_BYTES`] at a character boundary, saying
/// where it was cut.
fn capped(message: String) -> String {
    if message.len() <= MAX_STATUS_MESSAGE_BYTES {
        return message;
    }
    let note = |cut: usize| format!("… (message cut at {cut} of {} bytes)", message.len());
    let mut cut = MAX_STATUS_MESSAGE_BYTES - note(MAX_STATUS_MESSAGE_BYTES).len();
    while !message.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}{}", &message[..cut], note(cut))
}

impl From<tokio::task::JoinError> for Error {
    fn from(err: tokio::task::JoinError) -> Self {
        Self::internal(format!("a background task failed: {err}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_values_are_echoed_whole_and_long_ones_by_their_start() {
        assert_eq!(echo("sales").to_string(), "sales");
        assert_eq!(format!("{:?}", echo("a\"b'c\n")), r#""a\"b'c\n""#);
        let exact = "x".repeat(ECHO_CHARS);
        assert_eq!(echo(&exact).to_string(), exact);

        for size in [10_000, 1 << 20] {
            let long = "y".repeat(size);
            assert_eq!(
                echo(&long).to_string(),
                format!("{}… ({size} bytes)", &long[..ECHO_CHARS])
            );
            assert_eq!(
                format!("{:?}", echo(&long)),
                format!("\"{}\"… ({size} bytes)", &long[..ECHO_CHARS])
            );
        }
        // Characters, not bytes: a multi-byte character is never split.
        let accents = "é".repeat(100);
        let shown = echo(&accents).to_string();
        assert!(shown.starts_with(&"é".repeat(ECHO_CHARS)), "{shown}");
        assert!(shown.ends_with("… (200 bytes)"), "{shown}");
        // Escapes count among the characters shown.
        let controls = "\u{1}".repeat(1000);
        let shown = format!("{:?}", echo(&controls));
        assert!(shown.len() <= ECHO_CHARS + 20, "{shown}");
        assert!(shown.ends_with("\"… (1000 bytes)"), "{shown}");
        let emoji = "😀".repeat(1000);
        assert!(format!("{:?}", echo(&emoji)).len() <= 4 * ECHO_CHARS + 20);
    }

    #[test]
    fn lists_show_their_first_values() {
        assert_eq!(format!("{:?}", echo_list(["a", "b"])), r#"["a", "b"]"#);
        let long = "z".repeat(1000);
        let many: Vec<&str> = std::iter::repeat_n(long.as_str(), 10_000).collect();
        let shown = format!("{:?}", echo_list(many.iter().copied()));
        assert!(shown.ends_with(", … 9996 more]"), "{shown}");
        assert!(shown.len() < ECHO_ITEMS * (ECHO_CHARS + 30) + 30, "{shown}");
        assert_eq!(echo_list(["p", "q"]).to_string(), "p, q");
    }

    #[test]
    fn values_quoted_in_another_librarys_message_are_shortened() {
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Body {
            name: String,
            tags: Vec<String>,
        }
        for size in [10_000, 1 << 20] {
            let long = "f".repeat(size);
            // An unknown field, a value of the wrong type, and a field with quotes of both kinds.
            let cases = [
                (format!(r#"{{"{long}": 1}}"#), true),
                (format!(r#"{{"name": "a", "tags": "{long}"}}"#), true),
                (
                    format!(r#"{{"name": "a", "tags": ["x"], "`\"{long}": 1}}"#),
                    false,
                ),
            ];
            for (json, whole_value_quoted) in cases {
                let err = serde_json::from_str::<Body>(&json).unwrap_err().to_string();
                let shown = echo_in(&err);
                assert!(shown.len() <= 4 * ECHO_MESSAGE_CHARS, "{shown}");
                if whole_value_quoted {
                    assert!(shown.contains(&format!("… ({size} bytes)")), "{shown}");
                }
            }
        }
        let err = serde_json::from_str::<Body>(r#"{"colour": 1}"#).unwrap_err();
        assert_eq!(
            echo_in(&err.to_string()),
            err.to_string(),
            "short: unchanged"
        );
        let err = serde_json::from_str::<Body>(&format!(r#"{{"{}": 1}}"#, "c".repeat(5000)))
            .unwrap_err()
            .to_string();
        assert!(
            echo_in(&err).contains("expected `name` or `tags`"),
            "what follows the value is kept: {}",
            echo_in(&err)
        );

        // Backticks inside the value cannot smuggle it past the bound.
        let tricky = format!("unknown field `a`{}`, expected `name`", "b".repeat(20_000));
        assert!(echo_in(&tricky).chars().count() <= ECHO_MESSAGE_CHARS + 20);
    }

    #[test]
    fn a_status_message_is_cut_at_a_character_boundary() {
        for size in [10_000, 1 << 20] {
            for filler in ["x", "é", "😀"] {
                let err = Error::invalid_request(filler.repeat(size));
                let status = tonic::Status::from(err);
                assert_eq!(status.code(), tonic::Code::InvalidArgument);
                let message = status.message();
                assert!(
                    message.len() <= MAX_STATUS_MESSAGE_BYTES,
                    "{}",
                    message.len()
                );
                assert!(message.starts_with(filler), "{message}");
                assert!(
                    message.ends_with(&format!(" of {} bytes)", filler.len() * size)),
                    "{message}"
                );
            }
        }
        let short = tonic::Status::from(Error::invalid_request("short"));
        assert_eq!(short.message(), "short");
    }

    #[test]
    fn unknown_targets_and_partitions_are_echoed_bounded() {
        let long = "t".repeat(20_000);
        let err = Error::UnknownTarget {
            target: long.clone(),
            available: vec!["parquet".into()],
        };
        let message = err.to_string();
        assert!(message.contains("… (20000 bytes)"), "{message}");
        assert!(message.len() < 200, "{message}");
        let err = Error::AssetNotFound {
            target: "parquet".into(),
            asset: "a".into(),
            partition: Some(long),
        };
        assert!(err.to_string().len() < 200, "{err}");
    }

    #[test]
    fn every_variant_has_a_specific_code() {
        let cases = [
            (Error::invalid_request("x"), tonic::Code::InvalidArgument),
            (
                Error::UnknownTarget {
                    target: "t".into(),
                    available: vec!["parquet".into()],
                },
                tonic::Code::NotFound,
            ),
            (
                Error::UnsupportedMode {
                    target: "csv".into(),
                    mode: "append".into(),
                    supported_by: vec![],
                },
                tonic::Code::FailedPrecondition,
            ),
            (
                Error::ReadConflict {
                    target: "t".into(),
                    asset: "a".into(),
                },
                tonic::Code::Aborted,
            ),
            (
                Error::storage("t", "writing", "disk full"),
                tonic::Code::Unavailable,
            ),
        ];
        for (err, code) in cases {
            assert_eq!(tonic::Status::from(err).code(), code);
        }
    }

    #[test]
    fn messages_name_the_asset_and_what_to_do() {
        let err = Error::UnsupportedMode {
            target: "csv".into(),
            mode: "append".into(),
            supported_by: vec!["duckdb".into()],
        };
        assert_eq!(
            err.to_string(),
            "target 'csv' does not support mode 'append'; targets that support it: duckdb"
        );
        let err = Error::AssetNotFound {
            target: "parquet".into(),
            asset: "a/b".into(),
            partition: Some("2024-01-01".into()),
        };
        assert_eq!(
            err.to_string(),
            "asset 'a/b' not found in target 'parquet' (partition '2024-01-01')"
        );
    }
}
