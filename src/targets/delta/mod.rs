//! Delta Lake tables on local disk or object storage, readable by every Delta engine.
//!
//! Asset `a/b` is the table at `<root>/a/b/`. A put streams its batches into Parquet data
//! files (rolled at `target_file_size`), then makes them visible with ONE commit:
//! `_delta_log/<version>.json`, written only if absent, so no other writer's commit is ever
//! overwritten. The commit's `commitInfo` carries the put id, which is how a restarted server
//! tells whether a put's commit landed. Reads replay the log with `delta_kernel`.

mod config;
mod log;
mod types;

use std::collections::HashMap;
use std::sync::Arc;

use arrow_array::{Array, ArrayRef, RecordBatch, StringArray};
use arrow_schema::{DataType, SchemaRef};
use async_trait::async_trait;
use delta_kernel::engine::arrow_conversion::TryFromArrow;
use delta_kernel::engine::arrow_data::ArrowEngineData;
use delta_kernel::schema::StructType;
use delta_kernel::{Engine, Snapshot, SnapshotRef};
use delta_kernel_default_engine::DefaultEngineBuilder;
use delta_kernel_default_engine::executor::tokio::TokioMultiThreadExecutor;
use delta_kernel_default_engine::stats::FileStatsAccumulator;
use futures::TryStreamExt;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::AsyncArrowWriter;
use parquet::file::properties::WriterProperties;
use url::Url;

pub use config::{Delta, DeltaConfig};

use crate::asset::{AssetKey, Partition};
use crate::catalog::PendingPut;
use crate::error::{Error, Result};
use crate::protocol::Mode;
use crate::targets::util::{Sender, async_stream_batches};
use crate::targets::{
    AssetWriter, DeleteRequest, ReadRequest, SchemaPolicy, SendableBatchStream, Target,
    WriteRequest, WriteSummary,
};
use log::{Action, AddFile, CommitLog, LiveFile};

/// How Quiver's data files end (`part-<n>-<put id>-quiver.parquet`): the start-up sweep
/// removes only files so named, never another engine's.
const DATA_FILE_SUFFIX: &str = "-quiver.parquet";

/// Columns with statistics in each add action, as Delta's `dataSkippingNumIndexedCols`.
const STATS_COLUMNS: usize = 32;

pub struct DeltaTarget {
    name: String,
    /// The store at its top (bucket or file system): the kernel resolves table URLs in it.
    store: Arc<dyn ObjectStore>,
    /// The root, ending in `/`.
    root: Url,
    engine: Arc<dyn Engine>,
    properties: WriterProperties,
    target_file_size: u64,
    checkpoint_interval: u64,
}

