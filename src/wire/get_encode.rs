//! Encoding a DoGet stream as Arrow IPC messages whose bodies share the batches' buffers.
//!
//! arrow-flight's `FlightDataEncoder` copies every buffer of a batch into one contiguous
//! body per message. arrow-ipc's [`StreamEncoder`] lays a message out as a list of buffers
//! instead, the uncompressed ones being the batch's own; [`IpcMessage`] keeps that list, so
//! the server's DoGet framing can hand the pieces to the socket as they are.

use std::sync::Arc;

use arrow::array::ArrayData;
use arrow_array::cast::AsArray;
use arrow_array::{ArrayRef, RecordBatch};
use arrow_flight::FlightData;
use arrow_ipc::writer::StreamEncoder;
use arrow_schema::{ArrowError, DataType, SchemaRef};
use bytes::{Bytes, BytesMut};
use futures::stream::{self, BoxStream};
use futures::{StreamExt, TryStreamExt};

use crate::error::{Error, Result};
use crate::targets::SendableBatchStream;

/// Batches are sliced so that one message carries about this much: the size
/// arrow-flight's encoder uses too, well under the 4 MiB that gRPC clients accept by
/// default.
const MAX_MESSAGE_BYTES: usize = 2 * 1024 * 1024;

/// One Arrow IPC message: its flatbuffer header and its body in pieces.
#[derive(Debug, Clone, PartialEq)]
pub struct IpcMessage {
    pub header: Bytes,
    pub body: Vec<Bytes>,
}

impl IpcMessage {
    pub fn body_len(&self) -> usize {
        self.body.iter().map(Bytes::len).sum()
    }

    /// The message as one `FlightData`, its body copied into one buffer.
    pub fn into_flight_data(self) -> FlightData {
        let data_body = match <[Bytes; 1]>::try_from(self.body) {
            Ok([one]) => one,
            Err(pieces) => {
                let mut body = BytesMut::with_capacity(pieces.iter().map(Bytes::len).sum());
                pieces
                    .iter()
                    .for_each(|piece| body.extend_from_slice(piece));
                body.freeze()
            }
        };
        FlightData {
            data_header: self.header,
            data_body,
            ..Default::default()
        }
    }
}

/// The schema message, then each batch's dictionary and record batch messages. Dictionaries
/// are sent as dictionaries, again whenever a batch's dictionary differs from the last one
/// sent for that column.
pub fn encode(
    schema: SchemaRef,
    batches: SendableBatchStream,
) -> BoxStream<'static, Result<IpcMessage>> {
    let encoded = || -> Result<_> {
        // A second encoder gives the schema message up front (the first one only emits it
        // with the first batch): a client knows the schema before any row is read, and an
        // asset without rows is its schema alone.
        let schema_message = StreamEncoder::try_new(&schema)
            .and_then(StreamEncoder::finish)
            .map_err(ipc_error)
            .and_then(messages)?
            .into_iter()
            .next()
            .ok_or_else(|| Error::internal("the IPC encoder wrote no schema message"))?;
        let encoder = StreamEncoder::try_new(&schema).map_err(ipc_error)?;
        Ok((schema_message, encoder))
    };
    let (schema_message, mut encoder) = match encoded() {
        Ok(parts) => parts,
        Err(e) => return stream::once(async { Err(e) }).boxed(),
    };
    let mut schema_pending = true;
    let rest = batches
        .map(move |batch| {
            let mut out = Vec::new();
            for piece in slices(&batch?) {
                let mut encoded = messages(encoder.encode(&piece).map_err(ipc_error)?)?;
                if std::mem::take(&mut schema_pending) {
                    // Already sent: the encoder's first output starts with it.
                    encoded.remove(0);
                }
                out.extend(encoded);
            }
            Ok::<_, Error>(stream::iter(out.into_iter().map(Ok)))
        })
        .try_flatten();
    stream::once(async { Ok(schema_message) })
        .chain(rest)
        .boxed()
}

