//! Parquet encoding with the columns of each batch shared out over several threads.
//!
//! [`ArrowWriter`] encodes one column after another on the calling thread. This encoder does
//! what it does (the same file, byte for byte in layout: row groups of at most
//! `row_group_size` rows, the Arrow schema embedded) but hands the column writers of a row
//! group to a few threads, each taking the next column still to encode, so one wide string
//! column does not hold up the rest.

use std::sync::{Mutex, PoisonError};

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_writer::{
    ArrowColumnChunk, ArrowColumnWriter, ArrowRowGroupWriterFactory, compute_leaves,
};
use parquet::errors::{ParquetError, Result as ParquetResult};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;

use crate::targets::file::SharedBuffer;
use crate::targets::file::parallel::{for_each_parallel, threads_for};
use crate::targets::lock;

pub(super) struct ParallelEncoder {
    /// `None` once finished.
    file: Option<SerializedFileWriter<SharedBuffer>>,
    factory: ArrowRowGroupWriterFactory,
    schema: SchemaRef,
    /// The row group being filled, if any.
    group: Option<RowGroup>,
    groups_written: usize,
    max_rows: usize,
    threads: usize,
}

/// The column writers of one row group; each is locked by the thread encoding it.
struct RowGroup {
    columns: Vec<Mutex<Option<ArrowColumnWriter>>>,
    rows: usize,
}

impl ParallelEncoder {
    pub(super) fn try_new(
        out: SharedBuffer,
        schema: SchemaRef,
        properties: WriterProperties,
        threads: usize,
    ) -> ParquetResult<Self> {
        let max_rows = properties
            .max_row_group_row_count()
            .unwrap_or(usize::MAX)
            .max(1);
        // ArrowWriter builds the Parquet schema and embeds the Arrow one; it has nothing
        // buffered yet, so taking its parts apart writes nothing but the file's magic.
        let (file, factory) = ArrowWriter::try_new(out, schema.clone(), Some(properties))?
            .into_serialized_writer()?;
        Ok(Self {
            file: Some(file),
            factory,
            schema,
            group: None,
            groups_written: 0,
            max_rows,
            threads: threads.max(1),
        })
    }

    pub(super) fn write(&mut self, batch: &RecordBatch) -> ParquetResult<()> {
        let mut remaining = batch.clone();
        while remaining.num_rows() > 0 {
            let group = match self.group.take() {
                Some(group) => group,
                None => RowGroup {
                    columns: self
                        .factory
                        .create_column_writers(self.groups_written)?
                        .into_iter()
                        .map(|w| Mutex::new(Some(w)))
                        .collect(),
                    rows: 0,
                },
            };
            let group = self.group.insert(group);
            let room = self.max_rows - group.rows;
            let now = if remaining.num_rows() > room {
                let now = remaining.slice(0, room);
                remaining = remaining.slice(room, remaining.num_rows() - room);
                now
            } else {
                std::mem::replace(&mut remaining, batch.slice(0, 0))
            };
            let leaves = self
                .schema
                .fields()
                .iter()
                .zip(now.columns())
                .map(|(field, column)| compute_leaves(field, column))
                .collect::<ParquetResult<Vec<_>>>()?
                .into_iter()
                .flatten()
                .collect::<Vec<_>>();
            for_each_parallel(
                leaves.len(),
                threads_for(now.num_rows(), self.threads),
                |i| {
                    let mut writer = lock(&group.columns[i]);
                    let writer = writer
                        .as_mut()
                        .ok_or_else(|| ParquetError::General("column writer closed".to_string()))?;
                    writer.write(&leaves[i])
                },
            )?;
            group.rows += now.num_rows();
            if group.rows >= self.max_rows {
                self.flush()?;
            }
        }
        Ok(())
    }

