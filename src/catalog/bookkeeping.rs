//! What a commit or a delete changes in the catalog, written once for every backend: the next
//! version, the partition and asset totals, the history entry, the pending put it finishes.
//! A backend only says how to read and write those rows ([`Ledger`]), inside the one
//! transaction each commit and each delete is.

use chrono::{DateTime, Utc};

use super::{Commit, Layout, encode_schema};
use crate::asset::Partition;
use crate::error::{Error, Result};
use crate::protocol::Mode;

/// Rows and bytes, of a write, a partition or an asset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Totals {
    pub rows: i64,
    pub bytes: i64,
}

impl Totals {
    fn written(rows: u64, bytes: u64) -> Self {
        Self {
            rows: to_i64(rows),
            bytes: to_i64(bytes),
        }
    }

    /// After a write of `written`: an overwrite (or a first write) replaces what was there,
    /// other modes add to it.
    fn after(before: Option<Self>, mode: Mode, written: Self) -> Self {
        match (mode, before) {
            (Mode::Overwrite, _) | (_, None) => written,
            (_, Some(before)) => Self {
                rows: before.rows + written.rows,
                bytes: before.bytes + written.bytes,
            },
        }
    }
}

/// The columns are `BIGINT`: a count beyond them is recorded as their largest value.
pub(crate) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The `assets` row a commit writes.
pub(crate) struct AssetRow<'a> {
    pub target: &'a str,
    pub asset: &'a str,
    pub schema: Vec<u8>,
    pub layout: String,
    pub version: i64,
    pub totals: Totals,
    pub location: &'a str,
    pub partition_columns: Option<String>,
    pub at: DateTime<Utc>,
}

/// The `partitions` row a commit to a partition writes.
pub(crate) struct PartitionRow<'a> {
    pub target: &'a str,
    pub asset: &'a str,
    pub partition: String,
    pub totals: Totals,
    pub location: &'a str,
    pub version: i64,
    pub at: DateTime<Utc>,
}

/// The `history` row a commit adds.
pub(crate) struct HistoryRow<'a> {
    pub target: &'a str,
    pub asset: &'a str,
    pub version: i64,
    pub mode: &'static str,
    pub partition: Option<String>,
    pub written: Totals,
    pub location: &'a str,
    pub duration_ms: i64,
    pub at: DateTime<Utc>,
    pub idempotency_key: Option<&'a str>,
}

/// The reads and writes of one catalog transaction, each one statement of the backend.
pub(crate) trait Ledger {
    /// The asset's version and totals; where the backend can, its row stays locked until the
    /// transaction ends.
    async fn asset(&mut self, target: &str, asset: &str) -> Result<Option<(i64, Totals)>>;
    async fn partition(
        &mut self,
        target: &str,
        asset: &str,
        partition: &str,
    ) -> Result<Option<Totals>>;
    /// How many partitions the asset has, and their summed totals.
    async fn partition_sums(&mut self, target: &str, asset: &str) -> Result<(i64, Totals)>;
    async fn put_partition(&mut self, row: &PartitionRow<'_>) -> Result<()>;
    async fn put_asset(&mut self, row: &AssetRow<'_>) -> Result<()>;
    /// Sets an existing asset's version and totals.
    async fn update_asset(
        &mut self,
        target: &str,
        asset: &str,
        version: i64,
        totals: Totals,
        at: DateTime<Utc>,
    ) -> Result<()>;
    async fn add_history(&mut self, row: &HistoryRow<'_>) -> Result<()>;
    async fn delete_partitions(&mut self, target: &str, asset: &str, ids: &[String]) -> Result<()>;
    /// Removes the asset with its partitions and history.
    async fn delete_asset(&mut self, target: &str, asset: &str) -> Result<()>;
    async fn forget_put(&mut self, id: &str) -> Result<()>;
}

/// Records `c` and returns the asset's new version.
pub(crate) async fn commit(ledger: &mut impl Ledger, c: &Commit) -> Result<u64> {
    let (target, asset) = (c.target.as_str(), c.asset.to_string());
    let at = Utc::now();
    let previous = ledger.asset(target, &asset).await?;
    let version = previous.map_or(1, |(version, _)| version + 1);
    let written = Totals::written(c.rows, c.bytes);
    let totals = match &c.partition {
        Some(partition) => {
            let id = partition.id();
            let before = match c.mode {
                Mode::Overwrite => None,
                _ => ledger.partition(target, &asset, &id).await?,
            };
            ledger
                .put_partition(&PartitionRow {
                    target,
                    asset: &asset,
                    partition: id,
                    totals: Totals::after(before, c.mode, written),
                    location: &c.location,
                    version,
                    at,
                })
                .await?;
            ledger.partition_sums(target, &asset).await?.1
        }
        None => Totals::after(previous.map(|(_, totals)| totals), c.mode, written),
    };
    // A table target counts its rows itself: upserts replace rather than add.
    let totals = Totals {
        rows: c.total_rows.map_or(totals.rows, to_i64),
        ..totals
    };
    ledger
        .put_asset(&AssetRow {
            target,
            asset: &asset,
            schema: encode_schema(&c.schema)?,
            layout: Layout::of(c.partition.as_ref()).encode(),
            version,
            totals,
            location: &c.asset_location,
            partition_columns: c
                .partition_columns
                .as_ref()
                .map(serde_json::to_string)
                .transpose()
                .map_err(|e| Error::catalog("recording partition columns", e))?,
            at,
        })
        .await?;
    ledger
        .add_history(&HistoryRow {
            target,
            asset: &asset,
            version,
            mode: c.mode.as_str(),
            partition: c.partition.as_ref().map(Partition::id),
            written,
            location: &c.location,
            duration_ms: to_i64(c.duration_ms),
            at,
            idempotency_key: c.idempotency_key.as_deref(),
        })
        .await?;
    if let Some(id) = &c.put_id {
        ledger.forget_put(id).await?;
    }
    Ok(version as u64)
}

/// Removes the asset, or only `partitions` of it: the others' totals become the asset's, under
/// a new version. Removing the last partition removes the asset.
pub(crate) async fn delete(
    ledger: &mut impl Ledger,
    target: &str,
    asset: &str,
    partitions: &[Partition],
) -> Result<()> {
    // The asset's row first, as a commit takes it.
    let previous = ledger.asset(target, asset).await?;
    if !partitions.is_empty() {
        let ids: Vec<String> = partitions.iter().map(Partition::id).collect();
        ledger.delete_partitions(target, asset, &ids).await?;
        let (left, totals) = ledger.partition_sums(target, asset).await?;
        if left > 0 {
            if let Some((version, _)) = previous {
                ledger
                    .update_asset(target, asset, version + 1, totals, Utc::now())
                    .await?;
            }
            return Ok(());
        }
    }
    ledger.delete_asset(target, asset).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overwrites_replace_and_other_modes_add() {
        let before = Totals {
            rows: 10,
            bytes: 100,
        };
        let written = Totals { rows: 1, bytes: 2 };
        assert_eq!(
            Totals::after(Some(before), Mode::Overwrite, written),
            written
        );
        for mode in [Mode::Append, Mode::Upsert] {
            assert_eq!(
                Totals::after(Some(before), mode, written),
                Totals {
                    rows: 11,
                    bytes: 102
                }
            );
            assert_eq!(Totals::after(None, mode, written), written);
        }
    }

    #[test]
    fn counts_beyond_bigint_saturate() {
        assert_eq!(to_i64(u64::MAX), i64::MAX);
        assert_eq!(to_i64(7), 7);
    }
}
