//! The catalog: what assets exist, their schema, partitions, sizes, versions and history.
//!
//! The embedded backend is SQLite; the [`Catalog`] trait keeps the service independent of it so
//! a shared backend can serve a cluster of servers.

mod bookkeeping;
pub mod postgres;
pub mod sqlite;

use std::sync::Arc;

use arrow_flight::{IpcMessage, SchemaAsIpc};
use arrow_ipc::writer::IpcWriteOptions;
use arrow_schema::{Schema, SchemaRef};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::asset::{AssetKey, Partition, PartitionColumns};
use crate::error::{Error, Result};
use crate::protocol::{Mode, PutSummary};

pub use postgres::PostgresCatalog;
pub use sqlite::SqliteCatalog;

/// Held while one put writes an asset; dropping it lets the next writer in.
pub type AssetGuard = Box<dyn Send + Sync>;

/// How an asset is partitioned; fixed by its first write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    Unpartitioned,
    /// One key per partition.
    Single,
    /// One key per named dimension.
    Multi(Vec<String>),
}

impl Layout {
    pub fn of(partition: Option<&Partition>) -> Self {
        match partition {
            None => Self::Unpartitioned,
            Some(p) => match p.dimensions() {
                None => Self::Single,
                Some(dims) => Self::Multi(dims),
            },
        }
    }

    pub fn is_partitioned(&self) -> bool {
        !matches!(self, Self::Unpartitioned)
    }

    /// `none`, `single` or `multi:date,region`.
    pub fn encode(&self) -> String {
        match self {
            Self::Unpartitioned => "none".to_string(),
            Self::Single => "single".to_string(),
            Self::Multi(dims) => format!("multi:{}", dims.join(",")),
        }
    }

    pub fn decode(text: &str) -> Result<Self> {
        match text {
            "none" => Ok(Self::Unpartitioned),
            "single" => Ok(Self::Single),
            other => match other.strip_prefix("multi:") {
                Some(dims) => Ok(Self::Multi(dims.split(',').map(str::to_string).collect())),
                None => Err(Error::catalog(
                    "reading an asset layout",
                    format!("unknown layout {other:?}"),
                )),
            },
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Self::Unpartitioned => "unpartitioned".to_string(),
            Self::Single => "partitioned by a single key".to_string(),
            Self::Multi(dims) => format!("partitioned by dimensions {}", dims.join(", ")),
        }
    }
}

/// One committed partition.
#[derive(Debug, Clone, PartialEq)]
pub struct PartitionRecord {
    pub partition: Partition,
    pub rows: u64,
    pub bytes: u64,
    pub location: String,
    pub version: u64,
    pub updated_at: DateTime<Utc>,
}

/// One committed asset.
#[derive(Debug, Clone, PartialEq)]
pub struct AssetRecord {
    pub target: String,
    pub asset: AssetKey,
    pub schema: SchemaRef,
    pub layout: Layout,
    /// Increases by one with every commit to the asset or any of its partitions.
    pub version: u64,
    pub rows: u64,
    pub bytes: u64,
    pub location: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Sorted by partition id; empty for unpartitioned assets.
    pub partitions: Vec<PartitionRecord>,
    /// For table targets: the columns holding partition keys.
    pub partition_columns: Option<PartitionColumns>,
}

/// One entry of an asset's history.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HistoryEntry {
    pub version: u64,
    pub mode: Mode,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partition: Option<serde_json::Value>,
    pub rows: u64,
    pub bytes: u64,
    pub location: String,
    pub duration_ms: u64,
    pub written_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

impl HistoryEntry {
    /// The answer a put with this entry's idempotency key gets again.
    pub fn replayed(self, target: &str, asset: &str) -> PutSummary {
        PutSummary {
            asset: asset.to_string(),
            target: target.to_string(),
            mode: self.mode,
            partition: self.partition,
            rows: self.rows,
            bytes: self.bytes,
            location: self.location,
            version: self.version,
            duration_ms: self.duration_ms,
            idempotency_key: self.idempotency_key,
            replayed: true,
        }
    }
}

