//! What DoGet's and DoPut's framing share: the streamed response body, with the call's status
//! in its trailers, and the refusal of a message over the size limit.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use http_body::Frame;
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::http;

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