impl DeltaTarget {
    pub fn new(name: &str, config: &DeltaConfig) -> Result<Self> {
        let root = config.root.as_deref().ok_or_else(|| {
            Error::config(format!(
                "[targets.{name}] has no root; set root = \"<dir or URL>\""
            ))
        })?;
        let (store, root): (Arc<dyn ObjectStore>, Url) =
            if root.contains("://") && !root.starts_with("file://") {
                let (store, _prefix) =
                    crate::targets::file::open_url_store(name, root, &config.storage)?;
                let mut url = Url::parse(root)
                    .map_err(|e| Error::config(format!("[targets.{name}] root {root:?}: {e}")))?;
                if !url.path().ends_with('/') {
                    url.set_path(&format!("{}/", url.path()));
                }
                (Arc::from(store), url)
            } else {
                let dir = std::path::PathBuf::from(root.strip_prefix("file://").unwrap_or(root));
                std::fs::create_dir_all(&dir).map_err(|e| {
                    Error::config(format!(
                        "[targets.{name}] cannot create root directory {}: {e}",
                        dir.display()
                    ))
                })?;
                let dir = dir.canonicalize().map_err(|e| {
                    Error::config(format!("[targets.{name}] root {}: {e}", dir.display()))
                })?;
                let url = Url::from_directory_path(&dir).map_err(|()| {
                    Error::config(format!(
                        "[targets.{name}] root {} is not absolute",
                        dir.display()
                    ))
                })?;
                (Arc::new(LocalFileSystem::new()), url)
            };
        // The kernel blocks on its I/O: on the server's runtime when there is a
        // multi-threaded one (checkpoints need it), else on a thread of its own.
        let engine: Arc<dyn Engine> = match tokio::runtime::Handle::try_current() {
            Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                Arc::new(
                    DefaultEngineBuilder::new(Arc::clone(&store))
                        .with_task_executor(Arc::new(TokioMultiThreadExecutor::new(handle)))
                        .build(),
                )
            }
            _ => Arc::new(DefaultEngineBuilder::new(Arc::clone(&store)).build()),
        };
        Ok(Self {
            name: name.to_string(),
            store,
            root,
            engine,
            properties: config.writer_properties().map_err(Error::config)?,
            target_file_size: config.target_file_size,
            checkpoint_interval: config.checkpoint_interval,
        })
    }

    /// The table's URL, ending in `/`.
    fn table_url(&self, asset: &AssetKey) -> Url {
        let mut url = self.root.clone();
        {
            let mut segments = url.path_segments_mut().expect("a root URL has a path");
            segments.pop_if_empty();
            segments.extend(asset.segments());
            segments.push("");
        }
        url
    }

    fn table(&self, asset: &AssetKey) -> Result<CommitLog> {
        let url = self.table_url(asset);
        let path = Path::from_url_path(url.path())
            .map_err(|e| Error::internal(format!("table path of {url}: {e}")))?;
        Ok(CommitLog::new(
            &self.name,
            Arc::clone(&self.store),
            url,
            path,
        ))
    }

    /// The table's latest snapshot, or `None` when no table exists yet.
    async fn snapshot(&self, log: &CommitLog) -> Result<Option<SnapshotRef>> {
        if log.latest_version().await?.is_none() {
            return Ok(None);
        }
        let engine = Arc::clone(&self.engine);
        let url = log.url().clone();
        let target = self.name.clone();
        tokio::task::spawn_blocking(move || {
            Snapshot::builder_for(url.as_str())
                .build(engine.as_ref())
                .map(Some)
                .map_err(|e| Error::format(&target, format!("reading the Delta log of {url}"), e))
        })
        .await?
    }
}

/// Writes a checkpoint of `version` when the interval says so; a failure only delays the
/// next reader.
async fn checkpoint(engine: Arc<dyn Engine>, url: Url, version: u64, interval: u64, target: &str) {
    if interval == 0 || version == 0 || !version.is_multiple_of(interval) {
        return;
    }
    let done = tokio::task::spawn_blocking(move || {
        let snapshot = Snapshot::builder_for(url.as_str())
            .at_version(version)
            .build(engine.as_ref())?;
        snapshot.checkpoint(engine.as_ref(), None).map(|_| ())
    })
    .await;
    let error = match done {
        Ok(Ok(())) => return,
        Ok(Err(e)) => e.to_string(),
        Err(e) => e.to_string(),
    };
    tracing::warn!(target = %target, version, %error, "writing a Delta checkpoint failed");
}

impl DeltaTarget {
    /// The scheme and bucket of object paths, for messages.
    fn store_url_base(&self) -> String {
        let mut base = self.root.clone();
        base.set_path("/");
        base.to_string()
    }

    /// The relative paths (as stored) of every data file a JSON commit of `table` adds, and
    /// of every live file (a table whose early commits were cleaned up has them only in its
    /// checkpoint).
    async fn referenced_files(&self, table: &str) -> Result<std::collections::HashSet<String>> {
        let mut url = self.root.clone();
        url.set_path(&format!("/{table}/"));
        let log = CommitLog::new(&self.name, Arc::clone(&self.store), url, Path::from(table));
        let mut names = log.added_files().await?;
        if let Some(snapshot) = self.snapshot(&log).await? {
            for file in live_files(Arc::clone(&self.engine), snapshot, &self.name).await? {
                names.insert(file.path);
            }
        }
        Ok(names.into_iter().map(|n| n.replace("%25", "%")).collect())
    }
}

/// The live data files of a snapshot.
async fn live_files(
    engine: Arc<dyn Engine>,
    snapshot: SnapshotRef,
    target: &str,
) -> Result<Vec<LiveFile>> {
    let target = target.to_string();
    tokio::task::spawn_blocking(move || {
        let fail = |e: delta_kernel::KernelError| {
            Error::format(&target, "listing the live files of a Delta table", e)
        };
        let scan = snapshot.scan_builder().build().map_err(fail)?;
        let mut files = Vec::new();
        for metadata in scan.scan_metadata(engine.as_ref()).map_err(fail)? {
            files = metadata
                .map_err(fail)?
                .visit_scan_files(files, |files: &mut Vec<LiveFile>, file| {
                    files.push(LiveFile {
                        path: file.path,
                        size: file.size,
                        partition_values: file.partition_values,
                    })
                })
                .map_err(fail)?;
        }
        Ok(files)
    })
    .await?
}

