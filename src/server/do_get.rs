//! DoGet responses framed here, so batch buffers reach the socket without a copy.
//!
//! tonic encodes each response message into its own buffer, so every batch body — the bulk
//! of a DoGet — would be copied after the IPC encoder laid it out. [`FlightRoutes`] answers
//! DoGet itself: [`QuiverService::read`] gives the asset's IPC messages with their bodies in
//! pieces that share the batches' buffers, and each becomes one gRPC message (a `FlightData`
//! on the wire) written as a small head — the 5-byte prefix, the `data_header` field, the
//! `data_body` tag and length — followed by those pieces, which hyper hands to the socket as
//! they are. Every other call goes to tonic's generated server unchanged.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use std::collections::VecDeque;

use arrow_flight::flight_service_server::FlightServiceServer;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use http_body::{Body as _, Frame};
use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};
use tonic::body::Body;
use tonic::codegen::http;
use tonic::metadata::MetadataMap;
use tonic::server::NamedService;
use tonic::{Request, Status};
use tower::Service;

use crate::service::{IpcMessage, QuiverService};

/// The Flight service: DoGet framed here, everything else by tonic's generated server.
#[derive(Clone)]
pub struct FlightRoutes {
    generated: FlightServiceServer<QuiverService>,
    service: QuiverService,
    /// The largest gRPC message accepted or sent (`limits.max_message_bytes`).
    max_message_bytes: usize,
}

impl FlightRoutes {
    pub fn new(service: QuiverService, max_message_bytes: usize) -> Self {
        let generated = FlightServiceServer::new(service.clone())
            .max_decoding_message_size(max_message_bytes)
            .max_encoding_message_size(max_message_bytes);
        Self {
            generated,
            service,
            max_message_bytes,
        }
    }
}

impl NamedService for FlightRoutes {
    const NAME: &'static str = <FlightServiceServer<QuiverService> as NamedService>::NAME;
}

const DO_GET: &str = "/arrow.flight.protocol.FlightService/DoGet";

impl Service<http::Request<Body>> for FlightRoutes {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        if request.uri().path() != DO_GET {
            return self.generated.call(request);
        }
        let service = self.service.clone();
        let limit = self.max_message_bytes;
        Box::pin(async move {
            Ok(match do_get(service, request, limit).await {
                Ok(response) => response,
                Err(status) => status.into_http(),
            })
        })
    }
}

async fn do_get(
    service: QuiverService,
    request: http::Request<Body>,
    limit: usize,
) -> Result<http::Response<Body>, Status> {
    let (parts, body) = request.into_parts();
    let ticket = read_message(body, limit).await?;
    let request = Request::from_parts(
        MetadataMap::from_headers(parts.headers),
        parts.extensions,
        ticket,
    );
    let messages = service.read(request).await?;
    let mut response = http::Response::new(Body::new(Frames::new(messages, limit)));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    Ok(response)
}

/// Reads a unary request: one uncompressed gRPC message.
async fn read_message<M: Message + Default>(body: Body, limit: usize) -> Result<M, Status> {
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

fn too_large(what: &str, size: usize, limit: usize) -> Status {
    Status::resource_exhausted(format!(
        "the {what} message is {size} bytes, over the {limit}-byte limit \
         (limits.max_message_bytes)"
    ))
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
fn frame(message: IpcMessage, limit: usize) -> Result<Vec<Bytes>, Status> {
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

/// The response body: each message's head and body, then the trailers with the call's status.
struct Frames {
    messages: BoxStream<'static, crate::Result<IpcMessage>>,
    limit: usize,
    /// The chunks of the current message still to send.
    chunks: VecDeque<Bytes>,
    done: bool,
}

impl Frames {
    fn new(messages: BoxStream<'static, crate::Result<IpcMessage>>, limit: usize) -> Self {
        Self {
            messages,
            limit,
            chunks: VecDeque::new(),
            done: false,
        }
    }
}

impl http_body::Body for Frames {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if let Some(chunk) = self.chunks.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if self.done {
            return Poll::Ready(None);
        }
        let status = match std::task::ready!(self.messages.poll_next_unpin(cx)) {
            Some(Ok(data)) => match frame(data, self.limit) {
                Ok(chunks) => {
                    self.chunks = chunks.into();
                    if let Some(chunk) = self.chunks.pop_front() {
                        return Poll::Ready(Some(Ok(Frame::data(chunk))));
                    }
                    return self.poll_frame(cx);
                }
                Err(status) => status,
            },
            Some(Err(e)) => Status::from(e),
            None => Status::ok(""),
        };
        self.done = true;
        let mut trailers = http::HeaderMap::new();
        if let Err(unencodable) = status.add_header(&mut trailers) {
            trailers.clear();
            Status::new(status.code(), unencodable.message())
                .add_header(&mut trailers)
                .ok();
        }
        Poll::Ready(Some(Ok(Frame::trailers(trailers))))
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.chunks.is_empty()
    }
}

#[cfg(test)]
impl futures::Stream for Frames {
    type Item = Result<Frame<Bytes>, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.poll_frame(cx)
    }
}

#[cfg(test)]
mod tests {
    use arrow_flight::FlightData;

    use super::*;
    use crate::Error;

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
        Frames::new(messages, usize::MAX)
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
