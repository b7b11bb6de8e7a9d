//! Who is calling, and what they may read and write.
//!
//! Callers authenticate with `authorization` metadata:
//! - `Basic base64(user:password)` for a configured user (passwords are stored as PBKDF2
//!   hashes, see [`hash_password`]); the Flight `Handshake` answers it with a session token, as
//!   pyarrow's `authenticate_basic_token` expects;
//! - `Bearer <token>`: a session token from a handshake (signed by the server, valid for
//!   `session_hours`), or a static API token from the config (stored as its SHA-256).
//!
//! Each principal has `read` and `write` grants: `*` (everything), `target` or
//! `target:*` (one target), or `target:prefix` (assets of one target whose key starts with
//! the prefix). Without credentials a caller gets the `anonymous` access the config allows.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::rand::SecureRandom;
use ring::{digest, hmac, pbkdf2};
use tonic::Status;
use tonic::metadata::MetadataMap;

use crate::asset::AssetKey;
use crate::error::{Error, Result};
use serde::Deserialize;

/// PBKDF2 iterations for new password hashes.
const PBKDF2_ITERATIONS: u32 = 310_000;
const HASH_PREFIX: &str = "pbkdf2-sha256";

/// One permission: everything, one target, or an asset prefix in one target.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Grant {
    All,
    Target(String),
    Prefix { target: String, prefix: String },
}

impl Grant {
    fn parse(text: &str) -> Result<Self, String> {
        if text == "*" {
            return Ok(Self::All);
        }
        let (target, prefix) = text.split_once(':').unwrap_or((text, "*"));
        if target.is_empty() || target == "*" {
            return Err(format!(
                "grant {text:?} names no target; write \"*\", \"target\", \"target:*\" or \"target:asset/prefix\""
            ));
        }
        Ok(match prefix {
            "" | "*" => Self::Target(target.to_string()),
            prefix => Self::Prefix {
                target: target.to_string(),
                prefix: prefix.trim_end_matches('*').to_string(),
            },
        })
    }

    fn allows(&self, target: &str, asset: &str) -> bool {
        match self {
            Self::All => true,
            Self::Target(t) => t == target,
            Self::Prefix { target: t, prefix } => t == target && asset.starts_with(prefix.as_str()),
        }
    }
}

/// An authenticated caller (or the anonymous one).
#[derive(Debug, Clone)]
pub struct Principal {
    pub name: String,
    read: Vec<Grant>,
    write: Vec<Grant>,
}

/// What a call needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