pub(crate) fn parse_mode(text: &str) -> Result<Mode> {
    match text {
        "overwrite" => Ok(Mode::Overwrite),
        "append" => Ok(Mode::Append),
        "upsert" => Ok(Mode::Upsert),
        other => Err(Error::catalog(
            "reading history",
            format!("unknown mode {other:?}"),
        )),
    }
}

/// A finished write to record.
#[derive(Debug, Clone)]
pub struct Commit {
    pub target: String,
    pub asset: AssetKey,
    pub schema: SchemaRef,
    pub partition: Option<Partition>,
    pub mode: Mode,
    pub rows: u64,
    pub bytes: u64,
    /// Location of what was written (the partition's file, or the asset's).
    pub location: String,
    /// Location of the whole asset.
    pub asset_location: String,
    /// Rows in the whole asset after the commit, when the target counted them.
    pub total_rows: Option<u64>,
    pub partition_columns: Option<PartitionColumns>,
    pub duration_ms: u64,
    pub idempotency_key: Option<String>,
    /// The put this commit finishes: its [`PendingPut`] goes in the same transaction.
    pub put_id: Option<String>,
}

/// A put whose outcome the target decides: recorded before the target makes its data visible,
/// removed by the catalog commit that records it (or when the put is rolled back). One that
/// is still here after a crash is resolved by asking the target whether its commit landed
/// ([`crate::targets::Target::resolve`]): the catalog then records it or forgets it, so the
/// catalog and the data always agree.
#[derive(Debug, Clone)]
pub struct PendingPut {
    pub id: String,
    /// The commit to record if the target has the data. `rows` is what the client sent;
    /// `bytes`, `location` and `total_rows` are the target's to fill in.
    pub commit: Commit,
    /// What the target noted before its commit, to tell afterwards whether it landed (e.g.
    /// the identity of the file the put replaces).
    pub mark: String,
    pub started_at: DateTime<Utc>,
}

/// A pending put's fields other than its ids and schema, as the catalogs store them.
#[derive(Serialize, serde::Deserialize)]
struct PendingFields {
    partition: Option<String>,
    mode: Mode,
    rows: u64,
    bytes: u64,
    location: String,
    asset_location: String,
    partition_columns: Option<PartitionColumns>,
    duration_ms: u64,
    idempotency_key: Option<String>,
    mark: String,
}

/// A pending put as the catalogs store it: `(id, target, asset, schema, fields, started_at)`.
pub(crate) type PendingRow = (String, String, String, Vec<u8>, String, String);

impl PendingPut {
    pub(crate) fn encode(&self) -> Result<PendingRow> {
        let c = &self.commit;
        let fields = PendingFields {
            partition: c.partition.as_ref().map(Partition::id),
            mode: c.mode,
            rows: c.rows,
            bytes: c.bytes,
            location: c.location.clone(),
            asset_location: c.asset_location.clone(),
            partition_columns: c.partition_columns.clone(),
            duration_ms: c.duration_ms,
            idempotency_key: c.idempotency_key.clone(),
            mark: self.mark.clone(),
        };
        Ok((
            self.id.clone(),
            c.target.clone(),
            c.asset.to_string(),
            encode_schema(&c.schema)?,
            serde_json::to_string(&fields).map_err(|e| Error::catalog("recording a put", e))?,
            self.started_at.to_rfc3339(),
        ))
    }

    pub(crate) fn decode(row: PendingRow) -> Result<Self> {
        let (id, target, asset, schema, fields, started_at) = row;
        let fields: PendingFields = serde_json::from_str(&fields)
            .map_err(|e| Error::catalog("reading a pending put", e))?;
        Ok(Self {
            commit: Commit {
                target,
                asset: AssetKey::parse(&asset)?,
                schema: decode_schema(&schema)?,
                partition: fields
                    .partition
                    .as_deref()
                    .map(Partition::from_id)
                    .transpose()?,
                mode: fields.mode,
                rows: fields.rows,
                bytes: fields.bytes,
                location: fields.location,
                asset_location: fields.asset_location,
                total_rows: None,
                partition_columns: fields.partition_columns,
                duration_ms: fields.duration_ms,
                idempotency_key: fields.idempotency_key,
                put_id: Some(id.clone()),
            },
            id,
            mark: fields.mark,
            started_at: DateTime::parse_from_rfc3339(&started_at)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|e| Error::catalog("reading a pending put", e))?,
        })
    }
}

