//! Targets: where assets are stored. Each kind lives in its own module and plugs in through
//! the [`Target`] / [`AssetWriter`] pair.
//!
//! The writer lifecycle mirrors object_store's multipart upload: [`Target::begin`], any number
//! of [`AssetWriter::write`]s, then exactly one of [`AssetWriter::commit`] (the only point at
//! which a reader can see the new data) or [`AssetWriter::abort`]. A writer that is dropped
//! without either leaves nothing visible.
//!
//! The target's commit and the catalog's are two steps, and a server may die between them.
//! Before [`AssetWriter::commit`] the service records the put as pending in the catalog, with
//! the mark [`AssetWriter::prepare`] returns; the catalog commit removes it. A put still
//! pending at start-up (or when the next put to its asset begins) goes to
//! [`Target::resolve`], which answers whether the target's commit landed: if it did, the
//! catalog records it (rolled forward); if not, the target removes what the put left and the
//! catalog forgets it (rolled back). A target must therefore be able to tell, after a crash,
//! whether a given put's commit became visible: by comparing the mark it noted before the
//! commit (a file's identity), or by a marker its commit writes atomically with the data
//! (the put id in a transaction).

#[cfg(any(feature = "webhook", feature = "graphql", feature = "email"))]
pub mod delivery;
#[cfg(feature = "delta")]
pub mod delta;
pub mod discard;
#[cfg(feature = "duckdb")]
pub mod duckdb;
#[cfg(feature = "email")]
pub mod email;
#[cfg(feature = "excel")]
pub mod excel;
pub mod file;
#[cfg(feature = "graphql")]
pub mod graphql;
#[cfg(feature = "hyper")]
pub mod hyper;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "redis")]
pub mod redis;
pub mod registry;
#[cfg(feature = "search")]
pub mod search;
pub mod sql;
pub(crate) mod util;
#[cfg(feature = "webhook")]
pub mod webhook;

use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use arrow_array::RecordBatch;
use arrow_schema::{Schema, SchemaRef};
use async_trait::async_trait;
use futures::Stream;
use serde::de::DeserializeOwned;

use crate::asset::{AssetKey, Partition, PartitionColumns};
use crate::catalog::PendingPut;
use crate::error::{Error, Result};
use crate::protocol::{Mode, Options};

/// Locks a mutex shared between a target's threads. Whoever panicked while holding it has its
/// panic reported on its own (a thread scope re-raises it, a task's join fails), so a poisoned
/// lock holds nothing worth refusing.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A stream of record batches read from a target.
pub type SendableBatchStream = Pin<Box<dyn Stream<Item = Result<RecordBatch>> + Send>>;

/// What a writer is asked to store.
#[derive(Debug, Clone)]
pub struct WriteRequest {
    pub asset: AssetKey,
    pub mode: Mode,
    pub partition: Option<Partition>,
    pub partition_column: Option<PartitionColumns>,
    pub key: Vec<String>,
    pub options: Options,
    /// The asset's schema once this put commits: the incoming schema, or for a target that
    /// evolves its schema, the stored schema plus the put's new columns.
    pub schema: SchemaRef,
    /// The asset's schema before this put; `None` for a new asset.
    pub existing: Option<SchemaRef>,
    /// Unique per put. A target whose commit is a transaction records it in that transaction,
    /// so [`Target::resolve`] can tell later whether the commit landed.
    pub put_id: String,
}

/// What a committed write stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteSummary {
    pub rows: u64,
    /// Bytes the target stored (file size, table growth, ...).
    pub bytes: u64,
    /// Where the data lives, e.g. `file:///data/parquet/sales/daily.parquet`.
    pub location: String,
    /// Rows in the whole asset after the commit, when the target counts them (tables).
    pub total_rows: Option<u64>,
}

/// How a target treats the schema of later puts to an existing asset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchemaPolicy {
    /// Each put stores exactly its own schema; every partition of an asset shares one (files).
    Exact,
    /// Appends, upserts and partition replaces may add nullable columns; a type change or a
    /// missing NOT NULL column is refused; an unpartitioned overwrite replaces the schema
    /// (tables).
    Evolve,
}

/// What a delete removes.
#[derive(Debug, Clone)]
pub struct DeleteRequest {
    pub asset: AssetKey,
    /// The whole asset goes; `partitions` then lists all of its partitions.
    pub whole: bool,
    /// The partitions to remove; empty for an unpartitioned asset.
    pub partitions: Vec<Partition>,
    pub partition_columns: Option<PartitionColumns>,
}

/// What a reader is asked for.
#[derive(Debug, Clone)]
pub struct ReadRequest {
    pub asset: AssetKey,
    /// The schema the catalog recorded at the last commit.
    pub schema: SchemaRef,
    /// `None` for an unpartitioned asset; otherwise the partitions to read, in order.
    pub partitions: Option<Vec<Partition>>,
    /// Column indices into `schema`; `None` reads every column.
    pub projection: Option<Vec<usize>>,
    /// For table targets: the columns holding partition keys.
    pub partition_columns: Option<PartitionColumns>,
}

impl ReadRequest {
    /// The schema of the batches the read returns: the recorded schema, projected.
    pub fn output_schema(&self) -> Result<SchemaRef> {
        match &self.projection {
            Some(indices) => Ok(Arc::new(
                self.schema
                    .project(indices)
                    .map_err(|e| Error::internal(e.to_string()))?,
            )),
            None => Ok(Arc::clone(&self.schema)),
        }
    }
}

