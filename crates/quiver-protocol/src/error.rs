//! Quiver's error type and its mapping to gRPC status codes.
//!
//! Every variant carries what the person at the client needs: which asset, which target, and
//! what to do about it. [`From<Error> for tonic::Status`] maps each variant to one gRPC code;
//! nothing is reported as a blanket `INTERNAL` unless it really is a server bug.

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
    #[error("unknown target '{target}'; configured targets: {}", .available.join(", "))]
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
        "target '{target}' does not support mode '{mode}'; {}",
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

    /// An error a server reported to the client commands.
    #[error("{message} ({code:?})")]
    Remote { code: tonic::Code, message: String },
}

fn partition_suffix(partition: &Option<String>) -> String {
    match partition {
        Some(p) => format!(" (partition '{p}')"),
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
            Self::Remote { code, .. } => *code,
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(err: Error) -> Self {
        tonic::Status::new(err.code(), err.to_string())
    }
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
