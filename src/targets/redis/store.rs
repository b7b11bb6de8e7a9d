//! The connection to Redis, how its failures become errors, and the reads and deletes both
//! layouts share: pointers, registries, scans.

use std::collections::HashMap;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, FromRedisValue, Pipeline, RedisError, Value};
use serde::{Deserialize, Serialize};
use tokio::sync::OnceCell;

use super::config::{Layout, RedisConfig, redacted};
use super::keys::{self, COUNTER_FIELD, Keys, Version};
use crate::error::{Error, Result};

/// Keys asked for per SCAN step, and deleted per UNLINK.
const SCAN_COUNT: usize = 1000;
/// Table chunks deleted per round trip when the count is unknown.
const CHUNK_BATCH: usize = 16;

/// A target's connection: one [`ConnectionManager`], made on first use, which reconnects by
/// itself after Redis goes away and comes back.
pub(super) struct Store {
    target: String,
    display: String,
    client: redis::Client,
    settings: ConnectionManagerConfig,
    manager: OnceCell<ConnectionManager>,
}

impl Store {
    pub fn open(target: &str, config: &RedisConfig) -> Result<Self> {
        let client = redis::Client::open(config.url.as_str()).map_err(|e| {
            Error::config(format!(
                "[targets.{target}] url {} is not usable: {e}",
                redacted(&config.url)
            ))
        })?;
        let settings = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(config.timeout_secs)))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(2));
        Ok(Self {
            target: target.to_string(),
            display: redacted(&config.url),
            client,
            settings,
            manager: OnceCell::new(),
        })
    }

    /// The URL without its password.
    pub fn display_url(&self) -> &str {
        &self.display
    }

    pub fn target(&self) -> &str {
        &self.target
    }

    async fn connection(&self) -> Result<ConnectionManager> {
        self.manager
            .get_or_try_init(|| async {
                ConnectionManager::new_lazy_with_config(self.client.clone(), self.settings.clone())
            })
            .await
            .cloned()
            .map_err(|e| self.error("connecting", e))
    }

    /// A failure of Redis or of the way to it, with the (redacted) URL and what to do.
    pub fn error(&self, action: &str, e: RedisError) -> Error {
        let reason = if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() {
            format!(
                "Redis at {} does not answer ({e}); check that it is running and reachable from \
                 this server. The target reconnects by itself once Redis answers, so retry then",
                self.display
            )
        } else {
            format!("Redis at {} refused the request: {e}", self.display)
        };
        Error::storage(&self.target, action, reason)
    }

    pub async fn query<T: FromRedisValue>(&self, action: &str, cmd: &Cmd) -> Result<T> {
        let mut connection = self.connection().await?;
        cmd.query_async(&mut connection)
            .await
            .map_err(|e| self.error(action, e))
    }

    pub async fn pipe<T: FromRedisValue>(&self, action: &str, pipe: &Pipeline) -> Result<T> {
        let mut connection = self.connection().await?;
        pipe.query_async(&mut connection)
            .await
            .map_err(|e| self.error(action, e))
    }

    pub async fn ping(&self) -> Result<()> {
        let answer: String = self.query("checking health", &redis::cmd("PING")).await?;
        if answer != "PONG" {
            return Err(Error::storage(
                &self.target,
                "checking health",
                format!("Redis at {} answered PING with {answer:?}", self.display),
            ));
        }
        Ok(())
    }

    /// What the pointer at `key` holds.
    pub async fn pointer(&self, key: &str) -> Result<PointerState> {
        let mut cmd = redis::cmd("HGETALL");
        cmd.arg(key);
        let mut connection = self.connection().await?;
        let fields: HashMap<String, String> = match cmd.query_async(&mut connection).await {
            Ok(fields) => fields,
            Err(e) if e.code() == Some("WRONGTYPE") => return Ok(PointerState::Foreign),
            Err(e) => return Err(self.error("reading a pointer", e)),
        };
        if fields.is_empty() {
            return Ok(PointerState::Missing);
        }
        Ok(Pointer::from_fields(key, &fields).map_or(PointerState::Foreign, PointerState::Quiver))
    }

    /// One SCAN step over the keys matching `pattern`: the next cursor (0 at the end) and the
    /// keys found. A key can come twice when Redis resizes its table during a scan.
    pub async fn scan(&self, pattern: &str, cursor: u64) -> Result<(u64, Vec<Vec<u8>>)> {
        let mut cmd = redis::cmd("SCAN");
        cmd.arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(SCAN_COUNT);
        self.query("scanning keys", &cmd).await
    }

    /// Removes `keys`; returns how many existed.
    pub async fn unlink<K: redis::ToRedisArgs>(&self, keys: &[K]) -> Result<u64> {
        let mut removed = 0;
        for batch in keys.chunks(SCAN_COUNT) {
            let mut cmd = redis::cmd("UNLINK");
            cmd.arg(batch);
            removed += self.query::<u64>("deleting keys", &cmd).await?;
        }
        Ok(removed)
    }

    /// Removes every key matching `pattern` whose name starts with `prefix`.
    pub async fn unlink_matching(&self, pattern: &str, prefix: &[u8]) -> Result<()> {
        let mut cursor = 0;
        loop {
            let (next, keys) = self.scan(pattern, cursor).await?;
            let keys: Vec<Vec<u8>> = keys.into_iter().filter(|k| k.starts_with(prefix)).collect();
            if !keys.is_empty() {
                self.unlink(&keys).await?;
            }
            if next == 0 {
                return Ok(());
            }
            cursor = next;
        }
    }

    /// Removes every key of `version`: table chunks one after another until one is missing (a
    /// version's chunks are numbered from 0 without gaps), a hash generation's rows by scan.
    pub async fn delete_version(&self, version: &Version) -> Result<()> {
        match version.layout {
            Layout::Table => {
                let mut first = 0;
                loop {
                    let batch: Vec<String> = (first..first + CHUNK_BATCH)
                        .map(|i| version.chunk(i))
                        .collect();
                    if self.unlink(&batch).await? < CHUNK_BATCH as u64 {
                        return Ok(());
                    }
                    first += CHUNK_BATCH;
                }
            }
            Layout::Hash => {
                let prefix = format!("{}:", version.prefix());
                self.unlink_matching(&version.pattern(), prefix.as_bytes())
                    .await
            }
        }
    }

    /// A new version number for the asset.
    pub async fn next_version(&self, keys: &Keys) -> Result<u64> {
        let mut cmd = redis::cmd("HINCRBY");
        cmd.arg(keys.registry()).arg(COUNTER_FIELD).arg(1);
        self.query("numbering a new version", &cmd).await
    }

    /// Notes in the asset's registry that `version` is being written by `put`, before any of
    /// its keys is: whatever a crash leaves of it can then be found and removed.
    pub async fn note_staged(&self, keys: &Keys, version: &Version, put: &str) -> Result<()> {
        let entry = Entry {
            state: State::Staged,
            put: put.to_string(),
            at_ms: now_ms(),
        };
        let mut cmd = redis::cmd("HSET");
        cmd.arg(keys.registry())
            .arg(version.prefix())
            .arg(entry.encode());
        self.query::<()>("staging a new version", &cmd).await
    }

    /// The versions the asset's registry lists, with their state.
    pub async fn registry(&self, keys: &Keys) -> Result<Vec<(Version, Entry)>> {
        let mut cmd = redis::cmd("HGETALL");
        cmd.arg(keys.registry());
        let fields: HashMap<String, String> = self.query("reading the registry", &cmd).await?;
        Ok(fields
            .iter()
            .filter(|(field, _)| field.as_str() != COUNTER_FIELD)
            .filter_map(|(field, value)| Some((Version::parse(field)?, Entry::decode(value)?)))
            .collect())
    }

    /// Removes what `version` wrote, then its registry entry.
    pub async fn discard(&self, keys: &Keys, version: &Version) -> Result<()> {
        self.delete_version(version).await?;
        let mut cmd = redis::cmd("HDEL");
        cmd.arg(keys.registry()).arg(version.prefix());
        self.query::<()>("forgetting a version", &cmd).await
    }

    /// Removes the versions of the asset its registry lists as retired, and the staged ones
    /// at least `min_age` old that no pointer names. Returns the version prefixes removed.
    pub async fn sweep(&self, keys: &Keys, min_age: Duration) -> Result<Vec<String>> {
        let mut removed = Vec::new();
        for (version, entry) in self.registry(keys).await? {
            let stale = match entry.state {
                State::Retired => true,
                State::Staged => entry.age() >= min_age,
            };
            if !stale {
                continue;
            }
            if let PointerState::Quiver(pointer) = self.pointer(&version.pointer).await?
                && pointer.references(&version)
            {
                continue;
            }
            self.discard(keys, &version).await?;
            removed.push(version.prefix());
        }
        Ok(removed)
    }
}