/// `batch` cut into runs of rows of about [`MAX_MESSAGE_BYTES`] each.
///
/// A slice of a `utf8_view` / `binary_view` column keeps every data buffer of the column, and
/// the IPC encoder writes them all into each message; the view columns of each slice are
/// therefore compacted to the strings its rows use, or a batch cut in N would be sent with its
/// strings N times.
fn slices(batch: &RecordBatch) -> Vec<RecordBatch> {
    let rows = batch.num_rows();
    let bytes: usize = batch
        .columns()
        .iter()
        .map(|column| message_bytes(&column.to_data()))
        .sum();
    let count = bytes.div_ceil(MAX_MESSAGE_BYTES).clamp(1, rows.max(1));
    if count == 1 {
        return vec![batch.clone()];
    }
    let per_slice = rows.div_ceil(count).max(1);
    (0..rows)
        .step_by(per_slice)
        .map(|offset| compact_views(batch.slice(offset, per_slice.min(rows - offset))))
        .collect()
}

/// About what a column adds to a message. arrow's `get_slice_memory_size` counts a view
/// array's data buffers by the capacity of the allocation each was cut from — for buffers
/// decoded from one IPC body, the whole body per buffer — so views count here by the length
/// of their buffers.
fn message_bytes(data: &ArrayData) -> usize {
    match data.data_type() {
        DataType::Utf8View | DataType::BinaryView => {
            let views = data.len() * std::mem::size_of::<u128>();
            let nulls = data.nulls().map_or(0, |n| n.len().div_ceil(8));
            let values: usize = data.buffers().iter().skip(1).map(|b| b.len()).sum();
            views + nulls + values
        }
        _ if data.child_data().is_empty() => data.get_slice_memory_size().unwrap_or(0),
        _ => {
            let own: usize = data.buffers().iter().map(|b| b.len()).sum();
            let nulls = data.nulls().map_or(0, |n| n.len().div_ceil(8));
            own + nulls + data.child_data().iter().map(message_bytes).sum::<usize>()
        }
    }
}

/// `batch` with its top-level view columns holding only the strings their rows use.
fn compact_views(batch: RecordBatch) -> RecordBatch {
    let columns = batch
        .columns()
        .iter()
        .map(|column| match column.data_type() {
            DataType::Utf8View => Arc::new(column.as_string_view().gc()) as ArrayRef,
            DataType::BinaryView => Arc::new(column.as_binary_view().gc()) as ArrayRef,
            _ => Arc::clone(column),
        })
        .collect();
    RecordBatch::try_new(batch.schema(), columns).unwrap_or(batch)
}

/// Splits an IPC stream written as buffers into its messages. Each message is the
/// continuation marker, the header length, the header (padded), then `bodyLength` bytes; the
/// end-of-stream marker (a zero header length) ends it.
fn messages(buffers: Vec<arrow_buffer::Buffer>) -> Result<Vec<IpcMessage>> {
    let mut pieces = Pieces::new(buffers);
    let mut out = Vec::new();
    while !pieces.is_empty() {
        let prefix = pieces.take(8)?.concat();
        let length = i32::from_le_bytes([prefix[4], prefix[5], prefix[6], prefix[7]]);
        if prefix[..4] != [0xff; 4] || length < 0 {
            return Err(Error::internal(
                "the IPC encoder wrote a message without its continuation marker",
            ));
        }
        if length == 0 {
            break;
        }
        let header = Bytes::from(pieces.take(length as usize)?.concat());
        let message = arrow_ipc::root_as_message(&header)
            .map_err(|e| Error::internal(format!("the IPC encoder wrote a bad header: {e}")))?;
        let body_len = usize::try_from(message.bodyLength())
            .map_err(|_| Error::internal("the IPC encoder wrote a negative body length"))?;
        let body = pieces.take(body_len)?;
        out.push(IpcMessage { header, body });
    }
    Ok(out)
}