/// The partition columns of an existing table.
async fn partition_columns(
    engine: Arc<dyn Engine>,
    snapshot: SnapshotRef,
    target: &str,
) -> Result<Vec<String>> {
    let target = target.to_string();
    tokio::task::spawn_blocking(move || {
        let txn = snapshot
            .update_table(
                delta_kernel::transaction::UpdateTableOperation::Write,
                "quiver",
                true,
            )
            .build(
                engine.as_ref(),
                Box::new(delta_kernel::committer::FileSystemCommitter::new()),
            )
            .map_err(|e| Error::format(&target, "reading a Delta table's metadata", e))?;
        Ok(txn.logical_partition_columns().to_vec())
    })
    .await?
}

#[async_trait]
impl Target for DeltaTarget {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "delta"
    }

    fn modes(&self) -> &'static [Mode] {
        &[Mode::Overwrite, Mode::Append]
    }

    fn location(&self, asset: &AssetKey, partition: Option<&Partition>) -> String {
        crate::targets::partition_location(
            self.table_url(asset)
                .as_str()
                .trim_end_matches('/')
                .to_string(),
            partition,
        )
    }

    fn schema_policy(&self) -> SchemaPolicy {
        SchemaPolicy::Evolve
    }

    fn storage_id(&self, asset: &AssetKey) -> String {
        self.table_url(asset).to_string()
    }

    async fn begin(&self, req: &WriteRequest, schema: SchemaRef) -> Result<Box<dyn AssetWriter>> {
        crate::targets::util::refuse_options("delta", &req.options, &[])?;
        let cannot = |reason: String| {
            Error::invalid_data(format!(
                "target '{}' (delta) cannot store asset '{}': {reason}",
                self.name, req.asset
            ))
        };
        let table_schema = types::stored_schema(&req.schema).map_err(cannot)?;
        let incoming = types::stored_schema(&schema).map_err(cannot)?;
        let log = self.table(&req.asset)?;
        let snapshot = self.snapshot(&log).await?;
        let existing_partitions = match &snapshot {
            Some(s) => {
                partition_columns(Arc::clone(&self.engine), Arc::clone(s), &self.name).await?
            }
            None => Vec::new(),
        };

        // A partition put writes into the table's Hive-style directories; the partition
        // columns are not stored in the data files.
        let partition_values: Vec<(String, String)> = match (&req.partition, &req.partition_column)
        {
            (Some(p), Some(columns)) => {
                columns.check(p)?;
                columns
                    .filter(p)
                    .into_iter()
                    .map(|(c, v)| (c.to_string(), v.to_string()))
                    .collect()
            }
            (Some(_), None) => {
                return Err(Error::invalid_request(format!(
                    "target '{}' (delta) stores partitions as Delta partitions of one table: name \
                     the column holding the partition key with \"partition_column\"",
                    self.name
                )));
            }
            _ => Vec::new(),
        };
        let partition_by: Vec<String> = partition_values.iter().map(|(c, _)| c.clone()).collect();
        let replacing = req.mode == Mode::Overwrite && req.partition.is_none();
        if snapshot.is_some() && !replacing && existing_partitions != partition_by {
            return Err(Error::failed_precondition(format!(
                "Delta table {} is partitioned by {existing_partitions:?} but this put writes \
                 partition columns {partition_by:?}; write with the table's partition columns or \
                 overwrite the whole asset",
                log.url()
            )));
        }
        let mut partition_checks = Vec::new();
        for (column, value) in &partition_values {
            let index = schema.index_of(column).map_err(|_| {
                Error::invalid_request(format!(
                    "partition column '{column}' is not a column of this put"
                ))
            })?;
            let data_type = incoming.field(index).data_type();
            if !matches!(
                data_type,
                DataType::Utf8
                    | DataType::Int8
                    | DataType::Int16
                    | DataType::Int32
                    | DataType::Int64
                    | DataType::Date32
                    | DataType::Boolean
            ) {
                return Err(Error::invalid_request(format!(
                    "partition column '{column}' has type {}; a Delta partition column must be a \
                     string, an integer, a date or a boolean",
                    schema.field(index).data_type()
                )));
            }
            partition_checks.push((index, value.clone()));
        }
        let data_indices: Vec<usize> = (0..schema.fields().len())
            .filter(|i| !partition_checks.iter().any(|(p, _)| p == i))
            .collect();
        let file_schema = Arc::new(incoming.project(&data_indices).map_err(arrow_error)?);
        let physical = StructType::try_from_arrow(file_schema.as_ref())
            .map_err(|e| cannot(format!("Delta cannot describe the schema: {e}")))?;
        let dir = partition_values
            .iter()
            .map(|(c, v)| format!("{}={}/", log::escape(c), log::escape(v)))
            .collect::<String>();
        Ok(Box::new(DeltaWriter {
            target: self.name.clone(),
            store: Arc::clone(&self.store),
            engine: Arc::clone(&self.engine),
            log,
            snapshot,
            mode: req.mode,
            replacing,
            asset: req.asset.clone(),
            put_id: req.put_id.clone(),
            table_schema,
            partition_by,
            existing_partitions,
            partition_values,
            partition_checks,
            data_indices,
            incoming,
            file_schema,
            physical,
            dir,
            properties: self.properties.clone(),
            target_file_size: self.target_file_size,
            checkpoint_interval: self.checkpoint_interval,
            open: None,
            written: Vec::new(),
            rows: 0,
            prepared: None,
        }))
    }

    async fn read(&self, req: &ReadRequest) -> Result<SendableBatchStream> {
        let log = self.table(&req.asset)?;
        let Some(snapshot) = self.snapshot(&log).await? else {
            return Err(Error::failed_precondition(format!(
                "the catalog lists asset '{}' in target '{}' but its Delta table {} has no log; \
                 write the asset again or delete it",
                req.asset,
                self.name,
                log.url()
            )));
        };
        let output = req.output_schema()?;
        // The partitions to keep, each as its (column, key) pairs.
        let filters: Vec<Vec<(String, String)>> = match (&req.partitions, &req.partition_columns) {
            (Some(partitions), Some(columns)) => partitions
                .iter()
                .map(|p| {
                    columns
                        .filter(p)
                        .into_iter()
                        .map(|(c, k)| (c.to_string(), k.to_string()))
                        .collect()
                })
                .collect(),
            _ => Vec::new(),
        };
        let mut names: Vec<String> = output.fields().iter().map(|f| f.name().clone()).collect();
        for (column, _) in filters.iter().flatten() {
            if !names.contains(column) {
                names.push(column.clone());
            }
        }
        let table_schema = snapshot.schema();
        let read_schema = Arc::new(
            StructType::try_new(
                names
                    .iter()
                    .filter_map(|n| table_schema.field(n).cloned())
                    .collect::<Vec<_>>(),
            )
            .map_err(|e| Error::internal(e.to_string()))?,
        );
        let engine = Arc::clone(&self.engine);
        let target = self.name.clone();
        Ok(Box::pin(async_stream_batches(
            move |tx: Sender| async move {
                let (batches, mut rx) = tokio::sync::mpsc::channel::<Result<RecordBatch>>(2);
                let reader_target = target.clone();
                let reader = tokio::task::spawn_blocking(move || {
                    let fail = |e: delta_kernel::KernelError| {
                        Error::format(&reader_target, "read a Delta table", e)
                    };
                    let run = || -> Result<()> {
                        let scan = snapshot
                            .scan_builder()
                            .with_schema(read_schema)
                            .build()
                            .map_err(fail)?;
                        for data in scan.execute(engine).map_err(fail)? {
                            let data = ArrowEngineData::try_from_engine_data(data.map_err(fail)?)
                                .map_err(fail)?;
                            if batches
                                .blocking_send(Ok(data.record_batch().clone()))
                                .is_err()
                            {
                                return Ok(());
                            }
                        }
                        Ok(())
                    };
                    if let Err(e) = run() {
                        let _ = batches.blocking_send(Err(e));
                    }
                });
                while let Some(batch) = rx.recv().await {
                    let out = batch.and_then(|b| restore(&b, &output, &filters, &target));
                    tx.send(out).await?;
                }
                if let Err(e) = reader.await {
                    tx.send(Err(e.into())).await?;
                }
                Ok(())
            },
        )))
    }

    async fn delete(&self, req: &DeleteRequest) -> Result<()> {
        let log = self.table(&req.asset)?;
        if req.whole || req.partitions.is_empty() {
            return log.remove_table().await;
        }
        let Some(snapshot) = self.snapshot(&log).await? else {
            return Ok(());
        };
        let Some(columns) = &req.partition_columns else {
            return Err(Error::internal(
                "a partitioned delta asset has no partition columns in the catalog",
            ));
        };
        let doomed: Vec<LiveFile> =
            live_files(Arc::clone(&self.engine), Arc::clone(&snapshot), &self.name)
                .await?
                .into_iter()
                .filter(|f| {
                    req.partitions.iter().any(|p| {
                        columns.filter(p).iter().all(|(c, k)| {
                            f.partition_values.get(*c).map(String::as_str) == Some(*k)
                        })
                    })
                })
                .collect();
        let mut actions = vec![Action::commit_info("DELETE", None, &req.asset.to_string())];
        actions.extend(doomed.iter().map(Action::remove));
        log.commit_once(snapshot.version() + 1, &actions).await
    }

    async fn healthcheck(&self) -> Result<()> {
        let prefix = Path::from_url_path(self.root.path())
            .map_err(|e| Error::internal(format!("root path {}: {e}", self.root)))?;
        self.store
            .list_with_delimiter(Some(&prefix))
            .await
            .map(|_| ())
            .map_err(|e| Error::storage(&self.name, "listing the root", e))
    }

    /// Removes data files of puts that died before their commit: files named by Quiver, at
    /// least `min_age` old, that no commit of their table references (nor a table at all).
    async fn recover(&self, min_age: std::time::Duration) -> Result<Vec<String>> {
        let prefix = Path::from_url_path(self.root.path())
            .map_err(|e| Error::internal(format!("root path {}: {e}", self.root)))?;
        let objects: Vec<object_store::ObjectMeta> = self
            .store
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(|e| Error::storage(&self.name, "listing the root", e))?;
        let mut tables: Vec<String> = objects
            .iter()
            .filter_map(|o| {
                let p = o.location.as_ref();
                p.find("/_delta_log/").map(|i| p[..i].to_string())
            })
            .collect();
        tables.sort();
        tables.dedup();
        let cutoff = chrono::Utc::now()
            - chrono::Duration::from_std(min_age).unwrap_or(chrono::Duration::zero());
        let mut referenced: HashMap<String, std::collections::HashSet<String>> = HashMap::new();
        let mut removed = Vec::new();
        for object in &objects {
            let path = object.location.as_ref();
            if !path.ends_with(DATA_FILE_SUFFIX) || object.last_modified > cutoff {
                continue;
            }
            let table = tables
                .iter()
                .filter(|t| path.starts_with(&format!("{t}/")))
                .max_by_key(|t| t.len());
            let keep = match table {
                None => false,
                Some(table) => {
                    if !referenced.contains_key(table) {
                        let names = self.referenced_files(table).await?;
                        referenced.insert(table.clone(), names);
                    }
                    referenced[table].contains(&path[table.len() + 1..])
                }
            };
            if !keep {
                match self.store.delete(&object.location).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {
                        removed.push(format!("{}{path}", self.store_url_base()));
                    }
                    Err(e) => {
                        return Err(Error::storage(&self.name, format!("removing {path}"), e));
                    }
                }
            }
        }
        Ok(removed)
    }

    /// The put landed if a commit after the version it started from names its put id. If
    /// none does, its data files (listed in the mark) are removed: no commit references them.
    async fn resolve(&self, put: &PendingPut) -> Result<Option<WriteSummary>> {
        let c = &put.commit;
        let log = self.table(&c.asset)?;
        let mark: log::Mark = serde_json::from_str(&put.mark).map_err(|e| {
            Error::internal(format!(
                "pending delta put of '{}' has a bad mark: {e}",
                c.asset
            ))
        })?;
        let Some(put_id) = c.put_id.as_deref() else {
            return Ok(None);
        };
        if let Some(version) = log.find_put(mark.base, put_id).await? {
            return Ok(Some(WriteSummary {
                rows: c.rows,
                bytes: mark.bytes,
                location: format!("{}?version={version}", log.url()),
                total_rows: None,
            }));
        }
        log.remove_files(&mark.files).await;
        Ok(None)
    }
}

