//! Decoding a DoPut stream into record batches without copying message bodies.
//!
//! arrow-flight's `FlightDataDecoder` copies every message body into a fresh allocation
//! unless gRPC happened to leave it 64-byte aligned, which it practically never does: a
//! put of N bytes allocated, zeroed and copied N bytes more. Here the body is wrapped as it
//! arrived and the IPC reader copies only the buffers whose type needs an alignment the body
//! does not give (string and binary values, bitmaps and bytes never do).
//!
//! Each batch's header is checked against its body and the schema before the IPC reader sees
//! it. The reader takes every buffer where the header says and panics when that is outside
//! the body; it views offsets, dictionary keys and string views as slices of their type and
//! panics on a partial value at the end; it slices union type ids by the length the header
//! claims and reads dense union offsets in place, unaligned or not; and it allocates what a
//! compressed buffer says it holds. So a truncated or forged message would take its task down,
//! or the server's memory. A message refused here names itself, the column, and what is wrong.

use std::collections::{HashMap, VecDeque};
use std::ops::Range;
use std::sync::Arc;

use arrow_array::ArrayRef;
use arrow_buffer::Buffer;
use arrow_flight::FlightData;
use arrow_flight::decode::DecodedPayload;
use arrow_flight::error::FlightError;
use arrow_ipc::reader::{RecordBatchDecoder, read_dictionary};
use arrow_ipc::{MessageHeader, MetadataVersion};
use arrow_schema::{DataType, Field, Schema, SchemaRef, UnionMode};
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use tonic::Status;

use crate::error::{echo, echo_in};

type Result<T, E = FlightError> = std::result::Result<T, E>;

/// What a refusal of an undecodable message asks the client to do.
const RESEND: &str = "send each batch whole, as an Arrow IPC writer encodes it";

/// The payloads of a stream of [`FlightData`] messages, in order: the schema, then batches.
/// Dictionary batches update the decoder's state and yield nothing. A message that cannot be
/// decoded ends the stream with an `INVALID_ARGUMENT` status, one whose buffers hold more than
/// `max_batch_bytes` (compressed buffers counted as they decompress) with `RESOURCE_EXHAUSTED`.
pub struct BatchDecoder {
    input: BoxStream<'static, Result<FlightData>>,
    schema: Option<SchemaRef>,
    dictionaries: HashMap<i64, ArrayRef>,
    max_batch_bytes: usize,
    /// Messages and record batches read so far, to name the one refused.
    messages: u64,
    batches: u64,
}

impl BatchDecoder {
    pub fn new(
        input: impl Stream<Item = Result<FlightData>> + Send + 'static,
        max_batch_bytes: usize,
    ) -> Self {
        Self {
            input: input.boxed(),
            schema: None,
            dictionaries: HashMap::new(),
            max_batch_bytes,
            messages: 0,
            batches: 0,
        }
    }

    /// The next schema or batch; `None` at the end of the stream.
    pub async fn next(&mut self) -> Option<Result<DecodedPayload>> {
        loop {
            let data = match self.input.next().await? {
                Ok(data) => data,
                Err(e) => return Some(Err(e)),
            };
            match self.decode(data) {
                Ok(Some(payload)) => return Some(Ok(payload)),
                Ok(None) => {}
                Err(e) => return Some(Err(e)),
            }
        }
    }

    fn decode(&mut self, data: FlightData) -> Result<Option<DecodedPayload>> {
        self.messages += 1;
        // A message with only app_metadata carries no IPC header.
        if data.data_header.is_empty() {
            return Ok(Some(DecodedPayload::None));
        }
        let message = arrow_ipc::root_as_message(&data.data_header).map_err(|e| {
            self.invalid(
                format!("message {}", self.messages),
                format!("its header is not an Arrow IPC message ({e})"),
            )
        })?;
        match message.header_type() {
            MessageHeader::NONE => Ok(Some(DecodedPayload::None)),
            MessageHeader::Schema => {
                let schema = Schema::try_from(&data).map_err(|e| {
                    self.invalid(
                        format!("the schema in message {}", self.messages),
                        echo_in(&e.to_string()),
                    )
                })?;
                let schema = Arc::new(schema);
                self.schema = Some(Arc::clone(&schema));
                self.dictionaries.clear();
                Ok(Some(DecodedPayload::Schema(schema)))
            }
            MessageHeader::DictionaryBatch => {
                let subject = format!("the dictionary batch in message {}", self.messages);
                let schema = self.schema(&subject)?;
                let batch = message
                    .header_as_dictionary_batch()
                    .ok_or_else(|| self.invalid(&subject, "it has no dictionary batch header"))?;
                let id = batch.id();
                #[expect(deprecated, reason = "arrow-ipc matches dictionaries by these ids")]
                let value_type = schema
                    .fields_with_dict_id(id)
                    .iter()
                    .find_map(|field| match field.data_type() {
                        DataType::Dictionary(_, values) => Some(values.as_ref().clone()),
                        _ => None,
                    })
                    .ok_or_else(|| {
                        self.invalid(
                            &subject,
                            format!(
                                "it is for dictionary id {id}, which no column of the schema uses"
                            ),
                        )
                    })?;
                let data_header = batch
                    .data()
                    .ok_or_else(|| self.invalid(&subject, "it carries no record batch"))?;
                let values = Field::new("", value_type, true);
                let body = self.check(
                    &subject,
                    data_header,
                    &[&values],
                    Buffer::from(data.data_body),
                    message.version(),
                )?;
                read_dictionary(
                    &body,
                    batch,
                    &schema,
                    &mut self.dictionaries,
                    &message.version(),
                )
                .map_err(|e| self.invalid(&subject, echo_in(&e.to_string())))?;
                Ok(None)
            }
            MessageHeader::RecordBatch => {
                self.batches += 1;
                let subject = format!("record batch {} (message {})", self.batches, self.messages);
                let schema = self.schema(&subject)?;
                let header = message
                    .header_as_record_batch()
                    .ok_or_else(|| self.invalid(&subject, "it has no record batch header"))?;
                let fields: Vec<&Field> = schema.fields().iter().map(AsRef::as_ref).collect();
                let body = self.check(
                    &subject,
                    header,
                    &fields,
                    Buffer::from(data.data_body),
                    message.version(),
                )?;
                let batch = RecordBatchDecoder::try_new(
                    &body,
                    header,
                    Arc::clone(&schema),
                    &self.dictionaries,
                    &message.version(),
                )
                .and_then(RecordBatchDecoder::read_record_batch)
                .map_err(|e| self.invalid(&subject, echo_in(&e.to_string())))?;
                Ok(Some(DecodedPayload::RecordBatch(batch)))
            }
            other => Err(self.invalid(
                format!("message {}", self.messages),
                format!(
                    "it is a {} message, which a DoPut stream does not carry",
                    other.variant_name().unwrap_or("unknown")
                ),
            )),
        }
    }