/// The encoder's buffers as `Bytes` sharing their memory, taken a given length at a time.
struct Pieces {
    pieces: std::collections::VecDeque<Bytes>,
}

impl Pieces {
    fn new(buffers: Vec<arrow_buffer::Buffer>) -> Self {
        Self {
            pieces: buffers
                .into_iter()
                .filter(|buffer| !buffer.is_empty())
                .map(Bytes::from_owner)
                .collect(),
        }
    }

    fn is_empty(&self) -> bool {
        self.pieces.is_empty()
    }

    /// The next `len` bytes, as the pieces (or parts of pieces) that hold them.
    fn take(&mut self, mut len: usize) -> Result<Vec<Bytes>> {
        let mut out = Vec::new();
        while len > 0 {
            let Some(mut piece) = self.pieces.pop_front() else {
                return Err(Error::internal("the IPC encoder wrote a truncated message"));
            };
            if piece.len() > len {
                self.pieces.push_front(piece.split_off(len));
            }
            len -= piece.len();
            out.push(piece);
        }
        Ok(out)
    }
}

fn ipc_error(e: ArrowError) -> Error {
    Error::internal(format!("encoding Arrow IPC: {e}"))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::{
        ArrayRef, DictionaryArray, Int64Array, StringArray, StringViewArray, types::Int32Type,
    };
    use arrow_flight::decode::{DecodedPayload, FlightDataDecoder};
    use arrow_flight::error::FlightError;

    use super::*;

    fn batch(offset: i64, rows: i64, kinds: &[&str]) -> RecordBatch {
        let ids: Int64Array = (offset..offset + rows).collect();
        let names: StringArray = (offset..offset + rows)
            .map(|i| Some(format!("a name that is not short, number {i}")))
            .collect();
        let kind: DictionaryArray<Int32Type> =
            (0..rows as usize).map(|i| kinds[i % kinds.len()]).collect();
        RecordBatch::try_from_iter([
            ("id", Arc::new(ids) as ArrayRef),
            ("name", Arc::new(names)),
            ("kind", Arc::new(kind)),
        ])
        .unwrap()
    }

    /// What a Flight client makes of the messages.
    async fn decode(messages: Vec<IpcMessage>) -> (SchemaRef, Vec<RecordBatch>) {
        let data = messages
            .into_iter()
            .map(|m| Ok::<_, FlightError>(m.into_flight_data()));
        let mut decoder = FlightDataDecoder::new(stream::iter(data));
        let mut schema = None;
        let mut batches = Vec::new();
        while let Some(item) = decoder.next().await {
            match item.unwrap().payload {
                DecodedPayload::Schema(s) => schema = Some(s),
                DecodedPayload::RecordBatch(b) => batches.push(b),
                DecodedPayload::None => {}
            }
        }
        (schema.expect("a schema message"), batches)
    }

    async fn encoded(batches: Vec<RecordBatch>) -> Vec<IpcMessage> {
        let schema = batches[0].schema();
        let input = stream::iter(batches.into_iter().map(Ok)).boxed();
        encode(schema, input).try_collect().await.unwrap()
    }

    #[tokio::test]
    async fn a_client_reads_back_the_batches_and_dictionaries_sent() {
        let sent = vec![
            batch(0, 1000, &["a", "b"]),
            batch(1000, 10, &["c"]),
            batch(1010, 0, &["a"]),
            batch(1010, 500, &["d", "e", "f"]),
        ];
        let (schema, got) = decode(encoded(sent.clone()).await).await;
        assert_eq!(schema, sent[0].schema());
        let got = arrow_select::concat::concat_batches(&schema, &got).unwrap();
        let want = arrow_select::concat::concat_batches(&schema, &sent).unwrap();
        assert_eq!(got, want);
    }

    #[tokio::test]
    async fn large_batches_are_cut_into_messages_of_about_two_mebibytes() {
        let big = batch(0, 200_000, &["x", "y"]);
        let messages = encoded(vec![big.clone()]).await;
        let record_batches = messages
            .iter()
            .filter(|m| {
                arrow_ipc::root_as_message(&m.header).unwrap().header_type()
                    == arrow_ipc::MessageHeader::RecordBatch
            })
            .count();
        assert!(record_batches > 3, "{record_batches} messages");
        for m in &messages {
            assert!(
                m.body_len() <= MAX_MESSAGE_BYTES + 64 * 1024,
                "{}",
                m.body_len()
            );
        }
        let (schema, got) = decode(messages).await;
        let got = arrow_select::concat::concat_batches(&schema, &got).unwrap();
        assert_eq!(got, big);
    }

    /// A view column read from an IPC body (every data buffer a slice of that body) is cut
    /// by the size of its strings, and each message carries only its own rows' strings.
    #[tokio::test]
    async fn view_columns_are_cut_by_their_strings_and_sent_once() {
        let names: StringViewArray = (0..200_000)
            .map(|i| Some(format!("a name that is not short, number {i}")))
            .collect();
        let sent = RecordBatch::try_from_iter([("name", Arc::new(names) as ArrayRef)]).unwrap();
        let mut ipc = Vec::new();
        let mut writer =
            arrow_ipc::writer::StreamWriter::try_new(&mut ipc, &sent.schema()).unwrap();
        writer.write(&sent).unwrap();
        writer.finish().unwrap();
        drop(writer);
        let decoded = arrow_ipc::reader::StreamReader::try_new(std::io::Cursor::new(&ipc), None)
            .unwrap()
            .next()
            .unwrap()
            .unwrap();
        let view = decoded.column(0).to_data();
        assert!(
            view.buffers()[1].capacity() > view.buffers()[1].len(),
            "the decoded data buffers should be slices of the message body"
        );

        let messages = encoded(vec![decoded]).await;
        let sent_bytes: usize = messages.iter().map(IpcMessage::body_len).sum();
        assert!(
            messages.len() <= 2 + ipc.len().div_ceil(MAX_MESSAGE_BYTES),
            "{} messages",
            messages.len()
        );
        assert!(
            sent_bytes < ipc.len() + ipc.len() / 4,
            "{sent_bytes} bytes for {}",
            ipc.len()
        );
        let (schema, got) = decode(messages).await;
        assert_eq!(
            arrow_select::concat::concat_batches(&schema, &got).unwrap(),
            sent
        );
    }

    #[tokio::test]
    async fn bodies_share_the_batch_buffers() {
        let sent = batch(0, 1000, &["a"]);
        let values = sent
            .column(1)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap()
            .values()
            .clone();
        let messages = encoded(vec![sent]).await;
        let last = messages.last().unwrap();
        assert!(
            last.body
                .iter()
                .any(|piece| piece.as_ptr() == values.as_ptr()),
            "the string values were copied"
        );
    }

    #[tokio::test]
    async fn an_asset_without_batches_is_its_schema_alone() {
        let schema = batch(0, 1, &["a"]).schema();
        let messages: Vec<_> = encode(Arc::clone(&schema), stream::empty().boxed())
            .try_collect()
            .await
            .unwrap();
        assert_eq!(messages.len(), 1);
        let (got, batches) = decode(messages).await;
        assert_eq!(got, schema);
        assert!(batches.is_empty());
    }

    #[tokio::test]
    async fn a_failing_read_ends_the_messages_with_its_error() {
        let good = batch(0, 10, &["a"]);
        let input = stream::iter([Ok(good.clone()), Err(Error::internal("disk on fire"))]).boxed();
        let items: Vec<_> = encode(good.schema(), input).collect().await;
        let err = items.last().unwrap().as_ref().unwrap_err();
        assert!(err.to_string().contains("disk on fire"), "{err}");
        assert!(items[..items.len() - 1].iter().all(Result::is_ok));
    }
}