/// A batch from the kernel as the catalog's schema: rows outside the requested partitions
/// dropped, columns in the catalog's order and types.
fn restore(
    batch: &RecordBatch,
    output: &SchemaRef,
    filters: &[Vec<(String, String)>],
    target: &str,
) -> Result<RecordBatch> {
    let mut batch = batch.clone();
    if !filters.is_empty() {
        // Each column as strings, once.
        let mut columns: HashMap<&str, StringArray> = HashMap::new();
        for (column, _) in filters.iter().flatten() {
            if let (false, Some(values)) = (
                columns.contains_key(column.as_str()),
                batch.column_by_name(column),
            ) {
                let values = arrow_cast::cast(values, &DataType::Utf8).map_err(arrow_error)?;
                let values = values
                    .as_any()
                    .downcast_ref::<StringArray>()
                    .expect("cast to Utf8")
                    .clone();
                columns.insert(column.as_str(), values);
            }
        }
        let keep: arrow_array::BooleanArray = (0..batch.num_rows())
            .map(|row| {
                Some(filters.iter().any(|pairs| {
                    pairs.iter().all(|(c, k)| {
                        columns
                            .get(c.as_str())
                            .is_some_and(|v| v.is_valid(row) && v.value(row) == k)
                    })
                }))
            })
            .collect();
        batch = arrow_select::filter::filter_record_batch(&batch, &keep).map_err(arrow_error)?;
    }
    let columns = output
        .fields()
        .iter()
        .map(|field| match batch.column_by_name(field.name()) {
            Some(column) => types::cast(column, field.data_type()).map_err(|e| {
                Error::format(
                    target,
                    format!("restore column '{}' to {}", field.name(), field.data_type()),
                    e,
                )
            }),
            None => Ok(arrow_array::new_null_array(
                field.data_type(),
                batch.num_rows(),
            )),
        })
        .collect::<Result<Vec<ArrayRef>>>()?;
    RecordBatch::try_new_with_options(
        Arc::clone(output),
        columns,
        &arrow_array::RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
    )
    .map_err(arrow_error)
}