impl Principal {
    fn from_grants(name: &str, read: &[String], write: &[String]) -> Result<Self, String> {
        let parse = |list: &[String]| {
            list.iter()
                .map(|g| Grant::parse(g))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(Self {
            name: name.to_string(),
            read: parse(read)?,
            write: parse(write)?,
        })
    }

    /// Full access: the server has no authentication configured.
    pub fn open() -> Self {
        Self {
            name: "anonymous".to_string(),
            read: vec![Grant::All],
            write: vec![Grant::All],
        }
    }

    /// Whether this caller may read (or write) `asset` in `target`. Write implies read.
    pub fn may(&self, access: Access, target: &str, asset: &AssetKey) -> bool {
        let asset = asset.to_string();
        let writes = self.write.iter().any(|g| g.allows(target, &asset));
        match access {
            Access::Write => writes,
            Access::Read => writes || self.read.iter().any(|g| g.allows(target, &asset)),
        }
    }

    /// Refuses with `PERMISSION_DENIED` unless allowed.
    pub fn check(&self, access: Access, target: &str, asset: &AssetKey) -> Result<()> {
        if self.may(access, target, asset) {
            return Ok(());
        }
        let verb = match access {
            Access::Read => "read",
            Access::Write => "write",
        };
        Err(Error::PermissionDenied {
            message: format!(
                "'{}' may not {verb} asset '{asset}' in target '{target}'; ask for a grant such as \"{target}:{asset}\"",
                self.name
            ),
        })
    }
}

struct User {
    hash: PasswordHash,
    principal: Arc<Principal>,
}

/// Checks credentials; built once from the config.
pub struct Authenticator {
    users: HashMap<String, User>,
    /// SHA-256 of each static token.
    tokens: HashMap<[u8; 32], Arc<Principal>>,
    anonymous: Option<Arc<Principal>>,
    session_key: hmac::Key,
    session_lifetime: Duration,
}

/// Credentials are secrets: only the names show.
impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("users", &self.users.keys().collect::<Vec<_>>())
            .field("tokens", &self.tokens.len())
            .field("anonymous", &self.anonymous.is_some())
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// `None` configures an open server (every caller may do everything).
    pub fn from_config(config: Option<&AuthConfig>) -> Result<Self> {
        let rng = ring::rand::SystemRandom::new();
        let Some(config) = config else {
            let mut secret = [0u8; 32];
            rng.fill(&mut secret)
                .map_err(|_| Error::internal("no system randomness"))?;
            return Ok(Self {
                users: HashMap::new(),
                tokens: HashMap::new(),
                anonymous: Some(Arc::new(Principal::open())),
                session_key: hmac::Key::new(hmac::HMAC_SHA256, &secret),
                session_lifetime: Duration::from_secs(3600),
            });
        };
        let fail = |e: String| Error::config(format!("[auth] {e}"));
        let mut users = HashMap::new();
        for user in &config.users {
            let principal = Principal::from_grants(&user.name, &user.read, &user.write)
                .map_err(|e| fail(format!("user '{}': {e}", user.name)))?;
            let hash = PasswordHash::parse(&user.password_hash)
                .map_err(|e| fail(format!("user '{}': {e}", user.name)))?;
            if users
                .insert(
                    user.name.clone(),
                    User {
                        hash,
                        principal: Arc::new(principal),
                    },
                )
                .is_some()
            {
                return Err(fail(format!("user '{}' is configured twice", user.name)));
            }
        }
        let mut tokens = HashMap::new();
        for token in &config.tokens {
            let principal = Principal::from_grants(&token.name, &token.read, &token.write)
                .map_err(|e| fail(format!("token '{}': {e}", token.name)))?;
            let digest = decode_hex32(&token.token_sha256).map_err(|e| {
                fail(format!(
                    "token '{}': token_sha256 {e}; use `quiver hash-token`",
                    token.name
                ))
            })?;
            tokens.insert(digest, Arc::new(principal));
        }
        let anonymous = match config.anonymous {
            AnonymousAccess::None => None,
            AnonymousAccess::Read => Some(Principal {
                name: "anonymous".into(),
                read: vec![Grant::All],
                write: Vec::new(),
            }),
            AnonymousAccess::Write => Some(Principal::open()),
        }
        .map(Arc::new);
        let secret = match &config.session_secret {
            Some(hex) => hex_decode(hex)
                .filter(|b| b.len() >= 32)
                .ok_or_else(|| fail("session_secret must be at least 64 hex digits".into()))?,
            None => {
                let mut secret = vec![0u8; 32];
                rng.fill(&mut secret)
                    .map_err(|_| Error::internal("no system randomness"))?;
                secret
            }
        };
        Ok(Self {
            users,
            tokens,
            anonymous,
            session_key: hmac::Key::new(hmac::HMAC_SHA256, &secret),
            session_lifetime: Duration::from_secs(config.session_hours.max(1) * 3600),
        })
    }

    /// Whether callers must identify themselves.
    pub fn is_open(&self) -> bool {
        self.users.is_empty() && self.tokens.is_empty()
    }

    /// The caller of a request, from its `authorization` metadata.
    pub fn authenticate(&self, metadata: &MetadataMap) -> Result<Arc<Principal>, Status> {
        let Some(value) = metadata.get("authorization") else {
            return self.anonymous.clone().ok_or_else(|| {
                Status::unauthenticated(
                    "this server requires credentials: send `authorization: Bearer <token>`, or \
                     handshake with a user and password (pyarrow: client.authenticate_basic_token)",
                )
            });
        };
        let value = value
            .to_str()
            .map_err(|_| Status::unauthenticated("the authorization header is not ASCII"))?;
        if let Some(basic) = strip_scheme(value, "basic") {
            return self.basic(basic);
        }
        if let Some(token) = strip_scheme(value, "bearer") {
            return self.bearer(token);
        }
        Err(Status::unauthenticated(
            "the authorization header must be `Basic …` or `Bearer …`",
        ))
    }

    fn basic(&self, encoded: &str) -> Result<Arc<Principal>, Status> {
        let refused = || Status::unauthenticated("unknown user or wrong password");
        let decoded = STANDARD
            .decode(encoded.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| {
                Status::unauthenticated("Basic credentials are not base64 user:password")
            })?;
        let (name, password) = decoded
            .split_once(':')
            .ok_or_else(|| Status::unauthenticated("Basic credentials are not user:password"))?;
        let user = self.users.get(name).ok_or_else(refused)?;
        if !user.hash.verify(password) {
            tracing::warn!(user = name, "refused a wrong password");
            return Err(refused());
        }
        Ok(Arc::clone(&user.principal))
    }

