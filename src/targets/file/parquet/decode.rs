//! Reading a Parquet file back with its columns decoded by several tasks at once.
//!
//! The projected root columns are split into groups of about equal compressed size; each
//! group is read by its own [`ParquetRecordBatchStream`] on its own task, a little ahead of
//! the reader, and the groups' batches are put side by side again. Every group reads the same
//! row groups with the same batch size, so the n-th batches of all groups hold the same rows.

use std::sync::Arc;

use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{FieldRef, Schema, SchemaRef};
use futures::StreamExt;
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions};
use parquet::arrow::{ParquetRecordBatchStreamBuilder, ProjectionMask};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::{PinnedParquetReader, READ_BATCH_ROWS, parquet_read_error};
use crate::error::{Error, Result};
use crate::targets::SendableBatchStream;

/// Decoded batches each group may hold ahead of the reader.
const READ_AHEAD: usize = 2;

pub(super) async fn read(
    mut reader: PinnedParquetReader,
    schema: SchemaRef,
    projection: Option<Vec<usize>>,
    threads: usize,
) -> Result<SendableBatchStream> {
    let target = reader.object.target.clone();
    let metadata = ArrowReaderMetadata::load_async(
        &mut reader,
        ArrowReaderOptions::new().with_schema(Arc::clone(&schema)),
    )
    .await
    .map_err(|e| parquet_read_error(&target, e))?;
    // Columns come out in the order asked for (repeats included); each is decoded once.
    let requested: Vec<usize> = projection.unwrap_or_else(|| (0..schema.fields().len()).collect());
    let mut roots = requested.clone();
    roots.sort_unstable();
    roots.dedup();
    let groups = split_by_size(&roots, &root_sizes(&metadata), threads);
    let mut receivers = Vec::with_capacity(groups.len());
    for group in &groups {
        let builder =
            ParquetRecordBatchStreamBuilder::new_with_metadata(reader.clone(), metadata.clone());
        let mask = ProjectionMask::roots(builder.parquet_schema(), group.iter().copied());
        let mut stream = builder
            .with_projection(mask)
            .with_batch_size(READ_BATCH_ROWS)
            .build()
            .map_err(|e| parquet_read_error(&target, e))?;
        let (tx, rx) = mpsc::channel(READ_AHEAD);
        let target = target.clone();
        tokio::spawn(async move {
            while let Some(item) = stream.next().await {
                let failed = item.is_err();
                if tx
                    .send(item.map_err(|e| parquet_read_error(&target, e)))
                    .await
                    .is_err()
                    || failed
                {
                    break;
                }
            }
        });
        receivers.push(rx);
    }
    if groups.len() == 1 && groups[0] == requested {
        let rx = receivers.pop().expect("one group");
        return Ok(Box::pin(ReceiverStream::new(rx)));
    }
    let placement = placement(&requested, &groups);
    // `None` once the stream has ended or failed: nothing follows an error.
    let state = Some((receivers, placement, target));
    let stream = futures::stream::unfold(state, |state| async move {
        let (mut receivers, placement, target) = state?;
        let mut parts = Vec::with_capacity(receivers.len());
        for rx in &mut receivers {
            match rx.recv().await {
                Some(Ok(batch)) => parts.push(batch),
                Some(Err(e)) => return Some((Err(e), None)),
                None => break,
            }
        }
        if parts.is_empty() {
            return None;
        }
        match merge(&parts, receivers.len(), &placement) {
            Ok(batch) => Some((Ok(batch), Some((receivers, placement, target)))),
            Err(reason) => Some((
                Err(Error::format(&target, "read a Parquet file", reason)),
                None,
            )),
        }
    });
    Ok(Box::pin(stream))
}