    fn schema(&self, subject: &str) -> Result<SchemaRef> {
        self.schema.clone().ok_or_else(|| {
            FlightError::Tonic(Box::new(Status::invalid_argument(format!(
                "{subject} of the DoPut stream arrived before the schema; send the schema first"
            ))))
        })
    }

    /// Checks `batch` (the header of a record batch, or of a dictionary batch's values) against
    /// its body and the fields it holds before the IPC reader reads it; the body to read it
    /// from.
    fn check(
        &self,
        subject: &str,
        batch: arrow_ipc::RecordBatch<'_>,
        fields: &[&Field],
        body: Buffer,
        version: MetadataVersion,
    ) -> Result<Buffer> {
        let refused = match Layout::check(batch, fields, &body, version, self.max_batch_bytes) {
            Ok(false) => return Ok(body),
            Ok(true) => return Ok(Buffer::from_slice_ref(&body)),
            Err(refused) => refused,
        };
        Err(match refused {
            Refusal::Invalid(problem) => self.invalid(subject, problem),
            Refusal::TooLarge => FlightError::Tonic(Box::new(Status::resource_exhausted(format!(
                "{subject} of the DoPut stream holds more than {} bytes once decompressed, the \
                 most a batch may (limits.max_message_bytes); send smaller batches",
                self.max_batch_bytes
            )))),
        })
    }

    fn invalid(&self, subject: impl AsRef<str>, problem: impl AsRef<str>) -> FlightError {
        FlightError::Tonic(Box::new(Status::invalid_argument(format!(
            "{} of the DoPut stream could not be decoded: {}; {RESEND}",
            subject.as_ref(),
            problem.as_ref()
        ))))
    }
}

/// A buffer taken: its length once decompressed, and where it starts in the body unless it
/// is decompressed elsewhere.
struct Taken {
    bytes: usize,
    at: Option<usize>,
}

/// Why a batch header is refused.
enum Refusal {
    Invalid(String),
    /// Its buffers add up to more than the limit.
    TooLarge,
}

/// A batch header's field nodes and buffers, taken in the order the IPC reader takes them.
struct Layout<'a> {
    body: &'a [u8],
    compressed: bool,
    /// Unions have a validity buffer before metadata version 5.
    union_validity: bool,
    nodes: Vec<i64>,
    next_node: usize,
    buffers: Vec<(i64, i64)>,
    next_buffer: usize,
    variadic_counts: VecDeque<i64>,
    /// Bytes of the buffers taken so far, compressed ones as they decompress.
    bytes: usize,
    max_bytes: usize,
    /// A buffer the reader needs aligned is not: read from an aligned copy of the body.
    realign: bool,
}

impl<'a> Layout<'a> {
    fn check(
        batch: arrow_ipc::RecordBatch<'_>,
        fields: &[&Field],
        body: &'a [u8],
        version: MetadataVersion,
        max_bytes: usize,
    ) -> Result<bool, Refusal> {
        let invalid = |problem: String| Err(Refusal::Invalid(problem));
        if batch.length() < 0 {
            return invalid(format!("it says it has {} rows", batch.length()));
        }
        let Some(nodes) = batch.nodes() else {
            return invalid("its header lists no field nodes".into());
        };
        for (i, node) in nodes.iter().enumerate() {
            let (length, nulls) = (node.length(), node.null_count());
            if length < 0 || !(0..=length).contains(&nulls) {
                return invalid(format!(
                    "field node {i} says it has {length} values, {nulls} of them null"
                ));
            }
        }
        let Some(buffers) = batch.buffers() else {
            return invalid("its header lists no buffers".into());
        };
        let mut layout = Layout {
            body,
            compressed: batch.compression().is_some(),
            union_validity: version < MetadataVersion::V5,
            nodes: nodes.iter().map(|n| n.length()).collect(),
            next_node: 0,
            buffers: buffers.iter().map(|b| (b.offset(), b.length())).collect(),
            next_buffer: 0,
            variadic_counts: batch.variadicBufferCounts().into_iter().flatten().collect(),
            bytes: 0,
            max_bytes,
            realign: false,
        };
        for field in fields {
            layout.column(field, field.name())?;
        }
        // The reader does not read buffers past the ones the columns take; check them anyway.
        for index in layout.next_buffer..layout.buffers.len() {
            layout.span(index, "")?;
        }
        Ok(layout.realign)
    }