    fn bearer(&self, token: &str) -> Result<Arc<Principal>, Status> {
        let token = token.trim();
        let digest = digest::digest(&digest::SHA256, token.as_bytes());
        let digest: [u8; 32] = digest.as_ref().try_into().expect("32 bytes");
        if let Some(principal) = self.tokens.get(&digest) {
            return Ok(Arc::clone(principal));
        }
        self.session(token)
    }

    /// A session token for a principal that authenticated with a password.
    pub fn issue_session(&self, principal: &Principal) -> String {
        let expires = SystemTime::now()
            .checked_add(self.session_lifetime)
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        let body = URL_SAFE_NO_PAD.encode(format!("{expires}:{}", principal.name));
        let tag = hmac::sign(&self.session_key, body.as_bytes());
        format!("qs.{body}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
    }

    fn session(&self, token: &str) -> Result<Arc<Principal>, Status> {
        let refused = || Status::unauthenticated("unknown or expired token; handshake again");
        let rest = token.strip_prefix("qs.").ok_or_else(refused)?;
        let (body, tag) = rest.split_once('.').ok_or_else(refused)?;
        let tag = URL_SAFE_NO_PAD.decode(tag).map_err(|_| refused())?;
        hmac::verify(&self.session_key, body.as_bytes(), &tag).map_err(|_| refused())?;
        let body = URL_SAFE_NO_PAD
            .decode(body)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(refused)?;
        let (expires, name) = body.split_once(':').ok_or_else(refused)?;
        let expires: u64 = expires.parse().map_err(|_| refused())?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if now >= expires {
            return Err(refused());
        }
        // Grants come from the current configuration, not from the token.
        self.users
            .get(name)
            .map(|u| Arc::clone(&u.principal))
            .ok_or_else(refused)
    }
}

fn strip_scheme<'a>(value: &'a str, scheme: &str) -> Option<&'a str> {
    let (given, rest) = value.split_once(' ')?;
    given.eq_ignore_ascii_case(scheme).then_some(rest)
}

/// `pbkdf2-sha256$<iterations>$<salt>$<hash>` (salt and hash in unpadded base64).
struct PasswordHash {
    iterations: NonZeroU32,
    salt: Vec<u8>,
    hash: Vec<u8>,
}

impl PasswordHash {
    fn parse(text: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "password_hash is not a {HASH_PREFIX}$… string; create one with `quiver hash-password`"
            )
        };
        let mut parts = text.split('$');
        if parts.next() != Some(HASH_PREFIX) {
            return Err(bad());
        }
        let iterations = parts
            .next()
            .and_then(|i| i.parse::<u32>().ok())
            .and_then(NonZeroU32::new)
            .ok_or_else(bad)?;
        let mut field = || {
            parts
                .next()
                .and_then(|p| URL_SAFE_NO_PAD.decode(p).ok())
                .ok_or_else(bad)
        };
        let salt = field()?;
        let hash = field()?;
        Ok(Self {
            iterations,
            salt,
            hash,
        })
    }

    fn verify(&self, password: &str) -> bool {
        pbkdf2::verify(
            pbkdf2::PBKDF2_HMAC_SHA256,
            self.iterations,
            &self.salt,
            password.as_bytes(),
            &self.hash,
        )
        .is_ok()
    }
}

/// A new `password_hash` value for the config.
pub fn hash_password(password: &str) -> Result<String> {
    let mut salt = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut salt)
        .map_err(|_| Error::internal("no system randomness"))?;
    let iterations = NonZeroU32::new(PBKDF2_ITERATIONS).expect("non-zero");
    let mut hash = [0u8; 32];
    pbkdf2::derive(
        pbkdf2::PBKDF2_HMAC_SHA256,
        iterations,
        &salt,
        password.as_bytes(),
        &mut hash,
    );
    Ok(format!(
        "{HASH_PREFIX}${PBKDF2_ITERATIONS}${}${}",
        URL_SAFE_NO_PAD.encode(salt),
        URL_SAFE_NO_PAD.encode(hash)
    ))
}

/// A new random API token and the `token_sha256` value for the config.
pub fn new_token() -> Result<(String, String)> {
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| Error::internal("no system randomness"))?;
    let token = format!("qt_{}", URL_SAFE_NO_PAD.encode(bytes));
    let digest = token_sha256(&token);
    Ok((token, digest))
}

