//! PostgreSQL connections, for the PostgreSQL catalog and target: the URL, `sslmode` as libpq
//! reads it, and TLS through rustls.
//!
//! tokio-postgres itself knows `disable`, `prefer` and `require`; the verifying modes are
//! implemented here with rustls: `verify-ca` checks the chain against the CA file,
//! `verify-full` also checks that the certificate names the host. `prefer` and `require`
//! encrypt without checking the certificate, as libpq does without a root certificate.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::config::SslMode as WireSslMode;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};

/// How long connecting (TCP, TLS and authentication) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long establishing a pooled connection may take in all.
const CREATE_TIMEOUT: Duration = Duration::from_secs(15);

/// libpq's `sslmode` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Result<Self, String> {
        Ok(match value {
            "disable" => Self::Disable,
            "allow" | "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            other => {
                return Err(format!(
                    "sslmode '{other}' is unknown; use disable, prefer, require, verify-ca or verify-full"
                ));
            }
        })
    }
}

/// Everything needed to open connections, parsed from a target's settings.
pub struct Settings {
    pub config: tokio_postgres::Config,
    pub ssl_mode: SslMode,
    pub ca_file: Option<PathBuf>,
    /// `postgres://host:port/database`, without credentials, for display.
    pub display: String,
}

/// A connection pool for `url`; nothing connects until first use. Returns the pool and the
/// URL without credentials, for display.
pub fn pool(url: &str, ca_file: Option<&Path>, size: usize) -> Result<(Pool, String), String> {
    let settings = settings(url, ca_file)?;
    let manager = Manager::from_config(
        settings.config.clone(),
        tls(&settings)?,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let pool = Pool::builder(manager)
        .max_size(size)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .create_timeout(Some(CREATE_TIMEOUT))
        .build()
        .map_err(|e| format!("cannot build the connection pool: {e}"))?;
    Ok((pool, settings.display))
}

/// Parses the URL and TLS options. Errors never echo the URL, which may hold a password.
pub fn settings(url: &str, ca_file: Option<&Path>) -> Result<Settings, String> {
    let mut url = url::Url::parse(url).map_err(|e| {
        format!("url is not a valid postgres:// URL ({e}); write postgres://user:password@host:port/database")
    })?;
    if !matches!(url.scheme(), "postgres" | "postgresql") {
        return Err(format!(
            "url has scheme '{}'; write postgres://user:password@host:port/database",
            url.scheme()
        ));
    }
    let mut ssl_mode = SslMode::Prefer;
    let mut ca_file = ca_file.map(Path::to_path_buf);
    let mut rest = Vec::new();
    for (key, value) in url.query_pairs() {
        match key.as_ref() {
            "sslmode" => ssl_mode = SslMode::parse(&value)?,
            "sslrootcert" if ca_file.is_none() => ca_file = Some(PathBuf::from(value.as_ref())),
            "sslrootcert" => {}
            _ => rest.push((key.into_owned(), value.into_owned())),
        }
    }
    if rest.is_empty() {
        url.set_query(None);
    } else {
        url.query_pairs_mut().clear().extend_pairs(rest);
    }
    let mut pg: tokio_postgres::Config = url
        .as_str()
        .parse()
        .map_err(|e| format!("url is not understood by the PostgreSQL driver: {e}"))?;
    pg.ssl_mode(match ssl_mode {
        SslMode::Disable => WireSslMode::Disable,
        SslMode::Prefer => WireSslMode::Prefer,
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => WireSslMode::Require,
    });
    if pg.get_connect_timeout().is_none() {
        pg.connect_timeout(CONNECT_TIMEOUT);
    }
    pg.application_name("quiver");
    if matches!(ssl_mode, SslMode::VerifyCa | SslMode::VerifyFull) && ca_file.is_none() {
        return Err(
            "sslmode verify-ca and verify-full need the CA certificate: set ca_file (or \
             sslrootcert in the url)"
                .to_string(),
        );
    }
    let host = url.host_str().unwrap_or("localhost");
    let port = url.port().unwrap_or(5432);
    let database = url.path().trim_start_matches('/');
    Ok(Settings {
        config: pg,
        ssl_mode,
        ca_file,
        display: format!("postgres://{host}:{port}/{database}"),
    })
}

/// The TLS connector for these settings.
pub fn tls(settings: &Settings) -> Result<tokio_postgres_rustls::MakeRustlsConnect, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))?;
    let config = match (settings.ssl_mode, &settings.ca_file) {
        (SslMode::VerifyFull, Some(file)) => builder
            .with_root_certificates(roots(file)?)
            .with_no_client_auth(),
        (SslMode::VerifyCa, Some(file)) => {
            let verifier = WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots(file)?),
                Arc::clone(&provider),
            )
            .build()
            .map_err(|e| format!("TLS setup failed: {e}"))?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ChainOnly(verifier)))
                .with_no_client_auth()
        }
        _ => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(EncryptOnly(provider)))
            .with_no_client_auth(),
    };
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

fn roots(file: &Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(file)
        .map_err(|e| format!("cannot read CA file {}: {e}", file.display()))?;
    for cert in certs {
        let cert = cert.map_err(|e| format!("CA file {}: {e}", file.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("CA file {}: {e}", file.display()))?;
    }
    if roots.is_empty() {
        return Err(format!(
            "CA file {} holds no PEM certificates",
            file.display()
        ));
    }
    Ok(roots)
}

/// `verify-ca`: the chain must lead to a trusted CA; the host name is not checked.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `prefer` / `require`: encrypt, accept any certificate (libpq's behaviour without a root
/// certificate). The handshake signatures are still checked.
#[derive(Debug)]
struct EncryptOnly(Arc<CryptoProvider>);

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> Result<Settings, String> {
        settings(url, None)
    }

    #[test]
    fn reads_sslmode_like_libpq() {
        let s = parse("postgres://u:secret@db.example:6543/warehouse?sslmode=require").unwrap();
        assert_eq!(s.ssl_mode, SslMode::Require);
        assert_eq!(s.display, "postgres://db.example:6543/warehouse");
        assert_eq!(s.config.get_dbname(), Some("warehouse"));
        let s = parse("postgres://u@h/db?sslmode=verify-full&sslrootcert=/ca.pem").unwrap();
        assert_eq!(s.ssl_mode, SslMode::VerifyFull);
        assert_eq!(s.ca_file.as_deref(), Some(Path::new("/ca.pem")));
    }

    #[test]
    fn refuses_what_cannot_work_without_echoing_secrets() {
        let err = parse("postgres://u:hunter2@h/db?sslmode=verify-full")
            .err()
            .unwrap();
        assert!(err.contains("ca_file"), "{err}");
        let err = parse("mysql://u:hunter2@h/db").err().unwrap();
        assert!(!err.contains("hunter2"), "{err}");
        let err = parse("postgres://u:hunter2@h/db?sslmode=sometimes")
            .err()
            .unwrap();
        assert!(
            err.contains("sometimes") && !err.contains("hunter2"),
            "{err}"
        );
    }
}
