//! The Flight service's routes: DoGet and DoPut, which carry the bulk of the bytes, are
//! answered here without tonic's message buffers (see [`super::do_get`] and
//! [`super::do_put`]); every other call goes to tonic's generated server unchanged.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use arrow_flight::flight_service_server::FlightServiceServer;
use bytes::Bytes;
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use http_body::Frame;
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::http;
use tonic::server::NamedService;
use tower::Service;

use super::do_get;
use super::do_put::{self, BodyPool};
use crate::service::QuiverService;

/// The Flight service: DoGet and DoPut framed here, everything else by tonic's generated
/// server.
#[derive(Clone)]
pub struct FlightRoutes {
    generated: FlightServiceServer<QuiverService>,
    service: QuiverService,
    /// The largest gRPC message accepted or sent (`limits.max_message_bytes`).
    max_message_bytes: usize,
    /// DoPut message bodies kept for reuse.
    bodies: Arc<BodyPool>,
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
            bodies: Arc::default(),
        }
    }
}

impl NamedService for FlightRoutes {
    const NAME: &'static str = <FlightServiceServer<QuiverService> as NamedService>::NAME;
}

const DO_GET: &str = "/arrow.flight.protocol.FlightService/DoGet";
const DO_PUT: &str = "/arrow.flight.protocol.FlightService/DoPut";

impl Service<http::Request<Body>> for FlightRoutes {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let path = request.uri().path();
        if path != DO_GET && path != DO_PUT {
            return self.generated.call(request);
        }
        let get = path == DO_GET;
        if let Err(status) = uncompressed(request.headers(), if get { "DoGet" } else { "DoPut" }) {
            return Box::pin(async move { Ok(status.into_http()) });
        }
        let service = self.service.clone();
        let limit = self.max_message_bytes;
        let bodies = Arc::clone(&self.bodies);
        Box::pin(async move {
            let answered = if get {
                do_get::do_get(service, request, limit).await
            } else {
                do_put::do_put(service, request, limit, bodies).await
            };
            Ok(answered.unwrap_or_else(|status| status.into_http()))
        })
    }
}

/// Neither route decompresses: a request sent with `grpc-encoding` is refused, as tonic
/// refuses it for the other calls.
fn uncompressed(headers: &http::HeaderMap, rpc: &str) -> Result<(), Status> {
    match headers.get("grpc-encoding") {
        Some(encoding) if encoding != "identity" => Err(Status::unimplemented(format!(
            "compressed {rpc} requests ({}) are not supported; send the messages uncompressed",
            String::from_utf8_lossy(encoding.as_bytes())
        ))),
        _ => Ok(()),
    }
}

/// A streaming gRPC response whose messages are `chunks`, each the list of byte chunks that
/// make up one framed message.
pub fn response(chunks: BoxStream<'static, Result<Vec<Bytes>, Status>>) -> http::Response<Body> {
    let mut response = http::Response::new(Body::new(Frames::new(chunks)));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    response
}

pub fn too_large(what: &str, size: usize, limit: usize) -> Status {
    Status::resource_exhausted(format!(
        "the {what} message is {size} bytes, over the {limit}-byte limit \
         (limits.max_message_bytes)"
    ))
}

/// The response body: each message's chunks, then the trailers with the call's status.
pub struct Frames {
    messages: BoxStream<'static, Result<Vec<Bytes>, Status>>,
    /// The chunks of the current message still to send.
    chunks: VecDeque<Bytes>,
    done: bool,
}

impl Frames {
    pub fn new(messages: BoxStream<'static, Result<Vec<Bytes>, Status>>) -> Self {
        Self {
            messages,
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
        loop {
            if let Some(chunk) = self.chunks.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(chunk))));
            }
            if self.done {
                return Poll::Ready(None);
            }
            let status = match std::task::ready!(self.messages.poll_next_unpin(cx)) {
                Some(Ok(chunks)) => {
                    self.chunks = chunks.into();
                    continue;
                }
                Some(Err(status)) => status,
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
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.chunks.is_empty()
    }
}

#[cfg(test)]
impl futures::Stream for Frames {
    type Item = Result<Frame<Bytes>, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        http_body::Body::poll_frame(self, cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compressed_requests_are_unimplemented() {
        let mut headers = http::HeaderMap::new();
        assert!(uncompressed(&headers, "DoPut").is_ok());
        headers.insert("grpc-encoding", http::HeaderValue::from_static("identity"));
        assert!(uncompressed(&headers, "DoPut").is_ok());
        headers.insert("grpc-encoding", http::HeaderValue::from_static("gzip"));
        let err = uncompressed(&headers, "DoGet").unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unimplemented);
        assert!(err.message().contains("DoGet requests (gzip)"), "{err}");
    }
}