/// The `token_sha256` value of a token.
pub fn token_sha256(token: &str) -> String {
    digest::digest(&digest::SHA256, token.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn hex_decode(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

fn decode_hex32(text: &str) -> Result<[u8; 32], String> {
    hex_decode(text)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| "must be 64 hex digits".to_string())
}

/// What callers without credentials may do.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AnonymousAccess {
    /// Every call needs credentials.
    #[default]
    None,
    /// Anonymous callers may read every asset.
    Read,
    /// Anonymous callers may read and write every asset.
    Write,
}

/// Users, API tokens and their grants.
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    #[serde(default)]
    pub anonymous: AnonymousAccess,
    #[serde(default)]
    pub users: Vec<UserConfig>,
    #[serde(default)]
    pub tokens: Vec<TokenConfig>,
    /// Hex key (at least 64 digits) signing session tokens; random per process when absent.
    /// Replicas behind one address must share it.
    pub session_secret: Option<String>,
    /// How long a session token from a handshake is valid.
    #[serde(default = "default_session_hours")]
    pub session_hours: u64,
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthConfig")
            .field("anonymous", &self.anonymous)
            .field(
                "users",
                &self.users.iter().map(|u| &u.name).collect::<Vec<_>>(),
            )
            .field(
                "tokens",
                &self.tokens.iter().map(|t| &t.name).collect::<Vec<_>>(),
            )
            .field("session_hours", &self.session_hours)
            .finish_non_exhaustive()
    }
}

fn default_session_hours() -> u64 {
    12
}

/// A user who authenticates with a password (Flight handshake or Basic credentials).
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub name: String,
    /// From `quiver hash-password`.
    pub password_hash: String,
    /// Grants: `*`, `target`, `target:*` or `target:asset/prefix`.
    #[serde(default)]
    pub read: Vec<String>,
    /// Grants to write (writing implies reading).
    #[serde(default)]
    pub write: Vec<String>,
}

/// A static API token, sent as `authorization: Bearer <token>`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    pub name: String,
    /// SHA-256 of the token in hex, from `quiver hash-token`.
    pub token_sha256: String,
    #[serde(default)]
    pub read: Vec<String>,
    #[serde(default)]
    pub write: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> AssetKey {
        AssetKey::parse(s).unwrap()
    }

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn grants_match_targets_and_prefixes() {
        let p = Principal::from_grants("etl", &strings(&["lake"]), &strings(&["warehouse:sales/"]))
            .unwrap();
        assert!(p.may(Access::Read, "lake", &key("any/thing")));
        assert!(!p.may(Access::Write, "lake", &key("any/thing")));
        assert!(p.may(Access::Write, "warehouse", &key("sales/daily")));
        assert!(p.may(Access::Read, "warehouse", &key("sales/daily")));
        assert!(!p.may(Access::Read, "warehouse", &key("hr/pay")));
        let err = p
            .check(Access::Write, "lake", &key("x"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("'etl' may not write asset 'x' in target 'lake'"),
            "{err}"
        );
        assert!(Grant::parse(":x").is_err());
    }

    #[test]
    fn passwords_tokens_and_sessions() {
        let (token, digest) = new_token().unwrap();
        let config = AuthConfig {
            anonymous: AnonymousAccess::None,
            users: vec![UserConfig {
                name: "ana".into(),
                password_hash: hash_password("s3cret").unwrap(),
                read: strings(&["*"]),
                write: Vec::new(),
            }],
            tokens: vec![TokenConfig {
                name: "ci".into(),
                token_sha256: digest,
                read: Vec::new(),
                write: strings(&["*"]),
            }],
            session_secret: None,
            session_hours: 1,
        };
        let auth = Authenticator::from_config(Some(&config)).unwrap();
        let headers = |value: &str| {
            let mut m = MetadataMap::new();
            m.insert("authorization", value.parse().unwrap());
            m
        };
        let basic = |user: &str, pw: &str| {
            headers(&format!(
                "Basic {}",
                STANDARD.encode(format!("{user}:{pw}"))
            ))
        };
        let ana = auth.authenticate(&basic("ana", "s3cret")).unwrap();
        assert_eq!(ana.name, "ana");
        assert!(auth.authenticate(&basic("ana", "wrong")).is_err());
        assert!(auth.authenticate(&basic("bob", "s3cret")).is_err());
        let session = auth.issue_session(&ana);
        let again = auth
            .authenticate(&headers(&format!("Bearer {session}")))
            .unwrap();
        assert_eq!(again.name, "ana");
        let forged = session.replace("qs.", "qs.x");
        assert!(
            auth.authenticate(&headers(&format!("Bearer {forged}")))
                .is_err()
        );
        let ci = auth
            .authenticate(&headers(&format!("Bearer {token}")))
            .unwrap();
        assert!(ci.may(Access::Write, "lake", &key("a")));
        let missing = auth.authenticate(&MetadataMap::new()).unwrap_err();
        assert_eq!(missing.code(), tonic::Code::Unauthenticated);
    }
}
