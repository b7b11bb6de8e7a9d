//! The Flight service's routes: DoGet and DoPut, which carry the bulk of the bytes, are
//! answered here without tonic's message buffers (see [`crate::wire`]); every other call goes
//! to tonic's generated server unchanged.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use arrow_flight::flight_service_server::FlightServiceServer;
use futures::StreamExt;
use futures::future::BoxFuture;
use tonic::body::Body;
use tonic::codegen::http;
use tonic::metadata::MetadataMap;
use tonic::server::NamedService;
use tonic::{Request, Status};
use tower::Service;

use crate::service::QuiverService;
use crate::wire::framing;
use crate::wire::get_framing::{frame, read_message};
use crate::wire::put_framing::{self, BodyPool, Messages};

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
                do_get(service, request, limit).await
            } else {
                do_put(service, request, limit, bodies).await
            };
            Ok(answered.unwrap_or_else(|status| status.into_http()))
        })
    }
}

/// DoGet: the ticket, then the asset's IPC messages, each framed as one gRPC message.
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
    let chunks = messages.map(move |message| frame(message.map_err(Status::from)?, limit));
    Ok(framing::response(chunks.boxed()))
}

/// DoPut: the request's messages, each body in an aligned buffer, into the put; its result
/// as the one message of the response.
async fn do_put(
    service: QuiverService,
    request: http::Request<Body>,
    limit: usize,
    pool: Arc<BodyPool>,
) -> Result<http::Response<Body>, Status> {
    let (parts, body) = request.into_parts();
    let metadata = MetadataMap::from_headers(parts.headers);
    let reply = service
        .put(&metadata, Messages::new(body, limit, pool).boxed())
        .await?;
    put_framing::reply(reply)
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
