//! Decoding a DoPut stream into record batches without copying message bodies.
//!
//! arrow-flight's `FlightDataDecoder` copies every message body into a fresh allocation
//! unless gRPC happened to leave it 64-byte aligned, which it practically never does: a
//! put of N bytes allocated, zeroed and copied N bytes more. Here the body is wrapped as it
//! arrived and the IPC reader copies only the buffers whose type needs an alignment the body
//! does not give (string and binary values, bitmaps and bytes never do).

use std::collections::HashMap;
use std::sync::Arc;

use arrow_array::ArrayRef;
use arrow_buffer::Buffer;
use arrow_flight::FlightData;
use arrow_flight::decode::DecodedPayload;
use arrow_flight::error::{FlightError, Result};
use arrow_ipc::MessageHeader;
use arrow_ipc::reader::{RecordBatchDecoder, read_dictionary};
use arrow_schema::{Schema, SchemaRef};
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};

/// The payloads of a stream of [`FlightData`] messages, in order: the schema, then batches.
/// Dictionary batches update the decoder's state and yield nothing.
pub struct BatchDecoder {
    input: BoxStream<'static, Result<FlightData>>,
    schema: Option<SchemaRef>,
    dictionaries: HashMap<i64, ArrayRef>,
}

impl BatchDecoder {
    pub fn new(input: impl Stream<Item = Result<FlightData>> + Send + 'static) -> Self {
        Self {
            input: input.boxed(),
            schema: None,
            dictionaries: HashMap::new(),
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
        // A message with only app_metadata carries no IPC header.
        if data.data_header.is_empty() {
            return Ok(Some(DecodedPayload::None));
        }
        let message = arrow_ipc::root_as_message(&data.data_header)
            .map_err(|e| FlightError::DecodeError(format!("not an Arrow IPC message: {e}")))?;
        match message.header_type() {
            MessageHeader::NONE => Ok(Some(DecodedPayload::None)),
            MessageHeader::Schema => {
                let schema = Arc::new(Schema::try_from(&data).map_err(|e| {
                    FlightError::DecodeError(format!("the schema cannot be read: {e}"))
                })?);
                self.schema = Some(Arc::clone(&schema));
                self.dictionaries.clear();
                Ok(Some(DecodedPayload::Schema(schema)))
            }
            MessageHeader::DictionaryBatch => {
                let schema = self.schema()?;
                let batch = message.header_as_dictionary_batch().ok_or_else(|| {
                    FlightError::DecodeError("a dictionary batch without its header".into())
                })?;
                let body = Buffer::from(data.data_body);
                read_dictionary(
                    &body,
                    batch,
                    &schema,
                    &mut self.dictionaries,
                    &message.version(),
                )
                .map_err(|e| FlightError::DecodeError(format!("a dictionary batch: {e}")))?;
                Ok(None)
            }
            MessageHeader::RecordBatch => {
                let schema = self.schema()?;
                let batch = message.header_as_record_batch().ok_or_else(|| {
                    FlightError::DecodeError("a record batch without its header".into())
                })?;
                let body = Buffer::from(data.data_body);
                let batch = RecordBatchDecoder::try_new(
                    &body,
                    batch,
                    schema,
                    &self.dictionaries,
                    &message.version(),
                )
                .and_then(RecordBatchDecoder::read_record_batch)
                .map_err(|e| FlightError::DecodeError(format!("a record batch: {e}")))?;
                Ok(Some(DecodedPayload::RecordBatch(batch)))
            }
            other => Err(FlightError::protocol(format!(
                "unexpected {} message",
                other.variant_name().unwrap_or("unknown")
            ))),
        }
    }

    fn schema(&self) -> Result<SchemaRef> {
        self.schema
            .clone()
            .ok_or_else(|| FlightError::protocol("a batch arrived before the schema"))
    }
}

#[cfg(test)]
mod tests {
    use arrow_array::{
        DictionaryArray, Int32Array, Int64Array, RecordBatch, StringArray, types::Int32Type,
    };
    use arrow_flight::encode::{DictionaryHandling, FlightDataEncoderBuilder};
    use bytes::{Bytes, BytesMut};
    use futures::TryStreamExt;

    use super::*;

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
            let mut decoder = BatchDecoder::new(futures::stream::iter(messages));
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
        let mut decoder = BatchDecoder::new(futures::stream::iter(messages));
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
        let mut decoder =
            BatchDecoder::new(futures::stream::iter(messages.into_iter().skip(1).map(Ok)));
        let err = decoder.next().await.unwrap().unwrap_err();
        assert!(err.to_string().contains("before the schema"), "{err}");

        let garbled = FlightData {
            data_header: Bytes::from_static(b"not flatbuffers at all"),
            ..Default::default()
        };
        let mut decoder = BatchDecoder::new(futures::stream::iter([Ok(garbled)]));
        let err = decoder.next().await.unwrap().unwrap_err();
        assert!(
            err.to_string().contains("not an Arrow IPC message"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn metadata_only_messages_carry_no_payload() {
        let metadata = FlightData {
            app_metadata: Bytes::from_static(b"progress"),
            ..Default::default()
        };
        let mut decoder = BatchDecoder::new(futures::stream::iter([Ok(metadata)]));
        assert!(matches!(
            decoder.next().await,
            Some(Ok(DecodedPayload::None))
        ));
        assert!(decoder.next().await.is_none());
    }
}
