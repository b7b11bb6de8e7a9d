//! The Delta transaction log as Quiver writes it: one JSON commit per put, created only if
//! absent (object_store's `PutMode::Create`), so a concurrent writer can never be
//! overwritten; and the reads a restarted server needs to tell whether a put committed.

use std::collections::HashMap;
use std::sync::Arc;

use arrow_array::{RecordBatch, StructArray};
use bytes::Bytes;
use delta_kernel::schema::StructType;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use url::Url;

use crate::error::{Error, Result};

/// How many commits by other writers an append steps over before giving up.
const MAX_APPEND_RETRIES: u64 = 100;

/// What a put notes before its commit, for [`super::DeltaTarget::resolve`].
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Mark {
    /// The version the put started from; `None` when it creates the table.
    pub base: Option<u64>,
    pub bytes: u64,
    /// Object paths of the put's data files.
    pub files: Vec<String>,
}

/// A live data file of a snapshot.
pub(crate) struct LiveFile {
    /// As the log names it, relative to the table root.
    pub path: String,
    pub size: i64,
    pub partition_values: HashMap<String, String>,
}

/// A data file a put wrote.
pub(crate) struct AddFile {
    pub path: Path,
    /// Relative to the table root, unescaped.
    pub relative: String,
    pub size: u64,
    /// The `stats` JSON of the add action.
    pub stats: String,
    pub partition_values: Vec<(String, String)>,
}

/// One action of a commit: a line of its JSON file.
#[derive(Debug, Clone)]
pub(crate) struct Action(Value);

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Action {
    pub fn commit_info(operation: &str, put_id: Option<&str>, asset: &str) -> Self {
        let mut info = json!({
            "timestamp": now_ms(),
            "operation": operation,
            "operationParameters": {},
            "engineInfo": concat!("quiver/", env!("CARGO_PKG_VERSION")),
            "quiver": {"asset": asset},
        });
        if let Some(id) = put_id {
            info["quiver"]["putId"] = json!(id);
        }
        Self(json!({ "commitInfo": info }))
    }

    /// The lowest protocol that reads and writes `schema`.
    pub fn protocol(schema: &StructType) -> Self {
        if schema_of(schema).contains("\"timestamp_ntz\"") {
            Self(json!({"protocol": {
                "minReaderVersion": 3,
                "minWriterVersion": 7,
                "readerFeatures": ["timestampNtz"],
                "writerFeatures": ["timestampNtz"],
            }}))
        } else {
            Self(json!({"protocol": {"minReaderVersion": 1, "minWriterVersion": 2}}))
        }
    }

    /// A metaData action: `previous` (the table's current one, when known) with the new schema
    /// and partition columns, so the table id and configuration stay.
    pub fn metadata(previous: Option<Value>, schema_json: &str, partition_by: &[String]) -> Self {
        let mut metadata = previous.unwrap_or_else(|| {
            json!({
                "id": uuid::Uuid::new_v4().to_string(),
                "format": {"provider": "parquet", "options": {}},
                "configuration": {},
                "createdTime": now_ms(),
            })
        });
        metadata["schemaString"] = json!(schema_json);
        metadata["partitionColumns"] = json!(partition_by);
        Self(json!({ "metaData": metadata }))
    }

    pub fn remove(file: &LiveFile) -> Self {
        Self(json!({"remove": {
            "path": file.path,
            "deletionTimestamp": now_ms(),
            "dataChange": true,
            "extendedFileMetadata": true,
            "partitionValues": file.partition_values,
            "size": file.size,
        }}))
    }

    pub fn add(file: &AddFile) -> Self {
        let partition_values: serde_json::Map<String, Value> = file
            .partition_values
            .iter()
            .map(|(c, v)| (c.clone(), json!(v)))
            .collect();
        Self(json!({"add": {
            "path": uri_path(&file.relative),
            "partitionValues": partition_values,
            "size": file.size,
            "modificationTime": now_ms(),
            "dataChange": true,
            "stats": file.stats,
        }}))
    }

    /// Whether the action only adds files or describes the commit: appends on either side of
    /// such commits do not conflict.
    pub fn is_file_or_info(&self) -> bool {
        self.0.get("add").is_some() || self.0.get("commitInfo").is_some()
    }
}