/// Arrow errors here are the target's own mistakes: the put's data was checked before.
fn arrow_error(e: arrow_schema::ArrowError) -> Error {
    Error::internal(e.to_string())
}

/// `existing`'s columns, then `put`'s new ones; a column whose type differs is refused.
fn merge(existing: &StructType, put: &StructType, table: &Url) -> Result<StructType> {
    let mut fields: Vec<_> = existing.fields().cloned().collect();
    for field in put.fields() {
        match existing.field(field.name()) {
            Some(stored) if stored.data_type() != field.data_type() => {
                return Err(Error::failed_precondition(format!(
                    "column '{}' of Delta table {table} is {} but this put sends {}; overwrite \
                     the asset to change a column's type",
                    field.name(),
                    stored.data_type(),
                    field.data_type()
                )));
            }
            Some(_) => {}
            None => fields.push(field.clone()),
        }
    }
    StructType::try_new(fields).map_err(|e| Error::internal(e.to_string()))
}

/// One data file being written.
struct OpenFile {
    writer: AsyncArrowWriter<object_store::buffered::BufWriter>,
    /// Relative to the table root, unescaped.
    relative: String,
    path: Path,
    rows: u64,
    stats: Option<FileStatsAccumulator>,
}

struct DeltaWriter {
    target: String,
    store: Arc<dyn ObjectStore>,
    engine: Arc<dyn Engine>,
    log: CommitLog,
    /// The table as the put began; `None` creates it.
    snapshot: Option<SnapshotRef>,
    mode: Mode,
    /// An unpartitioned overwrite: every live file goes and the metadata is replaced.
    replacing: bool,
    asset: AssetKey,
    put_id: String,
    /// The table's schema once the put commits, as Delta stores it.
    table_schema: SchemaRef,
    partition_by: Vec<String>,
    /// The partition columns of the table as the put began.
    existing_partitions: Vec<String>,
    partition_values: Vec<(String, String)>,
    /// (column index, key) every row of a partition put must hold.
    partition_checks: Vec<(usize, String)>,
    /// The columns stored in the data files.
    data_indices: Vec<usize>,
    incoming: SchemaRef,
    file_schema: SchemaRef,
    physical: StructType,
    /// Hive-style partition directory, `""` or `c=v/`.
    dir: String,
    properties: WriterProperties,
    target_file_size: u64,
    checkpoint_interval: u64,
    open: Option<OpenFile>,
    written: Vec<AddFile>,
    rows: u64,
    prepared: Option<(u64, Vec<Action>)>,
}