/// Compressed bytes per root column over all row groups.
fn root_sizes(metadata: &ArrowReaderMetadata) -> Vec<u64> {
    let schema = metadata.parquet_schema();
    let mut sizes = vec![0u64; schema.root_schema().get_fields().len()];
    for row_group in metadata.metadata().row_groups() {
        for (leaf, column) in row_group.columns().iter().enumerate() {
            let root = schema.get_column_root_idx(leaf);
            sizes[root] += u64::try_from(column.compressed_size()).unwrap_or(0);
        }
    }
    sizes
}

/// Splits `roots` into at most `threads` groups of about equal size, biggest first onto the
/// lightest group; each group's roots ascending. Never returns no group.
fn split_by_size(roots: &[usize], sizes: &[u64], threads: usize) -> Vec<Vec<usize>> {
    let count = threads.min(roots.len()).max(1);
    let mut by_size = roots.to_vec();
    by_size.sort_by_key(|&r| std::cmp::Reverse(sizes.get(r).copied().unwrap_or(0)));
    let mut groups: Vec<(u64, Vec<usize>)> = vec![(0, Vec::new()); count];
    for root in by_size {
        let lightest = groups
            .iter_mut()
            .min_by_key(|(size, _)| *size)
            .expect("at least one group");
        lightest.0 += sizes.get(root).copied().unwrap_or(0);
        lightest.1.push(root);
    }
    groups
        .into_iter()
        .map(|(_, mut roots)| {
            roots.sort_unstable();
            roots
        })
        .filter(|roots| !roots.is_empty() || count == 1)
        .collect()
}

/// For each of the `requested` roots, the group holding it and its column there.
fn placement(requested: &[usize], groups: &[Vec<usize>]) -> Vec<(usize, usize)> {
    requested
        .iter()
        .map(|root| {
            groups
                .iter()
                .enumerate()
                .find_map(|(g, group)| group.iter().position(|r| r == root).map(|c| (g, c)))
                .expect("every root is in a group")
        })
        .collect()
}

/// Puts the n-th batches of every group side by side.
fn merge(
    parts: &[RecordBatch],
    groups: usize,
    placement: &[(usize, usize)],
) -> Result<RecordBatch, String> {
    if parts.len() != groups {
        return Err(format!(
            "{} of {groups} column groups ended early",
            groups - parts.len()
        ));
    }
    let rows = parts[0].num_rows();
    if let Some(odd) = parts.iter().find(|p| p.num_rows() != rows) {
        return Err(format!(
            "column groups decoded {rows} and {} rows for the same batch",
            odd.num_rows()
        ));
    }
    let (fields, columns): (Vec<FieldRef>, Vec<ArrayRef>) = placement
        .iter()
        .map(|&(g, c)| {
            (
                Arc::clone(&parts[g].schema().fields()[c]),
                Arc::clone(parts[g].column(c)),
            )
        })
        .unzip();
    let schema = Schema::new_with_metadata(fields, parts[0].schema().metadata().clone());
    RecordBatch::try_new(Arc::new(schema), columns).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_balance_compressed_size_and_keep_file_order_inside() {
        let sizes = [100, 10, 10, 80, 5, 5];
        let groups = split_by_size(&[0, 1, 2, 3, 4, 5], &sizes, 2);
        assert_eq!(groups, vec![vec![0, 4], vec![1, 2, 3, 5]]);
        assert_eq!(
            placement(&[0, 1, 2, 3, 4, 5], &groups),
            vec![(0, 0), (1, 0), (1, 1), (1, 2), (0, 1), (1, 3)]
        );
    }

    #[test]
    fn columns_are_placed_in_the_order_asked_for_with_repeats() {
        let groups = vec![vec![0, 2], vec![1]];
        assert_eq!(
            placement(&[2, 1, 0, 2], &groups),
            vec![(0, 1), (1, 0), (0, 0), (0, 1)]
        );
    }

    #[test]
    fn fewer_columns_than_threads_and_empty_projections_still_make_groups() {
        assert_eq!(split_by_size(&[3], &[1, 2, 3, 4], 8), vec![vec![3]]);
        assert_eq!(split_by_size(&[], &[1, 2], 4), vec![Vec::<usize>::new()]);
    }
}