#[async_trait]
pub trait Target: Send + Sync + 'static {
    /// The configured name, e.g. `parquet` or `warehouse`.
    fn name(&self) -> &str;
    /// The kind, e.g. `parquet`.
    fn kind(&self) -> &'static str;
    /// Modes this target can write.
    fn modes(&self) -> &'static [Mode];
    /// Where an asset (or one partition of it) is stored, for display.
    fn location(&self, asset: &AssetKey, partition: Option<&Partition>) -> String;
    /// How later puts may change an asset's schema.
    fn schema_policy(&self) -> SchemaPolicy {
        SchemaPolicy::Exact
    }
    /// Two assets with the same storage id would overwrite each other's data.
    fn storage_id(&self, asset: &AssetKey) -> String {
        self.location(asset, None)
    }
    /// Starts a write. Fails before any data moves if the schema or request cannot be stored.
    async fn begin(&self, req: &WriteRequest, schema: SchemaRef) -> Result<Box<dyn AssetWriter>>;
    /// Opens a committed asset for reading. Implementations pin the version they open here,
    /// so a commit that lands while the stream is consumed cannot mix two versions.
    async fn read(&self, req: &ReadRequest) -> Result<SendableBatchStream>;
    /// Removes an asset (every partition) or some partitions of it.
    async fn delete(&self, req: &DeleteRequest) -> Result<()>;
    /// Checks that the storage behind the target is reachable.
    async fn healthcheck(&self) -> Result<()>;
    /// Removes what a server that crashed mid-put left behind (staged files, unaliased
    /// indices) at least `min_age` old, and returns what it removed.
    async fn recover(&self, _min_age: std::time::Duration) -> Result<Vec<String>> {
        Ok(Vec::new())
    }
    /// Whether a put the catalog still holds as pending (its server died, or its catalog
    /// commit failed, after [`AssetWriter::prepare`]) made its data visible: `Some` with what
    /// is stored now (the catalog then records the put), or `None` after removing anything
    /// the put left (the catalog then forgets it). Called with the asset's write lock held.
    async fn resolve(&self, put: &PendingPut) -> Result<Option<WriteSummary>>;
}

#[async_trait]
pub trait AssetWriter: Send {
    async fn write(&mut self, batch: RecordBatch) -> Result<()>;
    /// Called once every batch is written and before [`AssetWriter::commit`]: finishes
    /// whatever can fail without making anything visible, and returns the mark
    /// [`Target::resolve`] needs to tell later whether the commit landed (empty when the
    /// put id the commit records is enough).
    async fn prepare(&mut self) -> Result<String> {
        Ok(String::new())
    }
    /// Makes everything written visible at once; the only point of visibility.
    async fn commit(self: Box<Self>) -> Result<WriteSummary>;
    /// Discards everything written; the previous version stays as it was.
    async fn abort(self: Box<Self>) -> Result<()>;
}

/// A table or index location, with `?partition=<key>` for one partition.
pub fn partition_location(base: String, partition: Option<&Partition>) -> String {
    match partition {
        Some(p) => format!("{base}?partition={p}"),
        None => base,
    }
}

/// What each target kind provides. `Config` is the kind's `[targets.<name>]` table.
pub trait TargetKind {
    type Config: DeserializeOwned + std::fmt::Debug + Clone + PartialEq + Send + Sync;

    /// Checks settings without touching the outside world; the error names the setting.
    fn validate(_config: &Self::Config) -> Result<(), String> {
        Ok(())
    }

    /// Fills in where the target keeps its data when the config leaves it out.
    fn default_location(_config: &mut Self::Config, _data_dir: &Path, _name: &str) {}

    /// Why several servers (replicas) cannot share this target, if they cannot.
    fn unshareable(config: &Self::Config) -> Option<String>;

    /// Builds the target. Connects to nothing: the first put or health check does.
    fn build(name: &str, config: &Self::Config) -> Result<Arc<dyn Target>>;
}

/// The schema an evolving table has after a put of `incoming`: the stored columns, then the
/// put's new ones. Refuses type changes, new NOT NULL columns and missing NOT NULL columns.
pub fn evolve(existing: &Schema, incoming: &Schema, asset: &AssetKey) -> Result<SchemaRef> {
    let mut fields: Vec<arrow_schema::FieldRef> = existing.fields().iter().cloned().collect();
    for field in incoming.fields() {
        match existing.field_with_name(field.name()) {
            Ok(stored) if stored.data_type() != field.data_type() => {
                return Err(Error::failed_precondition(format!(
                    "column '{}' of asset '{asset}' is {} but this put sends {}; \
                     overwrite the asset to change a column's type",
                    field.name(),
                    stored.data_type(),
                    field.data_type()
                )));
            }
            Ok(_) => {}
            Err(_) if !field.is_nullable() => {
                return Err(Error::failed_precondition(format!(
                    "new column '{}' of asset '{asset}' is NOT NULL, but existing rows have no value \
                     for it; make it nullable or overwrite the asset",
                    field.name()
                )));
            }
            Err(_) => fields.push(Arc::clone(field)),
        }
    }
    if let Some(missing) = existing
        .fields()
        .iter()
        .find(|f| !f.is_nullable() && incoming.field_with_name(f.name()).is_err())
    {
        return Err(Error::failed_precondition(format!(
            "column '{}' of asset '{asset}' is NOT NULL but this put does not send it",
            missing.name()
        )));
    }
    Ok(Arc::new(Schema::new_with_metadata(
        fields,
        existing.metadata().clone(),
    )))
}