/// What a pointer key holds.
#[derive(Debug)]
pub(super) enum PointerState {
    Missing,
    Quiver(Pointer),
    /// A key of another type, or a hash Quiver did not write.
    Foreign,
}

impl PointerState {
    pub fn quiver(self) -> Option<Pointer> {
        match self {
            Self::Quiver(pointer) => Some(pointer),
            _ => None,
        }
    }
}

/// The pointer hash of an asset or partition: which version readers see.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Pointer {
    pub key: String,
    pub layout: Layout,
    /// The version (table) or generation (hash) number.
    pub number: u64,
    /// Table: the chunk keys, in read order (several versions after appends).
    pub chunks: Vec<String>,
    /// Hash: the key columns.
    pub key_columns: Vec<String>,
    pub rows: u64,
    pub bytes: u64,
    /// The put that wrote the pointer last.
    pub put: String,
}

/// Pointer field names, as applications reading Redis see them.
pub(super) mod field {
    pub const LAYOUT: &str = "layout";
    pub const VERSION: &str = "version";
    pub const GENERATION: &str = "generation";
    pub const CHUNKS: &str = "chunks";
    pub const KEY: &str = "key";
    pub const ROWS: &str = "rows";
    pub const BYTES: &str = "bytes";
    pub const PUT: &str = "put";
    pub const SCHEMA: &str = "schema";
    pub const FORMAT: &str = "format";
}