    /// Closes the row group being filled and appends it to the file.
    fn flush(&mut self) -> ParquetResult<()> {
        let Some(group) = self.group.take() else {
            return Ok(());
        };
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| ParquetError::General("parquet file already finished".to_string()))?;
        let chunks: Vec<Mutex<Option<ArrowColumnChunk>>> =
            group.columns.iter().map(|_| Mutex::new(None)).collect();
        // Closing a column compresses its last page and its dictionary: worth sharing out.
        for_each_parallel(group.columns.len(), self.threads, |i| {
            let writer = lock(&group.columns[i])
                .take()
                .ok_or_else(|| ParquetError::General("column writer closed twice".to_string()))?;
            *lock(&chunks[i]) = Some(writer.close()?);
            Ok::<_, ParquetError>(())
        })?;
        let mut row_group = file.next_row_group()?;
        for chunk in chunks {
            let chunk = chunk
                .into_inner()
                .unwrap_or_else(PoisonError::into_inner)
                .ok_or_else(|| ParquetError::General("column chunk missing".to_string()))?;
            chunk.append_to_row_group(&mut row_group)?;
        }
        row_group.close()?;
        self.groups_written += 1;
        Ok(())
    }

    /// Writes the last row group and the footer.
    pub(super) fn finish(&mut self) -> ParquetResult<()> {
        self.flush()?;
        let file = self
            .file
            .take()
            .ok_or_else(|| ParquetError::General("parquet file finished twice".to_string()))?;
        file.close()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::types::Int32Type;
    use arrow_array::{ArrayRef, Int64Array, ListArray, StringArray, StructArray};
    use arrow_schema::{DataType, Field, Fields, Schema};
    use bytes::Bytes;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    use super::*;

    fn batch(start: i64, rows: usize) -> RecordBatch {
        let ids = Int64Array::from_iter_values(start..start + rows as i64);
        let names = StringArray::from_iter_values((0..rows).map(|i| format!("name-{}", i % 97)));
        let lists = ListArray::from_iter_primitive::<Int32Type, _, _>(
            (0..rows).map(|i| (i % 5 != 0).then(|| vec![Some(i as i32), None])),
        );
        let inner = Arc::new(Int64Array::from_iter(
            (0..rows).map(|i| (i % 3 != 0).then_some(i as i64 * 7)),
        )) as ArrayRef;
        let point = StructArray::new(
            Fields::from(vec![Field::new("x", DataType::Int64, true)]),
            vec![inner],
            None,
        );
        RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(ids),
                Arc::new(names),
                Arc::new(lists),
                Arc::new(point),
            ],
        )
        .unwrap()
    }

    fn schema() -> SchemaRef {
        let item = Field::new_list_field(DataType::Int32, true);
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, false),
            Field::new("values", DataType::List(Arc::new(item)), true),
            Field::new(
                "point",
                DataType::Struct(Fields::from(vec![Field::new("x", DataType::Int64, true)])),
                false,
            ),
        ]))
    }

    fn encode(batches: &[RecordBatch], row_group_rows: usize, threads: usize) -> Bytes {
        let out = SharedBuffer::default();
        let properties = WriterProperties::builder()
            .set_max_row_group_row_count(Some(row_group_rows))
            .build();
        let mut encoder =
            ParallelEncoder::try_new(out.clone(), schema(), properties, threads).unwrap();
        for b in batches {
            encoder.write(b).unwrap();
        }
        encoder.finish().unwrap();
        Bytes::from(out.take())
    }

    #[test]
    fn parallel_encoding_reads_back_like_the_input_with_row_groups_split_exactly() {
        let batches = [batch(0, 10_000), batch(10_000, 25), batch(10_025, 9_000)];
        let file = encode(&batches, 8_192, 3);
        let reader = ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
        let groups: Vec<i64> = reader
            .metadata()
            .row_groups()
            .iter()
            .map(|g| g.num_rows())
            .collect();
        assert_eq!(groups, vec![8_192, 8_192, 2_641]);
        let read: Vec<RecordBatch> = reader.build().unwrap().map(Result::unwrap).collect();
        let expected = arrow_select::concat::concat_batches(&schema(), &batches).unwrap();
        let actual = arrow_select::concat::concat_batches(&schema(), &read).unwrap();
        assert_eq!(actual, expected);
    }

    #[test]
    fn one_thread_and_many_threads_write_the_same_file() {
        let batches = [batch(0, 20_000), batch(20_000, 5_000)];
        assert_eq!(encode(&batches, 16_384, 1), encode(&batches, 16_384, 4));
    }

    #[test]
    fn an_empty_put_is_a_valid_file_without_row_groups() {
        let file = encode(&[], 1024, 2);
        let reader = ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
        assert_eq!(reader.metadata().num_row_groups(), 0);
        assert_eq!(reader.schema().fields().len(), 4);
    }
}