impl DeltaWriter {
    fn fail(&self, action: &'static str) -> impl Fn(parquet::errors::ParquetError) -> Error {
        let target = self.target.clone();
        move |e| Error::storage(&target, format!("{action} a Delta data file"), e)
    }

    async fn open_file(&mut self) -> Result<&mut OpenFile> {
        if self.open.is_none() {
            let relative = format!(
                "{}part-{:05}-{}{DATA_FILE_SUFFIX}",
                self.dir,
                self.written.len(),
                self.put_id
            );
            let path = Path::from(format!("{}/{relative}", self.log.path()));
            let sink =
                object_store::buffered::BufWriter::new(Arc::clone(&self.store), path.clone());
            let writer = AsyncArrowWriter::try_new(
                sink,
                Arc::clone(&self.file_schema),
                Some(self.properties.clone()),
            )
            .map_err(self.fail("starting"))?;
            let stats_columns: Vec<delta_kernel::expressions::ColumnName> = self
                .file_schema
                .fields()
                .iter()
                .filter(|f| !f.data_type().is_nested())
                .take(STATS_COLUMNS)
                .map(|f| delta_kernel::expressions::ColumnName::new([f.name().clone()]))
                .collect();
            self.open = Some(OpenFile {
                writer,
                relative,
                path,
                rows: 0,
                stats: Some(FileStatsAccumulator::new(&stats_columns, &self.physical)),
            });
        }
        Ok(self.open.as_mut().expect("just opened"))
    }