/// The Delta schema JSON of `schema`.
pub(crate) fn schema_of(schema: &StructType) -> String {
    serde_json::to_string(schema).expect("a Delta schema serializes")
}

/// A Hive-style partition directory name part: letters, digits and `-_.` stay, anything
/// else becomes `%XX`.
pub(crate) fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A relative file path as the log holds it: a URI path, so `%` is itself escaped.
fn uri_path(relative: &str) -> String {
    relative.replace('%', "%25")
}

/// The `stats` JSON of an add action from the statistics the kernel collected.
pub(crate) fn stats_json(stats: &StructArray) -> Result<String> {
    let batch = RecordBatch::from(stats.clone());
    let mut out = Vec::new();
    {
        let mut writer = arrow_json::LineDelimitedWriter::new(&mut out);
        let fail = |e: arrow_schema::ArrowError| Error::internal(e.to_string());
        writer.write(&batch).map_err(fail)?;
        writer.finish().map_err(fail)?;
    }
    let text = String::from_utf8(out).map_err(|e| Error::internal(e.to_string()))?;
    Ok(text.trim_end().to_string())
}

fn aborted(message: String) -> Error {
    Error::Remote {
        code: tonic::Code::Aborted,
        message,
    }
}

/// The log of one table.
pub(crate) struct CommitLog {
    target: String,
    store: Arc<dyn ObjectStore>,
    url: Url,
    /// The table root in the store.
    path: Path,
}

impl CommitLog {
    pub fn new(target: &str, store: Arc<dyn ObjectStore>, url: Url, path: Path) -> Self {
        Self {
            target: target.to_string(),
            store,
            url,
            path,
        }
    }

    pub fn url(&self) -> &Url {
        &self.url
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn commit_path(&self, version: u64) -> Path {
        Path::from(format!("{}/_delta_log/{version:020}.json", self.path))
    }

    fn storage(&self, action: String, e: object_store::Error) -> Error {
        Error::storage(&self.target, action, e)
    }

    /// The newest version with a commit or checkpoint, or `None` when there is no table.
    pub async fn latest_version(&self) -> Result<Option<u64>> {
        let prefix = Path::from(format!("{}/_delta_log", self.path));
        let mut entries = self.store.list(Some(&prefix));
        let mut latest = None;
        while let Some(entry) = entries.next().await {
            let entry = entry.map_err(|e| self.storage(format!("listing {prefix}"), e))?;
            let Some(name) = entry.location.filename() else {
                continue;
            };
            let version = name
                .split('.')
                .next()
                .filter(|v| v.len() == 20)
                .and_then(|v| v.parse::<u64>().ok());
            if let Some(v) = version {
                latest = latest.max(Some(v));
            }
        }
        Ok(latest)
    }

    async fn read_commit(&self, version: u64) -> Result<Option<Vec<Value>>> {
        let path = self.commit_path(version);
        let bytes = match self.store.get(&path).await {
            Ok(object) => object
                .bytes()
                .await
                .map_err(|e| self.storage(format!("reading {path}"), e))?,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.storage(format!("reading {path}"), e)),
        };
        let text = String::from_utf8_lossy(&bytes);
        Ok(Some(
            text.lines()
                .filter(|l| !l.trim().is_empty())
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect(),
        ))
    }

    async fn put_if_absent(&self, version: u64, actions: &[Action]) -> Result<bool> {
        let mut body = String::new();
        for action in actions {
            body.push_str(&action.0.to_string());
            body.push('\n');
        }
        let path = self.commit_path(version);
        let options = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match self
            .store
            .put_opts(&path, PutPayload::from(Bytes::from(body)), options)
            .await
        {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(self.storage(format!("writing commit {path}"), e)),
        }
    }

    /// Writes `actions` as commit `version`; another writer's commit at that version aborts.
    pub async fn commit_once(&self, version: u64, actions: &[Action]) -> Result<()> {
        if self.put_if_absent(version, actions).await? {
            return Ok(());
        }
        Err(aborted(format!(
            "another writer committed version {version} of Delta table {} first; retry",
            self.url
        )))
    }