#[async_trait]
pub trait Catalog: Send + Sync + 'static {
    async fn get(&self, target: &str, asset: &AssetKey) -> Result<Option<AssetRecord>>;
    /// Assets ordered by target then key, optionally filtered.
    async fn list(&self, target: Option<&str>, prefix: Option<&str>) -> Result<Vec<AssetRecord>>;
    /// Records a commit atomically and returns the asset's new version.
    async fn commit(&self, commit: Commit) -> Result<u64>;
    /// The answer of an earlier put with this idempotency key, if there was one.
    async fn replay(
        &self,
        target: &str,
        asset: &AssetKey,
        idempotency_key: &str,
    ) -> Result<Option<PutSummary>>;
    /// Removes the asset, or only the given partitions of it. Removing the last partition
    /// removes the asset.
    async fn delete(&self, target: &str, asset: &AssetKey, partitions: &[Partition]) -> Result<()>;
    /// Newest first.
    async fn history(&self, target: &str, asset: &AssetKey) -> Result<Vec<HistoryEntry>>;
    /// Serializes writers of one asset across every server sharing this catalog: waits while
    /// another server holds the asset. A catalog only one server can open needs no lock.
    async fn lock_asset(&self, _target: &str, _asset: &AssetKey) -> Result<AssetGuard> {
        Ok(Box::new(()))
    }
    /// Records a put before its target commits (see [`PendingPut`]).
    async fn begin_put(&self, put: &PendingPut) -> Result<()>;
    /// Forgets a pending put whose target did not commit.
    async fn abandon_put(&self, id: &str) -> Result<()>;
    /// Pending puts into `target` (of one asset, if given), oldest first.
    async fn pending_puts(&self, target: &str, asset: Option<&AssetKey>)
    -> Result<Vec<PendingPut>>;
}

/// Serializes a schema as an Arrow IPC schema message, as Flight does.
pub fn encode_schema(schema: &Schema) -> Result<Vec<u8>> {
    let options = IpcWriteOptions::default();
    let message: IpcMessage = SchemaAsIpc::new(schema, &options)
        .try_into()
        .map_err(|e| Error::catalog("encoding a schema", e))?;
    Ok(message.0.to_vec())
}

pub fn decode_schema(bytes: &[u8]) -> Result<SchemaRef> {
    let schema = Schema::try_from(IpcMessage(bytes.to_vec().into()))
        .map_err(|e| Error::catalog("decoding a stored schema", e))?;
    Ok(Arc::new(schema))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_schema::{DataType, Field, TimeUnit};
    use std::collections::HashMap;

    #[test]
    fn schemas_survive_encoding_exactly() {
        let schema = Schema::new_with_metadata(
            vec![
                Field::new(
                    "ts",
                    DataType::Timestamp(TimeUnit::Nanosecond, Some("+01:00".into())),
                    true,
                ),
                Field::new_dictionary("d", DataType::Int32, DataType::Utf8, false),
                Field::new("n", DataType::Decimal128(38, 9), true)
                    .with_metadata(HashMap::from([("k".into(), "v".into())])),
            ],
            HashMap::from([("pandas".into(), "{}".into())]),
        );
        let back = decode_schema(&encode_schema(&schema).unwrap()).unwrap();
        assert_eq!(back.as_ref(), &schema);
    }

    #[test]
    fn layouts_round_trip() {
        for layout in [
            Layout::Unpartitioned,
            Layout::Single,
            Layout::Multi(vec!["date".into(), "region".into()]),
        ] {
            assert_eq!(Layout::decode(&layout.encode()).unwrap(), layout);
        }
    }
}