    async fn close_file(&mut self) -> Result<()> {
        let Some(mut file) = self.open.take() else {
            return Ok(());
        };
        file.writer
            .finish()
            .await
            .map_err(|e| Error::storage(&self.target, "finishing a Delta data file", e))?;
        // The log must hold the exact size: readers find the footer with it.
        let size = self
            .store
            .head(&file.path)
            .await
            .map_err(|e| {
                Error::storage(
                    &self.target,
                    format!("reading the size of {}", file.path),
                    e,
                )
            })?
            .size;
        let stats = file
            .stats
            .take()
            .and_then(|s| s.finish().ok().flatten())
            .and_then(|s| log::stats_json(&s).ok())
            .unwrap_or_else(|| format!("{{\"numRecords\":{}}}", file.rows));
        self.written.push(AddFile {
            path: file.path,
            relative: file.relative,
            size,
            stats,
            partition_values: self.partition_values.clone(),
        });
        Ok(())
    }

    /// Removes the data files written so far; nothing references them.
    async fn discard(&mut self) {
        if let Some(file) = self.open.take() {
            drop(file.writer);
            let _ = self.store.delete(&file.path).await;
        }
        let paths: Vec<String> = self.written.iter().map(|f| f.path.to_string()).collect();
        self.log.remove_files(&paths).await;
    }
}