    /// Takes the nodes and buffers of `field`, part of the column named `column`.
    fn column(&mut self, field: &Field, column: &str) -> Result<(), Refusal> {
        use DataType::*;
        match field.data_type() {
            Utf8 | Binary => self.node_and_buffers(column, &[1, 4, 1]),
            LargeUtf8 | LargeBinary => self.node_and_buffers(column, &[1, 8, 1]),
            BinaryView | Utf8View => {
                let count = self.variadic_counts.pop_front().ok_or_else(|| {
                    Refusal::Invalid(format!(
                        "column '{}' holds views but the header gives no count of their buffers",
                        echo(column)
                    ))
                })?;
                let count = usize::try_from(count).map_err(|_| {
                    Refusal::Invalid(format!(
                        "column '{}' says it has {count} buffers of view data",
                        echo(column)
                    ))
                })?;
                self.node_and_buffers(column, &[1, 16])?;
                for _ in 0..count {
                    self.buffer(column, 1)?;
                }
                Ok(())
            }
            FixedSizeBinary(_) => self.node_and_buffers(column, &[1, 1]),
            Dictionary(keys, _) => {
                self.node_and_buffers(column, &[1, keys.primitive_width().unwrap_or(1)])
            }
            List(child) | Map(child, _) => {
                self.node_and_buffers(column, &[1, 4])?;
                self.column(child, column)
            }
            LargeList(child) => {
                self.node_and_buffers(column, &[1, 8])?;
                self.column(child, column)
            }
            ListView(child) => {
                self.node_and_buffers(column, &[1, 4, 4])?;
                self.column(child, column)
            }
            LargeListView(child) => {
                self.node_and_buffers(column, &[1, 8, 8])?;
                self.column(child, column)
            }
            FixedSizeList(child, _) => {
                self.node_and_buffers(column, &[1])?;
                self.column(child, column)
            }
            Struct(children) => {
                self.node_and_buffers(column, &[1])?;
                children.iter().try_for_each(|c| self.column(c, column))
            }
            RunEndEncoded(run_ends, values) => {
                self.node(column)?;
                self.column(run_ends, column)?;
                self.column(values, column)
            }
            Union(children, mode) => {
                let values = self.node(column)?;
                if self.union_validity {
                    self.buffer(column, 1)?;
                }
                let type_ids = self.buffer(column, 1)?;
                let short = |taken: &Taken, width: usize| {
                    values.checked_mul(width).is_none_or(|n| taken.bytes < n)
                };
                let mut short_ids = short(&type_ids, 1);
                if *mode == UnionMode::Dense {
                    let offsets = self.buffer(column, 4)?;
                    short_ids |= short(&offsets, 4);
                    // The reader takes these offsets as they lie in the body, without copying.
                    if let Some(at) = offsets.at {
                        if !at.is_multiple_of(4) {
                            return Err(Refusal::Invalid(format!(
                                "the offsets of union column '{}' start at byte {at} of the \
                                 body, not on a 4-byte boundary",
                                echo(column)
                            )));
                        }
                        self.realign |= !(self.body.as_ptr() as usize + at).is_multiple_of(4);
                    }
                }
                if short_ids {
                    return Err(Refusal::Invalid(format!(
                        "column '{}' is a union of {values} values whose type ids or offsets \
                         take fewer bytes than that",
                        echo(column)
                    )));
                }
                children
                    .iter()
                    .try_for_each(|(_, c)| self.column(c, column))
            }
            Null => self.node(column).map(drop),
            other => self.node_and_buffers(column, &[1, other.primitive_width().unwrap_or(1)]),
        }
    }

    /// Takes a field node, then one buffer of values of each of `widths` bytes.
    fn node_and_buffers(&mut self, column: &str, widths: &[usize]) -> Result<(), Refusal> {
        self.node(column)?;
        for &width in widths {
            self.buffer(column, width)?;
        }
        Ok(())
    }

    /// Takes the next field node; its length.
    fn node(&mut self, column: &str) -> Result<usize, Refusal> {
        let Some(&length) = self.nodes.get(self.next_node) else {
            return Err(Refusal::Invalid(format!(
                "the header lists {} field nodes, too few for the schema's columns (short at \
                 column '{}')",
                self.nodes.len(),
                echo(column)
            )));
        };
        self.next_node += 1;
        // Checked not negative before.
        Ok(usize::try_from(length).unwrap_or(usize::MAX))
    }

    /// Takes the next buffer, of values `width` bytes wide.
    fn buffer(&mut self, column: &str, width: usize) -> Result<Taken, Refusal> {
        let index = self.next_buffer;
        if index >= self.buffers.len() {
            return Err(Refusal::Invalid(format!(
                "the header lists {} buffers, too few for the schema's columns (short at column \
                 '{}')",
                self.buffers.len(),
                echo(column)
            )));
        }
        self.next_buffer += 1;
        let span = self.span(index, column)?;
        let taken = if self.compressed && !span.is_empty() {
            self.decompressed(index, span, column)?
        } else {
            Taken {
                bytes: span.len(),
                at: Some(span.start),
            }
        };
        // The reader views offsets, keys and views as slices of their type, which panics on a
        // partial value at the end.
        if !taken.bytes.is_multiple_of(width) {
            return Err(Refusal::Invalid(format!(
                "column '{}': buffer {index} holds {} bytes, not a whole number of {width}-byte \
                 values",
                echo(column),
                taken.bytes
            )));
        }
        self.bytes = self.bytes.saturating_add(taken.bytes);
        if self.bytes > self.max_bytes {
            return Err(Refusal::TooLarge);
        }
        Ok(taken)
    }