impl Pointer {
    fn from_fields(key: &str, fields: &HashMap<String, String>) -> Option<Self> {
        let layout = Layout::parse(fields.get(field::LAYOUT)?)?;
        let number_field = match layout {
            Layout::Table => field::VERSION,
            Layout::Hash => field::GENERATION,
        };
        let json_list = |name: &str| -> Option<Vec<String>> {
            match fields.get(name) {
                Some(text) => serde_json::from_str(text).ok(),
                None => Some(Vec::new()),
            }
        };
        Some(Self {
            key: key.to_string(),
            layout,
            number: fields.get(number_field)?.parse().ok()?,
            chunks: json_list(field::CHUNKS)?,
            key_columns: json_list(field::KEY)?,
            rows: fields.get(field::ROWS)?.parse().ok()?,
            bytes: fields.get(field::BYTES)?.parse().ok()?,
            put: fields.get(field::PUT)?.clone(),
        })
    }

    /// The versions whose keys this pointer makes visible.
    pub fn versions(&self) -> Vec<Version> {
        match self.layout {
            Layout::Table => {
                let mut versions: Vec<Version> = Vec::new();
                for chunk in &self.chunks {
                    if let Some(v) = keys::chunk_version(chunk)
                        && !versions.contains(&v)
                    {
                        versions.push(v);
                    }
                }
                versions
            }
            Layout::Hash => vec![self.generation()],
        }
    }

    /// The generation a hash-layout pointer names.
    pub fn generation(&self) -> Version {
        Version {
            pointer: self.key.clone(),
            layout: Layout::Hash,
            number: self.number,
        }
    }

    pub fn references(&self, version: &Version) -> bool {
        self.versions().contains(version)
    }
}

/// A registry entry: a version being written, or one a commit replaced whose keys are still
/// to be removed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Entry {
    pub state: State,
    pub put: String,
    pub at_ms: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum State {
    Staged,
    Retired,
}

impl Entry {
    pub fn retired(put: &str) -> Self {
        Self {
            state: State::Retired,
            put: put.to_string(),
            at_ms: now_ms(),
        }
    }

    pub fn encode(&self) -> String {
        serde_json::to_string(self).expect("an entry serializes")
    }

    fn decode(text: &str) -> Option<Self> {
        serde_json::from_str(text).ok()
    }

    fn age(&self) -> Duration {
        Duration::from_millis(now_ms().saturating_sub(self.at_ms).max(0) as u64)
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Reads `Value::Int` answers, as pipelines of DEL / EXISTS return them.
pub(super) fn ints(values: Vec<Value>) -> u64 {
    values
        .into_iter()
        .map(|v| match v {
            Value::Int(n) => n.max(0) as u64,
            _ => 0,
        })
        .sum()
}