#[async_trait]
impl AssetWriter for DeltaWriter {
    async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        for (index, key) in &self.partition_checks {
            let values =
                arrow_cast::cast(batch.column(*index), &DataType::Utf8).map_err(arrow_error)?;
            let values = values
                .as_any()
                .downcast_ref::<StringArray>()
                .expect("cast to Utf8");
            let stray = values.iter().filter(|v| *v != Some(key.as_str())).count();
            if stray > 0 {
                return Err(Error::invalid_data(format!(
                    "{stray} of {} rows sent for partition '{key}' do not have that key in \
                     column '{}'; every row of a partition put must belong to the partition",
                    batch.num_rows(),
                    self.incoming.field(*index).name()
                )));
            }
        }
        let stored = types::to_stored(
            &batch.project(&self.data_indices).map_err(arrow_error)?,
            &self.file_schema,
        )
        .map_err(Error::invalid_data)?;
        let target_file_size = self.target_file_size;
        let file = self.open_file().await?;
        if let Some(stats) = &mut file.stats
            && stats.merge(&stored).is_err()
        {
            file.stats = None;
        }
        file.rows += stored.num_rows() as u64;
        file.writer
            .write(&stored)
            .await
            .map_err(|e| Error::storage("delta", "writing a Delta data file", e))?;
        let full = file.writer.bytes_written() + file.writer.in_progress_size();
        self.rows += stored.num_rows() as u64;
        if full as u64 >= target_file_size {
            self.close_file().await?;
        }
        Ok(())
    }

    async fn prepare(&mut self) -> Result<String> {
        self.close_file().await?;
        let (base, removed) = match &self.snapshot {
            Some(snapshot) => {
                let removed = if self.mode == Mode::Overwrite {
                    live_files(Arc::clone(&self.engine), Arc::clone(snapshot), &self.target)
                        .await?
                        .into_iter()
                        .filter(|f| {
                            self.replacing
                                || self.partition_values.iter().all(|(c, v)| {
                                    f.partition_values.get(c).map(String::as_str) == Some(v)
                                })
                        })
                        .collect()
                } else {
                    Vec::new()
                };
                (Some(snapshot.version()), removed)
            }
            None => (None, Vec::new()),
        };
        let put_schema = StructType::try_from_arrow(self.table_schema.as_ref())
            .map_err(|e| Error::invalid_data(format!("Delta cannot describe the schema: {e}")))?;
        // The table's schema after the commit: the put's when it replaces the table, else the
        // table's columns then the put's new ones (another engine may have written columns
        // this put does not send).
        let (schema, changed) = match &self.snapshot {
            None => (put_schema, true),
            Some(s) if self.replacing => {
                let changed = log::schema_of(&s.schema()) != log::schema_of(&put_schema)
                    || self.existing_partitions != self.partition_by;
                (put_schema, changed)
            }
            Some(s) => {
                let existing = s.schema();
                let merged = merge(&existing, &put_schema, self.log.url())?;
                let changed = log::schema_of(&merged) != log::schema_of(&existing);
                (merged, changed)
            }
        };
        let operation = match (self.mode, self.replacing) {
            (Mode::Append, _) => "WRITE",
            (_, true) if self.snapshot.is_some() => "CREATE OR REPLACE TABLE",
            _ => "WRITE",
        };
        let mut actions = vec![Action::commit_info(
            operation,
            Some(&self.put_id),
            &self.asset.to_string(),
        )];
        let needs_ntz = log::schema_of(&schema).contains("\"timestamp_ntz\"");
        let had_ntz = self
            .snapshot
            .as_ref()
            .is_some_and(|s| log::schema_of(&s.schema()).contains("\"timestamp_ntz\""));
        if self.snapshot.is_none() || (needs_ntz && !had_ntz) {
            actions.push(Action::protocol(&schema));
        }
        if changed {
            let previous = match base {
                Some(v) => self.log.latest_metadata(v).await?,
                None => None,
            };
            let partition_by = if self.replacing || self.snapshot.is_none() {
                &self.partition_by
            } else {
                &self.existing_partitions
            };
            actions.push(Action::metadata(
                previous,
                &log::schema_of(&schema),
                partition_by,
            ));
        }
        actions.extend(removed.iter().map(Action::remove));
        actions.extend(self.written.iter().map(Action::add));
        let version = base.map_or(0, |v| v + 1);
        let mark = log::Mark {
            base,
            bytes: self.written.iter().map(|f| f.size).sum(),
            files: self.written.iter().map(|f| f.path.to_string()).collect(),
        };
        self.prepared = Some((version, actions));
        Ok(serde_json::to_string(&mark).expect("a mark serializes"))
    }

    async fn commit(mut self: Box<Self>) -> Result<WriteSummary> {
        let Some((version, actions)) = self.prepared.take() else {
            return Err(Error::internal("delta commit before prepare"));
        };
        let blind_append = self.mode == Mode::Append && actions.iter().all(Action::is_file_or_info);
        let version = self.log.commit(version, &actions, blind_append).await?;
        checkpoint(
            Arc::clone(&self.engine),
            self.log.url().clone(),
            version,
            self.checkpoint_interval,
            &self.target,
        )
        .await;
        let bytes = self.written.iter().map(|f| f.size).sum();
        Ok(WriteSummary {
            rows: self.rows,
            bytes,
            location: format!("{}?version={version}", self.log.url()),
            total_rows: None,
        })
    }

    async fn abort(mut self: Box<Self>) -> Result<()> {
        self.discard().await;
        Ok(())
    }
}