    /// Where buffer `index` is in the body; refused when any of it is outside.
    fn span(&self, index: usize, column: &str) -> Result<Range<usize>, Refusal> {
        let (offset, length) = self.buffers[index];
        let span = usize::try_from(offset)
            .ok()
            .zip(usize::try_from(length).ok())
            .and_then(|(start, length)| Some(start..start.checked_add(length)?))
            .filter(|span| span.end <= self.body.len());
        span.ok_or_else(|| {
            let whose = if column.is_empty() {
                String::new()
            } else {
                format!("column '{}': ", echo(column))
            };
            Refusal::Invalid(format!(
                "{whose}buffer {index} says {length} bytes at offset {offset}, but the message \
                 body has {} bytes",
                self.body.len()
            ))
        })
    }

    /// What a compressed buffer says it decompresses to, from its 8-byte prefix.
    fn decompressed(
        &self,
        index: usize,
        span: Range<usize>,
        column: &str,
    ) -> Result<Taken, Refusal> {
        let invalid = |problem: String| {
            Refusal::Invalid(format!(
                "column '{}': compressed buffer {index} {problem}",
                echo(column)
            ))
        };
        let prefix = self
            .body
            .get(span.start..span.start + 8)
            .filter(|_| span.len() >= 8)
            .ok_or_else(|| invalid(format!("has {} bytes, no room for its length", span.len())))?;
        match i64::from_le_bytes(prefix.try_into().expect("8 bytes")) {
            // Stored uncompressed after the prefix.
            -1 => Ok(Taken {
                bytes: span.len() - 8,
                at: Some(span.start + 8),
            }),
            length => Ok(Taken {
                bytes: usize::try_from(length)
                    .map_err(|_| invalid(format!("says it decompresses to {length} bytes")))?,
                at: None,
            }),
        }
    }
}
#[cfg(test)]
mod tests {
    use arrow_array::{
        Array, DictionaryArray, Int32Array, Int64Array, ListArray, RecordBatch, RunArray,
        StringArray, StringViewArray, StructArray, UnionArray, types::Int32Type,
    };
    use arrow_buffer::ScalarBuffer;
    use arrow_flight::encode::{DictionaryHandling, FlightDataEncoderBuilder};
    use arrow_ipc::CompressionType;
    use arrow_ipc::writer::IpcWriteOptions;
    use arrow_schema::UnionFields;
    use bytes::{Bytes, BytesMut};
    use futures::TryStreamExt;
    use tonic::Code;

    use super::*;

    const LIMIT: usize = 1 << 30;

    fn batch(offset: i64) -> RecordBatch {
        let ids: Int64Array = (offset..offset + 1000).collect();
        let names: StringArray = (offset..offset + 1000)
            .map(|i| Some(format!("name {i}")))
            .collect();
        let kinds: DictionaryArray<Int32Type> = (0..1000)
            .map(|i| ["a", "b", "c"][i % 3])
            .collect::<DictionaryArray<Int32Type>>();
        let small = Int32Array::from_iter((0..1000).map(|i| (i % 7 != 0).then_some(i)));
        RecordBatch::try_from_iter([
            ("id", Arc::new(ids) as ArrayRef),
            ("name", Arc::new(names)),
            ("kind", Arc::new(kinds)),
            ("small", Arc::new(small)),
        ])
        .unwrap()
    }

    /// Re-homes a body at `shift` bytes past an aligned address, as gRPC leaves it.
    fn misalign(body: &Bytes, shift: usize) -> Bytes {
        let mut out = BytesMut::with_capacity(body.len() + 64);
        out.extend_from_slice(&vec![0; shift]);
        out.extend_from_slice(body);
        out.freeze().slice(shift..)
    }