    /// Writes `actions` as commit `version`, or when another writer took it and `blind_append`
    /// holds, as the next free version as long as the commits in between only add files.
    /// Returns the version written.
    pub async fn commit(
        &self,
        version: u64,
        actions: &[Action],
        blind_append: bool,
    ) -> Result<u64> {
        for version in version..=version + MAX_APPEND_RETRIES {
            if self.put_if_absent(version, actions).await? {
                return Ok(version);
            }
            let theirs = self.read_commit(version).await?.unwrap_or_default();
            let only_adds = theirs.iter().all(|a| {
                a.get("add").is_some() || a.get("commitInfo").is_some() || a.get("txn").is_some()
            });
            if !blind_append || !only_adds {
                return Err(aborted(format!(
                    "another writer committed version {version} of Delta table {} while this put \
                     was writing, and its changes overlap this put's; nothing of this put is \
                     visible: retry it",
                    self.url
                )));
            }
        }
        Err(aborted(format!(
            "more than {MAX_APPEND_RETRIES} commits by other writers landed on Delta table {} \
             while this put was writing; retry it",
            self.url
        )))
    }

    /// The table's current metaData action, when a JSON commit still holds it (a table whose
    /// old commits were cleaned up after a checkpoint has it only there: `None`).
    pub async fn latest_metadata(&self, latest: u64) -> Result<Option<Value>> {
        for version in (0..=latest).rev() {
            let Some(actions) = self.read_commit(version).await? else {
                return Ok(None);
            };
            if let Some(m) = actions.iter().find_map(|a| a.get("metaData")) {
                return Ok(Some(m.clone()));
            }
        }
        Ok(None)
    }

    /// The version whose commit names `put_id`, looking after `base`.
    pub async fn find_put(&self, base: Option<u64>, put_id: &str) -> Result<Option<u64>> {
        let mut version = base.map_or(0, |v| v + 1);
        while let Some(actions) = self.read_commit(version).await? {
            let ours = actions.iter().any(|a| {
                a.pointer("/commitInfo/quiver/putId")
                    .and_then(Value::as_str)
                    == Some(put_id)
            });
            if ours {
                return Ok(Some(version));
            }
            version += 1;
        }
        Ok(None)
    }

    /// The paths every JSON commit of the table adds.
    pub async fn added_files(&self) -> Result<std::collections::HashSet<String>> {
        let mut names = std::collections::HashSet::new();
        let Some(latest) = self.latest_version().await? else {
            return Ok(names);
        };
        for version in 0..=latest {
            for action in self.read_commit(version).await?.unwrap_or_default() {
                if let Some(path) = action.pointer("/add/path").and_then(Value::as_str) {
                    names.insert(path.to_string());
                }
            }
        }
        Ok(names)
    }

    /// Deletes data files no commit references; failures are left to a later sweep.
    pub async fn remove_files(&self, paths: &[String]) {
        for path in paths {
            if let Err(e) = self.store.delete(&Path::from(path.as_str())).await
                && !matches!(e, object_store::Error::NotFound { .. })
            {
                tracing::warn!(target = %self.target, %path, error = %e, "removing an uncommitted Delta data file failed");
            }
        }
    }

    /// Deletes every object of the table, its log last so a reader never sees a log that
    /// names missing files... until the log itself goes.
    pub async fn remove_table(&self) -> Result<()> {
        let prefix = self.path.clone();
        let objects: Vec<Path> = self
            .store
            .list(Some(&prefix))
            .map_ok(|m| m.location)
            .try_collect()
            .await
            .map_err(|e| self.storage(format!("listing {prefix}"), e))?;
        let (log, data): (Vec<Path>, Vec<Path>) = objects
            .into_iter()
            .partition(|p| p.as_ref().contains("/_delta_log/"));
        for path in log.iter().chain(data.iter()) {
            match self.store.delete(path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(self.storage(format!("deleting {path}"), e)),
            }
        }
        Ok(())
    }
}
