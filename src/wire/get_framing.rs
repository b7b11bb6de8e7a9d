//! DoGet responses framed here, so batch buffers reach the socket without a copy.
//!
//! tonic encodes each response message into its own buffer, so every batch body — the bulk
//! of a DoGet — would be copied after the IPC encoder laid it out. The server answers DoGet
//! itself (see `server::routes`): [`get_encode`](super::get_encode) gives the asset's IPC
//! messages with their bodies in pieces that share the batches' buffers, and [`frame`] makes
//! each one gRPC message (a `FlightData` on the wire) written as a small head — the 5-byte
//! prefix, the `data_header` field, the `data_body` tag and length — followed by those pieces,
//! which hyper hands to the socket as they are.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http_body::Body as _;
use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};
use tonic::Status;
use tonic::body::Body;

use super::framing::too_large;
use super::get_encode::IpcMessage;

/// Reads a unary request: one uncompressed gRPC message.
pub async fn read_message<M: Message + Default>(body: Body, limit: usize) -> Result<M, Status> {
    let mut buf = BytesMut::new();
    let mut body = std::pin::pin!(body);
    while let Some(frame) = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
        if let Ok(data) = frame?.into_data() {
            buf.extend_from_slice(&data);
            if buf.len() > limit.saturating_add(5) {
                return Err(too_large("request", buf.len() - 5, limit));
            }
        }
    }
    if buf.len() < 5 {
        return Err(Status::invalid_argument(
            "the request holds no gRPC message (fewer than 5 bytes)",
        ));
    }
    let compressed = buf.get_u8();
    let length = buf.get_u32() as usize;
    if compressed != 0 {
        return Err(Status::unimplemented(
            "compressed DoGet requests are not supported; send the ticket uncompressed",
        ));
    }
    if length != buf.len() {
        return Err(Status::invalid_argument(format!(
            "the request's gRPC message says {length} bytes but {} arrived",
            buf.len()
        )));
    }
    M::decode(buf.freeze())
        .map_err(|e| Status::invalid_argument(format!("the request is not a valid message: {e}")))
}

/// `FlightData`'s field numbers.
const DATA_HEADER: u32 = 2;
const DATA_BODY: u32 = 1000;

/// Body pieces smaller than this are copied into the chunk before them rather than sent as
/// chunks of their own: padding, validity bitmaps and small columns would otherwise each
/// become an HTTP/2 frame.
const COPY_BELOW: usize = 4096;

/// The gRPC message for `message` (a `FlightData`) as chunks to send in order: the head,
/// then the body, large pieces as they are.
pub fn frame(message: IpcMessage, limit: usize) -> Result<Vec<Bytes>, Status> {
    let field = |number: u32, len: usize| {
        if len == 0 {
            0
        } else {
            key_len(number) + encoded_len_varint(len as u64) + len
        }
    };
    let header_len = message.header.len();
    let body_len = message.body_len();
    let length = field(DATA_HEADER, header_len) + field(DATA_BODY, body_len);
    if length > limit {
        return Err(too_large("response", length, limit));
    }
    let mut head = BytesMut::with_capacity(5 + 32 + header_len);
    head.put_u8(0);
    head.put_u32(
        u32::try_from(length).map_err(|_| too_large("response", length, u32::MAX as usize))?,
    );
    if header_len > 0 {
        encode_key(DATA_HEADER, WireType::LengthDelimited, &mut head);
        encode_varint(header_len as u64, &mut head);
        head.extend_from_slice(&message.header);
    }
    if body_len > 0 {
        encode_key(DATA_BODY, WireType::LengthDelimited, &mut head);
        encode_varint(body_len as u64, &mut head);
    }
    let mut chunks = Vec::new();
    let mut copied = head;
    for piece in message.body {
        if piece.len() < COPY_BELOW {
            copied.extend_from_slice(&piece);
            continue;
        }
        if !copied.is_empty() {
            chunks.push(copied.split().freeze());
        }
        chunks.push(piece);
    }
    if !copied.is_empty() {
        chunks.push(copied.freeze());
    }
    Ok(chunks)
}

#[cfg(test)]
mod tests {
    use arrow_flight::FlightData;
    use futures::StreamExt;
    use futures::stream::BoxStream;
    use http_body::Frame;

    use super::*;
    use crate::Error;
    use crate::wire::framing::Frames;

    fn message(pieces: &[&'static [u8]]) -> IpcMessage {
        IpcMessage {
            header: Bytes::from_static(b"header bytes"),
            body: pieces.iter().map(|p| Bytes::from_static(p)).collect(),
        }
    }

    /// What a gRPC client reads: the prefix, then the message.
    fn parse(chunks: &[Bytes]) -> FlightData {
        let mut whole = BytesMut::new();
        chunks
            .iter()
            .for_each(|chunk| whole.extend_from_slice(chunk));
        assert_eq!(whole.get_u8(), 0, "not compressed");
        let length = whole.get_u32() as usize;
        assert_eq!(length, whole.len());
        FlightData::decode(whole.freeze()).unwrap()
    }

    #[test]
    fn a_framed_message_decodes_to_the_same_flight_data() {
        static BIG: [u8; 70_000] = [1; 70_000];
        static MEDIUM: [u8; 5000] = [2; 5000];
        let cases: [(&[&'static [u8]], usize); 5] = [
            (&[], 1),
            (&[b"x"], 1),
            (&[&[7u8; 300], b"tail"], 1),
            (&[&BIG], 2),
            (&[b"pad", &BIG, b"pad", b"pad", &MEDIUM, b"end"], 5),
        ];
        for (pieces, count) in cases {
            let sent = message(pieces);
            let chunks = frame(sent.clone(), usize::MAX).unwrap();
            assert_eq!(chunks.len(), count, "{} pieces", pieces.len());
            // Large pieces are sent from the sender's own memory, not copied.
            for large in pieces.iter().filter(|p| p.len() >= COPY_BELOW) {
                assert!(chunks.iter().any(|c| c.as_ptr() == large.as_ptr()));
            }
            assert_eq!(parse(&chunks), sent.into_flight_data());
        }
    }

    #[test]
    fn a_message_over_the_limit_is_resource_exhausted() {
        let err = frame(message(&[&[0u8; 100]]), 64).unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        assert!(err.message().contains("limits.max_message_bytes"), "{err}");
    }

    async fn all_frames(
        messages: BoxStream<'static, crate::Result<IpcMessage>>,
    ) -> Vec<Frame<Bytes>> {
        let chunks = messages.map(|message| frame(message.map_err(Status::from)?, usize::MAX));
        Frames::new(chunks.boxed())
            .map(Result::unwrap)
            .collect()
            .await
    }

    #[tokio::test]
    async fn the_body_ends_with_the_status_in_trailers() {
        let messages = futures::stream::iter([
            Ok(message(&[b"first ", b"body"])),
            Err(Error::failed_precondition("gone: 100%")),
            Ok(message(&[b"never sent"])),
        ])
        .boxed();
        let frames = all_frames(messages).await;
        assert_eq!(frames.len(), 2, "the message, then the trailers");
        let chunk = frames[0].data_ref().unwrap().clone();
        assert_eq!(
            parse(&[chunk]),
            message(&[b"first body"]).into_flight_data()
        );
        let trailers = frames[1].trailers_ref().unwrap();
        assert_eq!(trailers["grpc-status"], "9");
        assert!(
            trailers["grpc-message"]
                .to_str()
                .unwrap()
                .contains("gone:%20100%25")
        );

        let done = all_frames(futures::stream::empty().boxed()).await;
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].trailers_ref().unwrap()["grpc-status"], "0");
    }
}