    async fn encoded(batches: Vec<RecordBatch>) -> Vec<FlightData> {
        FlightDataEncoderBuilder::new()
            .with_dictionary_handling(DictionaryHandling::Resend)
            .build(futures::stream::iter(batches.into_iter().map(Ok)))
            .try_collect()
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn decodes_batches_and_dictionaries_from_bodies_at_any_alignment() {
        let sent = vec![batch(0), batch(1000), batch(2000)];
        for shift in [0, 1, 3, 4, 8, 13] {
            let messages: Vec<_> = encoded(sent.clone())
                .await
                .into_iter()
                .map(|mut m| {
                    m.data_body = misalign(&m.data_body, shift);
                    Ok(m)
                })
                .collect();
            let mut decoder = BatchDecoder::new(futures::stream::iter(messages), LIMIT);
            let Some(Ok(DecodedPayload::Schema(schema))) = decoder.next().await else {
                panic!("no schema first");
            };
            assert_eq!(schema, sent[0].schema());
            let mut got = Vec::new();
            while let Some(item) = decoder.next().await {
                match item.unwrap() {
                    DecodedPayload::RecordBatch(b) => got.push(b),
                    other => panic!("unexpected {other:?}"),
                }
            }
            assert_eq!(got, sent, "body shifted by {shift}");
        }
    }

    #[tokio::test]
    async fn string_values_stay_in_the_received_body() {
        let messages = encoded(vec![batch(0)]).await;
        let body = misalign(&messages.last().unwrap().data_body, 3);
        let range = body.as_ptr_range();
        let messages = messages.into_iter().map(move |mut m| {
            if m.data_body.len() == body.len() {
                m.data_body = body.clone();
            }
            Ok(m)
        });
        let mut decoder = BatchDecoder::new(futures::stream::iter(messages), LIMIT);
        decoder.next().await.unwrap().unwrap();
        let Some(Ok(DecodedPayload::RecordBatch(got))) = decoder.next().await else {
            panic!("no batch");
        };
        let names = got
            .column(1)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        assert!(
            range.contains(&names.values().as_ptr()),
            "the values were copied"
        );
        let ids = got.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
        assert_eq!(
            ids.values().inner().as_ptr() as usize % 8,
            0,
            "i64 values are aligned"
        );
    }

    #[tokio::test]
    async fn a_batch_before_the_schema_and_a_garbled_header_are_errors() {
        let messages = encoded(vec![batch(0)]).await;
        let mut decoder = BatchDecoder::new(
            futures::stream::iter(messages.into_iter().skip(1).map(Ok)),
            LIMIT,
        );
        let err = decoder.next().await.unwrap().unwrap_err();
        assert!(err.to_string().contains("before the schema"), "{err}");

        let garbled = FlightData {
            data_header: Bytes::from_static(b"not flatbuffers at all"),
            ..Default::default()
        };
        let mut decoder = BatchDecoder::new(futures::stream::iter([Ok(garbled)]), LIMIT);
        let err = decoder.next().await.unwrap().unwrap_err();
        assert!(
            err.to_string().contains("not an Arrow IPC message"),
            "{err}"
        );
    }

    /// A column of every layout the reader knows: nulls, offsets, dictionaries, views,
    /// nesting, unions of both modes, run ends.
    fn varied(rows: usize) -> RecordBatch {
        let n = i32::try_from(rows).unwrap();
        let ids: Int64Array = (0..n)
            .map(|i| (i % 7 != 0).then_some(i64::from(i)))
            .collect();
        let names: StringArray = (0..n)
            .map(|i| (i % 5 != 0).then(|| format!("name {i}")))
            .collect();
        let kinds: DictionaryArray<Int32Type> = (0..rows).map(|i| ["a", "b", "c"][i % 3]).collect();
        let views: StringViewArray = (0..n)
            .map(|i| Some(format!("a view longer than twelve bytes {i}")))
            .collect();
        let lists = ListArray::from_iter_primitive::<Int32Type, _, _>(
            (0..n).map(|i| (i % 4 != 0).then(|| (0..i % 3).map(Some).collect::<Vec<_>>())),
        );
        let structs = StructArray::from(vec![(
            Arc::new(Field::new("x", DataType::Int32, false)),
            Arc::new(Int32Array::from_iter_values(0..n)) as ArrayRef,
        )]);
        let union_fields: UnionFields = [
            (0, Arc::new(Field::new("i", DataType::Int32, false))),
            (1, Arc::new(Field::new("s", DataType::Utf8, false))),
        ]
        .into_iter()
        .collect();
        let type_ids: ScalarBuffer<i8> = (0..n).map(|i| (i % 2) as i8).collect();
        let sparse = UnionArray::try_new(
            union_fields.clone(),
            type_ids.clone(),
            None,
            vec![
                Arc::new(Int32Array::from_iter_values(0..n)),
                Arc::new(StringArray::from_iter_values(
                    (0..n).map(|i| format!("s{i}")),
                )),
            ],
        )
        .unwrap();
        let dense = UnionArray::try_new(
            union_fields,
            type_ids,
            Some((0..n).map(|i| i / 2).collect()),
            vec![
                Arc::new(Int32Array::from_iter_values(0..(n + 1) / 2)),
                Arc::new(StringArray::from_iter_values(
                    (0..n / 2).map(|i| format!("d{i}")),
                )),
            ],
        )
        .unwrap();
        let ends: Vec<i32> = (3..n).step_by(3).chain([n]).collect();
        let runs = RunArray::<Int32Type>::try_new(
            &Int32Array::from_iter_values(ends.iter().copied()),
            &StringArray::from_iter_values((0..ends.len()).map(|i| format!("run {i}"))),
        )
        .unwrap();
        RecordBatch::try_from_iter([
            ("id", Arc::new(ids) as ArrayRef),
            ("name", Arc::new(names)),
            ("kind", Arc::new(kinds)),
            ("view", Arc::new(views)),
            ("list", Arc::new(lists)),
            ("struct", Arc::new(structs)),
            ("sparse", Arc::new(sparse)),
            ("dense", Arc::new(dense)),
            ("runs", Arc::new(runs)),
        ])
        .unwrap()
    }

    async fn encoded_with(
        batches: Vec<RecordBatch>,
        compression: Option<CompressionType>,
    ) -> Vec<FlightData> {
        let options = IpcWriteOptions::default()
            .try_with_compression(compression)
            .unwrap();
        FlightDataEncoderBuilder::new()
            .with_options(options)
            .with_dictionary_handling(DictionaryHandling::Resend)
            .build(futures::stream::iter(batches.into_iter().map(Ok)))
            .try_collect()
            .await
            .unwrap()
    }

    /// The batches a stream decodes to, or the status it is refused with.
    async fn outcome(messages: Vec<FlightData>, limit: usize) -> Result<Vec<RecordBatch>, Status> {
        let mut decoder =
            BatchDecoder::new(futures::stream::iter(messages.into_iter().map(Ok)), limit);
        let mut batches = Vec::new();
        while let Some(item) = decoder.next().await {
            match item {
                Ok(DecodedPayload::RecordBatch(batch)) => batches.push(batch),
                Ok(_) => {}
                Err(FlightError::Tonic(status)) => return Err(*status),
                Err(other) => panic!("a refusal that is not a status: {other}"),
            }
        }
        Ok(batches)
    }

    /// Asserts `result` is a refusal with `code` whose message has every one of `needles`.
    fn assert_refused<T: std::fmt::Debug>(result: Result<T, Status>, code: Code, needles: &[&str]) {
        let status = result.expect_err("a refusal");
        assert_eq!(status.code(), code, "{status:?}");
        for needle in needles {
            assert!(
                status.message().contains(needle),
                "{:?} lacks {needle:?}",
                status.message()
            );
        }
    }

    fn le(values: &[i64]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    /// Where `values` (little-endian i64s) occur in `bytes`.
    fn find(bytes: &[u8], values: &[i64]) -> Vec<usize> {
        let pattern = le(values);
        bytes
            .windows(pattern.len())
            .enumerate()
            .filter(|(_, w)| *w == pattern)
            .map(|(at, _)| at)
            .collect()
    }

    /// `bytes` with the one occurrence of `from` overwritten by `to`.
    fn patched(bytes: &[u8], from: &[i64], to: &[i64]) -> Bytes {
        let at = find(bytes, from);
        assert_eq!(at.len(), 1, "{from:?} occurs once");
        let mut out = bytes.to_vec();
        let to = le(to);
        out[at[0]..at[0] + to.len()].copy_from_slice(&to);
        out.into()
    }

    /// The (offset, length) of each buffer the batch message's header lists.
    fn buffers(message: &FlightData) -> Vec<(i64, i64)> {
        let header = arrow_ipc::root_as_message(&message.data_header).unwrap();
        let batch = header
            .header_as_record_batch()
            .or_else(|| header.header_as_dictionary_batch().and_then(|d| d.data()))
            .unwrap();
        batch
            .buffers()
            .unwrap()
            .iter()
            .map(|b| (b.offset(), b.length()))
            .collect()
    }

    /// The batch message's header with buffer `index` said to be `length` bytes at `offset`.
    fn with_buffer(message: &FlightData, index: usize, (offset, length): (i64, i64)) -> Bytes {
        let listed: Vec<i64> = buffers(message).iter().flat_map(|&(o, l)| [o, l]).collect();
        let mut changed = listed.clone();
        changed[2 * index..2 * index + 2].copy_from_slice(&[offset, length]);
        patched(&message.data_header, &listed, &changed)
    }

    fn ids(rows: i64) -> RecordBatch {
        RecordBatch::try_from_iter([(
            "id",
            Arc::new((0..rows).collect::<Int64Array>()) as ArrayRef,
        )])
        .unwrap()
    }

    #[tokio::test]
    async fn a_truncated_body_is_refused_naming_the_batch_and_the_column() {
        let mut messages = encoded(vec![ids(1000)]).await;
        assert_eq!(messages[1].data_body.len(), 8000);
        messages[1].data_body = messages[1].data_body.slice(..100);
        assert_refused(
            outcome(messages, LIMIT).await,
            Code::InvalidArgument,
            &[
                "record batch 1 (message 2) of the DoPut stream could not be decoded",
                "column 'id': buffer 1 says 8000 bytes at offset 0, but the message body has 100 bytes",
                RESEND,
            ],
        );
    }

    /// Headers whose nodes or buffers lie: each is refused with what is wrong, never a panic.
    #[tokio::test]
    async fn forged_batch_headers_are_refused() {
        // 1000 rows, 7 of them null: a validity buffer of 125 bytes (padded to 128), values of
        // 8000, one node of 1000 values with 7 nulls.
        let batch = RecordBatch::try_from_iter([(
            "id",
            Arc::new(Int64Array::from_iter(
                (0..1000).map(|i| (i % 143 != 0).then_some(i)),
            )) as ArrayRef,
        )])
        .unwrap();
        let messages = encoded(vec![batch]).await;
        assert_eq!(buffers(&messages[1]), [(0, 125), (128, 8000)]);
        let header = messages[1].data_header.clone();
        let with_header = |header: Bytes| {
            let mut messages = messages.clone();
            messages[1].data_header = header;
            messages
        };
        let cases: Vec<(Bytes, &str)> = vec![
            (
                patched(&header, &[128, 8000], &[128, -8000]),
                "buffer 1 says -8000 bytes at offset 128",
            ),
            (
                patched(&header, &[128, 8000], &[-128, 8000]),
                "buffer 1 says 8000 bytes at offset -128",
            ),
            (
                patched(&header, &[128, 8000], &[i64::MAX, 8000]),
                "at offset 9223372036854775807",
            ),
            (
                patched(&header, &[128, 8000], &[128, 80_000]),
                "buffer 1 says 80000 bytes",
            ),
            (
                patched(&header, &[0, 125], &[8125, 125]),
                "buffer 0 says 125 bytes at offset 8125",
            ),
            (
                patched(&header, &[1000, 7], &[-1000, 7]),
                "field node 0 says it has -1000 values",
            ),
            (
                patched(&header, &[1000, 7], &[1000, 2000]),
                "1000 values, 2000 of them null",
            ),
            (
                patched(&header, &[1000, 7], &[1000, -7]),
                "1000 values, -7 of them null",
            ),
            (
                patched(&header, &[1000, 7], &[999, 7]),
                "record batch 1 (message 2)",
            ),
            (
                header.slice(..header.len() / 2),
                "its header is not an Arrow IPC message",
            ),
        ];
        for (header, needle) in cases {
            assert_refused(
                outcome(with_header(header), LIMIT).await,
                Code::InvalidArgument,
                &["message 2", needle],
            );
        }

        // One buffer fewer than an int64 column needs: the vector's length is just before it.
        let at = find(&header, &[0, 125])[0];
        let mut fewer = header.to_vec();
        assert_eq!(fewer[at - 4..at], 2u32.to_le_bytes());
        fewer[at - 4..at].copy_from_slice(&1u32.to_le_bytes());
        assert_refused(
            outcome(with_header(fewer.into()), LIMIT).await,
            Code::InvalidArgument,
            &["the header lists 1 buffers, too few", "column 'id'"],
        );

        // A negative row count: the batch's own length, the 1000 that is not the node's.
        let node = find(&header, &[1000, 7]);
        let length: Vec<usize> = find(&header, &[1000])
            .into_iter()
            .filter(|at| !node.contains(at))
            .collect();
        assert_eq!(length.len(), 1);
        let mut negative = header.to_vec();
        negative[length[0]..length[0] + 8].copy_from_slice(&(-5i64).to_le_bytes());
        assert_refused(
            outcome(with_header(negative.into()), LIMIT).await,
            Code::InvalidArgument,
            &["it says it has -5 rows"],
        );
    }

    /// A union's type ids (and a dense union's offsets) shorter than its values.
    #[tokio::test]
    async fn unions_with_short_type_ids_or_offsets_are_refused() {
        let batch = varied(1000);
        // The first buffer of a sparse union is its type ids, the second of a dense its offsets.
        for (column, index) in [("sparse", 0), ("dense", 1)] {
            let one = batch
                .project(&[batch.schema().index_of(column).unwrap()])
                .unwrap();
            let mut messages = encoded(vec![one]).await;
            let (offset, length) = buffers(&messages[1])[index];
            assert_eq!(length, [1000, 4000][index]);
            messages[1].data_header = with_buffer(&messages[1], index, (offset, 12));
            assert_refused(
                outcome(messages, LIMIT).await,
                Code::InvalidArgument,
                &[
                    &format!("column '{column}' is a union of 1000 values"),
                    "type ids or offsets take fewer bytes",
                ],
            );
        }
        // Dense union offsets are read in place, so they must be aligned for i32.
        let dense = batch
            .project(&[batch.schema().index_of("dense").unwrap()])
            .unwrap();
        let mut messages = encoded(vec![dense]).await;
        let (offset, length) = buffers(&messages[1])[1];
        messages[1].data_header = with_buffer(&messages[1], 1, (offset + 2, length));
        assert_refused(
            outcome(messages, LIMIT).await,
            Code::InvalidArgument,
            &[
                "the offsets of union column 'dense' start at byte",
                "not on a 4-byte boundary",
            ],
        );
    }

    #[tokio::test]
    async fn every_layout_decodes_from_bodies_at_any_alignment() {
        let sent = vec![varied(100), varied(5)];
        for shift in [0, 1, 2, 3, 4, 8] {
            let messages: Vec<_> = encoded(sent.clone())
                .await
                .into_iter()
                .map(|mut m| {
                    m.data_body = misalign(&m.data_body, shift);
                    m
                })
                .collect();
            assert_eq!(
                outcome(messages, LIMIT).await.unwrap(),
                sent,
                "shift {shift}"
            );
        }
    }

    #[tokio::test]
    async fn dictionaries_that_do_not_match_the_schema_are_refused() {
        let kinds = |values: &[&str]| -> ArrayRef {
            Arc::new(
                values
                    .iter()
                    .copied()
                    .collect::<DictionaryArray<Int32Type>>(),
            )
        };
        let one = RecordBatch::try_from_iter([("kind", kinds(&["a", "b"]))]).unwrap();
        let two = RecordBatch::try_from_iter([
            ("kind", kinds(&["a", "a"])),
            ("more", kinds(&["x", "y"])),
        ])
        .unwrap();
        let one = encoded(vec![one]).await;
        let two = encoded(vec![two]).await;
        assert_eq!(
            (one.len(), two.len()),
            (3, 4),
            "schema, dictionaries, batch"
        );

        // A dictionary for an id the schema does not have.
        let lying = vec![one[0].clone(), two[2].clone(), one[2].clone()];
        assert_refused(
            outcome(lying, LIMIT).await,
            Code::InvalidArgument,
            &[
                "the dictionary batch in message 2",
                "dictionary id 1, which no column of the schema uses",
            ],
        );

        // A dictionary of other values than the schema's column holds.
        let numbers = RecordBatch::try_from_iter([(
            "kind",
            Arc::new(DictionaryArray::<Int32Type>::new(
                Int32Array::from(vec![0, 1]),
                Arc::new(Int64Array::from(vec![10, 20])),
            )) as ArrayRef,
        )])
        .unwrap();
        let numbers = encoded(vec![numbers]).await;
        let mismatched = vec![one[0].clone(), numbers[1].clone(), one[2].clone()];
        assert_refused(
            outcome(mismatched, LIMIT).await,
            Code::InvalidArgument,
            &["the dictionary batch in message 2", "too few"],
        );

        // Keys into a dictionary that never came.
        let missing = vec![one[0].clone(), one[2].clone()];
        assert_refused(
            outcome(missing, LIMIT).await,
            Code::InvalidArgument,
            &["record batch 1 (message 2)"],
        );
    }

    #[tokio::test]
    async fn compressed_batches_decode_within_the_limit_only() {
        let sent = varied(500);
        for compression in [CompressionType::ZSTD, CompressionType::LZ4_FRAME] {
            let messages = encoded_with(vec![sent.clone()], Some(compression)).await;
            assert_eq!(
                outcome(messages.clone(), LIMIT).await.unwrap(),
                std::slice::from_ref(&sent)
            );

            let last = messages.len() - 1;
            let (offset, length) = *buffers(&messages[last])
                .iter()
                .find(|(_, l)| *l > 8)
                .unwrap();
            let start = usize::try_from(offset).unwrap();
            let with_prefix = |prefix: i64| {
                let mut forged = messages.clone();
                let mut body = forged[last].data_body.to_vec();
                body[start..start + 8].copy_from_slice(&prefix.to_le_bytes());
                forged[last].data_body = body.into();
                forged
            };
            assert_refused(
                outcome(with_prefix(1 << 40), LIMIT).await,
                Code::ResourceExhausted,
                &["record batch 1 (message", "limits.max_message_bytes"],
            );
            assert_refused(
                outcome(with_prefix(-5), LIMIT).await,
                Code::InvalidArgument,
                &["says it decompresses to -5 bytes"],
            );
            let index = buffers(&messages[last])
                .iter()
                .position(|b| *b == (offset, length))
                .unwrap();
            let mut short = messages.clone();
            short[last].data_header = with_buffer(&short[last], index, (offset, 4));
            assert_refused(
                outcome(short, LIMIT).await,
                Code::InvalidArgument,
                &["has 4 bytes, no room for its length"],
            );
        }
        // Uncompressed, the limit is what the buffers hold.
        assert_refused(
            outcome(encoded(vec![ids(1000)]).await, 4000).await,
            Code::ResourceExhausted,
            &["more than 4000 bytes once decompressed"],
        );
    }

    /// Streams damaged at random, headers and bodies, compressed and not: each decodes to valid
    /// batches or ends in one refusal with a message, and nothing panics.
    #[tokio::test]
    async fn damaged_streams_decode_to_valid_batches_or_a_refusal() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut random = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for compression in [
            None,
            Some(CompressionType::ZSTD),
            Some(CompressionType::LZ4_FRAME),
        ] {
            let messages = encoded_with(vec![varied(40), varied(7)], compression).await;
            for _ in 0..700 {
                let mut damaged = messages.clone();
                for _ in 0..random() % 3 + 1 {
                    let message = &mut damaged[(random() % messages.len() as u64) as usize];
                    let field = if random() % 3 == 0 {
                        &mut message.data_body
                    } else {
                        &mut message.data_header
                    };
                    if field.is_empty() {
                        continue;
                    }
                    let mut bytes = field.to_vec();
                    match random() % 4 {
                        0 => bytes.truncate((random() % bytes.len() as u64) as usize),
                        _ => {
                            let at = (random() % bytes.len() as u64) as usize;
                            bytes[at] = random() as u8;
                        }
                    }
                    *field = bytes.into();
                }
                match outcome(damaged, 1 << 20).await {
                    Ok(batches) => {
                        for batch in batches {
                            for column in batch.columns() {
                                column.to_data().validate_full().unwrap();
                            }
                        }
                    }
                    Err(status) => {
                        assert!(
                            matches!(
                                status.code(),
                                Code::InvalidArgument | Code::ResourceExhausted
                            ),
                            "{status:?}"
                        );
                        assert!(
                            status.message().contains("of the DoPut stream"),
                            "{status:?}"
                        );
                    }
                }
            }
        }
    }

    /// The messages of a fuzz seed: each a header and a body, each after its length as a
    /// little-endian u32.
    fn seed(mut rest: &[u8]) -> Vec<FlightData> {
        fn take(rest: &mut &[u8]) -> Bytes {
            let (length, tail) = rest.split_first_chunk::<4>().unwrap();
            let (part, tail) = tail.split_at(u32::from_le_bytes(*length) as usize);
            *rest = tail;
            Bytes::copy_from_slice(part)
        }
        let mut messages = Vec::new();
        while !rest.is_empty() {
            let data_header = take(&mut rest);
            let data_body = take(&mut rest);
            messages.push(FlightData {
                data_header,
                data_body,
                ..FlightData::default()
            });
        }
        messages
    }

    /// Streams pyarrow (Arrow C++) wrote, of every column type and compressed both ways, decode;
    /// the damaged ones are refused. They are the put_stream fuzz target's seeds.
    #[tokio::test]
    async fn pyarrow_streams_decode_and_their_damaged_copies_are_refused() {
        macro_rules! seeds {
            ($($name:literal),*) => {
                [$(($name, &include_bytes!(concat!("../../fuzz/seeds/put_stream/", $name))[..])),*]
            };
        }
        for (name, bytes) in seeds!["ids", "varied", "varied_zstd", "varied_lz4"] {
            let batches = outcome(seed(bytes), LIMIT)
                .await
                .unwrap_or_else(|e| panic!("{name}: {e:?}"));
            assert!(!batches.is_empty(), "{name}");
            for column in batches.iter().flat_map(|b| b.columns()) {
                column.to_data().validate_full().unwrap();
            }
        }
        let refused = seeds![
            "ids_truncated_body",
            "ids_truncated_header",
            "negative_node_length",
            "negative_buffer_length",
            "negative_buffer_offset",
            "one_buffer_too_few",
            "dictionary_id_unknown",
            "dictionary_missing",
            "dictionary_wrong_values",
            "batch_before_schema",
            "compressed_length_forged"
        ];
        for (name, bytes) in refused {
            let status = outcome(seed(bytes), LIMIT).await.expect_err(name);
            let code = if name == "compressed_length_forged" {
                Code::ResourceExhausted
            } else {
                Code::InvalidArgument
            };
            assert_eq!(status.code(), code, "{name}: {status:?}");
        }
    }

    #[tokio::test]
    async fn metadata_only_messages_carry_no_payload() {
        let metadata = FlightData {
            app_metadata: Bytes::from_static(b"progress"),
            ..Default::default()
        };
        let mut decoder = BatchDecoder::new(futures::stream::iter([Ok(metadata)]), LIMIT);
        assert!(matches!(
            decoder.next().await,
            Some(Ok(DecodedPayload::None))
        ));
        assert!(decoder.next().await.is_none());
    }
}
