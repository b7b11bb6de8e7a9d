//! DoPut requests read here, so each batch body lands where Arrow can use it as it is.
//!
//! tonic gathers each request message into a buffer of its own, where the `data_body` field
//! starts wherever the fields before it left it: practically never at an address Arrow's
//! types need (8 bytes for int64, 16 for decimals and string views), so the IPC reader copied
//! nearly every column a second time. Here a message's body is copied once, straight from the
//! HTTP/2 frames into a 64-byte aligned buffer, and the batches decoded from it share that
//! memory. The other fields (descriptor, IPC header, app_metadata) are small and decoded as
//! usual. The put itself is the service's (`QuiverService::put`); its result goes back as the
//! response's one message ([`reply`]).

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use arrow_buffer::MutableBuffer;
use arrow_flight::{FlightData, PutResult};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures::{Stream, StreamExt};
use http_body::Body as _;
use prost::Message;
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::http;

use super::framing::{self, too_large};

/// `FlightData.data_body`'s field number.
const DATA_BODY: u64 = 1000;

/// The most bytes of free body buffers kept for reuse, and the largest buffer kept.
const POOL_BYTES: usize = 64 << 20;
const POOLED_BUFFER_BYTES: usize = 32 << 20;

/// Body buffers kept for the next messages. The allocator hands buffers of a batch's size
/// back to the system as soon as they are freed, so every new one cost a page fault per
/// 4 KiB it was filled with; a buffer taken from here has its pages already.
#[derive(Default)]
pub struct BodyPool {
    free: Mutex<Vec<MutableBuffer>>,
}

impl BodyPool {
    /// An empty buffer of at least `size` bytes' capacity.
    fn take(&self, size: usize) -> MutableBuffer {
        let mut free = self.free.lock().unwrap_or_else(PoisonError::into_inner);
        let fits = free
            .iter()
            .enumerate()
            .filter(|(_, b)| b.capacity() >= size)
            .min_by_key(|(_, b)| b.capacity())
            .map(|(i, _)| i);
        match fits {
            Some(i) => {
                let mut buffer = free.swap_remove(i);
                buffer.clear();
                buffer
            }
            // Room to spare: the next bodies of a put are about as large, rarely exactly.
            None => {
                let roomy = (size + size / 8).next_multiple_of(1 << 16);
                MutableBuffer::with_capacity(if roomy <= POOLED_BUFFER_BYTES {
                    roomy
                } else {
                    size
                })
            }
        }
    }

    fn give(&self, buffer: MutableBuffer) {
        if buffer.capacity() > POOLED_BUFFER_BYTES {
            return;
        }
        let mut free = self.free.lock().unwrap_or_else(PoisonError::into_inner);
        let kept: usize = free.iter().map(MutableBuffer::capacity).sum();
        if kept + buffer.capacity() <= POOL_BYTES {
            free.push(buffer);
        }
    }
}

/// A message body; its buffer goes back to the pool when the last batch using it is gone.
struct PooledBody {
    buffer: Option<MutableBuffer>,
    pool: Arc<BodyPool>,
}

impl AsRef<[u8]> for PooledBody {
    fn as_ref(&self) -> &[u8] {
        self.buffer.as_ref().map_or(&[], MutableBuffer::as_slice)
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        if let Some(buffer) = self.buffer.take() {
            self.pool.give(buffer);
        }
    }
}

/// The request body's gRPC messages as `FlightData`, each body in a 64-byte aligned buffer.
pub struct Messages {
    body: Body,
    limit: usize,
    pool: Arc<BodyPool>,
    /// Received bytes not yet taken apart. Empty while a body is being filled: frames are then
    /// copied straight into the body.
    buf: BytesMut,
    /// The message being received, once its 5-byte prefix has arrived.
    message: Option<Partial>,
    /// The body has ended.
    ended: bool,
    /// An error was returned; nothing follows it.
    failed: bool,
}

/// A message received in part.
struct Partial {
    /// Bytes of the message still to come, the body's among them.
    remaining: usize,
    /// Every field but `data_body`, as sent.
    fields: BytesMut,
    body: Option<PooledBody>,
    /// Bytes before the body in its buffer (0 or 8): see [`body_shift`].
    shift: usize,
    /// Bytes of the body still to come.
    body_left: usize,
}

impl Messages {
    pub fn new(body: Body, limit: usize, pool: Arc<BodyPool>) -> Self {
        Self {
            body,
            limit,
            pool,
            buf: BytesMut::new(),
            message: None,
            ended: false,
            failed: false,
        }
    }

    /// Takes in a frame's bytes: into the body being filled, the rest into `buf`.
    fn receive(&mut self, mut data: Bytes) {
        if let Some(partial) = &mut self.message
            && partial.body_left > 0
        {
            let n = partial.body_left.min(data.len());
            partial.fill(&data[..n]);
            data.advance(n);
        }
        if !data.is_empty() {
            self.buf.extend_from_slice(&data);
        }
    }

    /// The next whole message from what has been received, if it is all there.
    fn next_message(&mut self) -> Result<Option<FlightData>, Status> {
        loop {
            let partial = match &mut self.message {
                Some(partial) => partial,
                None => {
                    if self.buf.len() < 5 {
                        return Ok(None);
                    }
                    let compressed = self.buf.get_u8();
                    let length = self.buf.get_u32() as usize;
                    if compressed != 0 {
                        return Err(Status::invalid_argument(
                            "a DoPut message is marked compressed, which this server does not \
                             support; send the messages uncompressed",
                        ));
                    }
                    if length > self.limit {
                        return Err(too_large("request", length, self.limit));
                    }
                    self.message.insert(Partial {
                        remaining: length,
                        fields: BytesMut::new(),
                        body: None,
                        shift: 0,
                        body_left: 0,
                    })
                }
            };
            if partial.body_left > 0 {
                let n = partial.body_left.min(self.buf.len());
                partial.fill(&self.buf[..n]);
                self.buf.advance(n);
                if partial.body_left > 0 {
                    return Ok(None);
                }
            }
            if partial.remaining == 0 {
                let partial = self.message.take().expect("a message in progress");
                return partial.finish().map(Some);
            }
            if !partial.take_field(&mut self.buf, &self.pool)? {
                return Ok(None);
            }
        }
    }
}

impl Partial {
    fn fill(&mut self, bytes: &[u8]) {
        if let Some(buffer) = self.body.as_mut().and_then(|b| b.buffer.as_mut()) {
            buffer.extend_from_slice(bytes);
        }
        self.body_left -= bytes.len();
        self.remaining -= bytes.len();
    }

    /// Takes the next field's bytes out of `buf` — a body field only its tag and length, its
    /// contents follow. False when `buf` does not hold all of it yet.
    fn take_field(&mut self, buf: &mut BytesMut, pool: &Arc<BodyPool>) -> Result<bool, Status> {
        // The field cannot reach past the message.
        let window = &buf[..buf.len().min(self.remaining)];
        let whole = window.len() == self.remaining;
        let incomplete = || {
            if whole {
                Err(malformed("a field runs past the end of the message"))
            } else {
                Ok(false)
            }
        };
        let Some((key, key_len)) = varint(window)? else {
            return incomplete();
        };
        let (field, wire_type) = (key >> 3, key & 7);
        let (head, size) = match wire_type {
            0 => match varint(&window[key_len..])? {
                Some((_, len)) => (key_len + len, 0),
                None => return incomplete(),
            },
            1 => (key_len, 8),
            5 => (key_len, 4),
            2 => match varint(&window[key_len..])? {
                Some((len, len_len)) => (key_len + len_len, len as usize),
                None => return incomplete(),
            },
            other => return Err(malformed(&format!("field {field} has wire type {other}"))),
        };
        if head.saturating_add(size) > self.remaining {
            return Err(malformed(&format!(
                "field {field} says {size} bytes, more than the message holds"
            )));
        }
        if field == DATA_BODY && wire_type == 2 {
            buf.advance(head);
            self.remaining -= head;
            self.shift = body_shift(&self.fields);
            let mut buffer = pool.take(self.shift + size);
            buffer.extend_zeros(self.shift);
            self.body = Some(PooledBody {
                buffer: Some(buffer),
                pool: Arc::clone(pool),
            });
            self.body_left = size;
            return Ok(true);
        }
        if window.len() < head + size {
            return Ok(false);
        }
        self.fields.extend_from_slice(&buf[..head + size]);
        buf.advance(head + size);
        self.remaining -= head + size;
        Ok(true)
    }

    fn finish(self) -> Result<FlightData, Status> {
        let mut data =
            FlightData::decode(self.fields.freeze()).map_err(|e| malformed(&e.to_string()))?;
        if let Some(body) = self.body {
            data.data_body = Bytes::from_owner(body).slice(self.shift..);
        }
        Ok(data)
    }
}

/// Where in its 64-byte aligned buffer a body starts: 0, or 8 when that puts more of the
/// batch's 16-byte values (decimal128, string views) on 16-byte boundaries. Arrow C++ pads
/// body buffers to 8 bytes only, so after an odd number of rows of an 8-byte column the
/// 16-byte columns behind it sit 8 bytes off, and Arrow would copy each of them to align it.
/// Reads the message's IPC header from `fields` (sent before the body); 0 without one.
fn body_shift(fields: &[u8]) -> usize {
    let Ok(data) = FlightData::decode(fields) else {
        return 0;
    };
    let Ok(message) = arrow_ipc::root_as_message(&data.data_header) else {
        return 0;
    };
    let batch = message.header_as_record_batch().or_else(|| {
        message
            .header_as_dictionary_batch()
            .and_then(|dictionary| dictionary.data())
    });
    let Some(batch) = batch else {
        return 0;
    };
    let (Some(buffers), Ok(rows)) = (batch.buffers(), u64::try_from(batch.length())) else {
        return 0;
    };
    let mut off_by_eight = 0u64;
    let mut aligned = 0u64;
    for buffer in buffers.iter() {
        // A buffer of 16 bytes per row holds 16-byte values.
        if u64::try_from(buffer.length()).ok() != rows.checked_mul(16) || rows == 0 {
            continue;
        }
        match buffer.offset().rem_euclid(16) {
            0 => aligned += 1,
            8 => off_by_eight += 1,
            _ => {}
        }
    }
    if off_by_eight > aligned { 8 } else { 0 }
}

/// A varint at the start of `bytes` and its length; `None` when it is not all there yet.
fn varint(bytes: &[u8]) -> Result<Option<(u64, usize)>, Status> {
    let mut value = 0u64;
    for (i, byte) in bytes.iter().take(10).enumerate() {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
    }
    if bytes.len() >= 10 {
        return Err(malformed("a varint is longer than 10 bytes"));
    }
    Ok(None)
}

fn malformed(reason: &str) -> Status {
    Status::invalid_argument(format!(
        "a DoPut message is not a valid FlightData ({reason}); send Arrow Flight messages"
    ))
}

impl Stream for Messages {
    type Item = Result<FlightData, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if this.failed {
                return Poll::Ready(None);
            }
            match this.next_message() {
                Ok(Some(data)) => return Poll::Ready(Some(Ok(data))),
                Ok(None) => {}
                Err(status) => {
                    this.failed = true;
                    return Poll::Ready(Some(Err(status)));
                }
            }
            if this.ended {
                if this.message.is_none() && this.buf.is_empty() {
                    return Poll::Ready(None);
                }
                this.failed = true;
                return Poll::Ready(Some(Err(Status::cancelled(
                    "the DoPut stream ended in the middle of a message",
                ))));
            }
            match std::task::ready!(Pin::new(&mut this.body).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        this.receive(data);
                    }
                }
                Some(Err(status)) => {
                    this.failed = true;
                    return Poll::Ready(Some(Err(status)));
                }
                None => this.ended = true,
            }
        }
    }
}

/// DoPut's response: the put's result as its one gRPC message.
pub fn reply(result: PutResult) -> Result<http::Response<Body>, Status> {
    let mut framed = BytesMut::with_capacity(5 + result.encoded_len());
    framed.put_u8(0);
    framed.put_u32(result.encoded_len() as u32);
    result
        .encode(&mut framed)
        .map_err(|e| Status::internal(format!("encoding the put's reply: {e}")))?;
    let message = vec![framed.freeze()];
    Ok(framing::response(
        futures::stream::once(async move { Ok(message) }).boxed(),
    ))
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use arrow_flight::FlightDescriptor;
    use http_body::Frame;
    use tonic::Code;

    use super::*;

    /// A request body that yields the given chunks, then ends.
    struct Chunks(VecDeque<Result<Bytes, Status>>);

    impl http_body::Body for Chunks {
        type Data = Bytes;
        type Error = Status;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
            Poll::Ready(self.0.pop_front().map(|chunk| chunk.map(Frame::data)))
        }
    }

    fn framed(message: &[u8]) -> Vec<u8> {
        let mut out = vec![0];
        out.extend_from_slice(&(message.len() as u32).to_be_bytes());
        out.extend_from_slice(message);
        out
    }

    fn flight_data(body_len: usize) -> FlightData {
        FlightData {
            flight_descriptor: Some(FlightDescriptor::new_cmd(b"{\"asset\": \"a\"}".to_vec())),
            data_header: Bytes::from(vec![7u8; 301]),
            app_metadata: Bytes::from_static(b"meta"),
            data_body: (0..body_len).map(|i| (i % 251) as u8).collect(),
        }
    }

    async fn read(
        chunks: Vec<Result<Bytes, Status>>,
        limit: usize,
    ) -> Vec<Result<FlightData, Status>> {
        Messages::new(Body::new(Chunks(chunks.into())), limit, Arc::default())
            .collect()
            .await
    }

    fn split(bytes: &[u8], sizes: &[usize]) -> Vec<Result<Bytes, Status>> {
        let mut chunks = Vec::new();
        let mut at = 0;
        for size in sizes.iter().cycle() {
            if at >= bytes.len() {
                break;
            }
            let end = (at + size).min(bytes.len());
            chunks.push(Ok(Bytes::copy_from_slice(&bytes[at..end])));
            at = end;
        }
        chunks
    }

    #[tokio::test]
    async fn messages_split_anywhere_decode_exactly_with_aligned_bodies() {
        let sent = vec![flight_data(1000), flight_data(0), flight_data(70_000)];
        let mut wire = Vec::new();
        for data in &sent {
            wire.extend(framed(&data.encode_to_vec()));
        }
        // Every split point of the first message, then frame sizes of all kinds.
        let mut cases: Vec<Vec<usize>> = (1..1400).map(|first| vec![first, wire.len()]).collect();
        cases.extend([vec![1], vec![3, 7], vec![16384], vec![wire.len()]]);
        for sizes in cases {
            let got = read(split(&wire, &sizes), usize::MAX).await;
            let got: Vec<FlightData> = got.into_iter().map(Result::unwrap).collect();
            assert_eq!(got, sent, "chunks of {sizes:?}");
            for data in got.iter().filter(|d| !d.data_body.is_empty()) {
                assert_eq!(data.data_body.as_ptr() as usize % 64, 0, "aligned body");
            }
        }
    }

    /// Damaged input of every kind ends in messages and at most one error, never a panic or
    /// a hang.
    #[tokio::test]
    async fn damaged_streams_end_in_an_error_or_messages() {
        let mut wire = Vec::new();
        for data in [flight_data(300), flight_data(0), flight_data(5000)] {
            wire.extend(framed(&data.encode_to_vec()));
        }
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut random = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..2000 {
            let mut damaged = wire.clone();
            for _ in 0..(random() % 4 + 1) {
                let at = (random() % damaged.len() as u64) as usize;
                damaged[at] = random() as u8;
            }
            damaged.truncate(damaged.len() - (random() % 8) as usize);
            let sizes = [
                (random() % 700 + 1) as usize,
                (random() % 9000 + 1) as usize,
            ];
            let got = read(split(&damaged, &sizes), 1 << 20).await;
            let errors = got.iter().filter(|r| r.is_err()).count();
            assert!(errors <= 1);
            if errors == 1 {
                assert!(got.last().unwrap().is_err(), "nothing follows an error");
            }
        }
    }

    #[tokio::test]
    async fn a_body_is_reused_once_its_batches_are_gone() {
        let pool = Arc::new(BodyPool::default());
        let wire = Bytes::from(framed(&flight_data(70_000).encode_to_vec()));
        let one = || {
            let body = Body::new(Chunks(vec![Ok(wire.clone())].into()));
            let mut messages = Messages::new(body, usize::MAX, Arc::clone(&pool));
            async move { messages.next().await.unwrap().unwrap() }
        };
        let first = one().await;
        let second = one().await;
        assert_ne!(first.data_body.as_ptr(), second.data_body.as_ptr());
        let reused = first.data_body.as_ptr();
        drop(first);
        let third = one().await;
        assert_eq!(
            third.data_body.as_ptr(),
            reused,
            "the freed buffer is taken again"
        );
        assert_eq!(third, flight_data(70_000));

        // Buffers beyond the size kept are freed, not pooled.
        drop((second, third));
        pool.give(MutableBuffer::with_capacity(POOLED_BUFFER_BYTES + 1));
        let kept: Vec<usize> = pool
            .free
            .lock()
            .unwrap()
            .iter()
            .map(|b| b.capacity())
            .collect();
        assert_eq!(kept.len(), 2, "{kept:?}");
        assert!(kept.iter().all(|&c| c < POOLED_BUFFER_BYTES));
    }

    /// Arrow C++ pads body buffers to 8 bytes: behind three rows of int64, a decimal column
    /// starts 8 bytes off a 16-byte boundary. The body is placed so that it lands on one.
    #[tokio::test]
    async fn sixteen_byte_values_land_on_sixteen_byte_boundaries() {
        use arrow_array::{Decimal128Array, Int64Array, RecordBatch};
        use arrow_ipc::writer::{
            DictionaryTracker, IpcDataGenerator, IpcWriteContext, IpcWriteOptions,
        };

        for rows in [3i64, 4] {
            let batch = RecordBatch::try_from_iter([
                ("id", Arc::new(Int64Array::from_iter_values(0..rows)) as _),
                (
                    "price",
                    Arc::new(
                        Decimal128Array::from_iter_values((0..rows).map(i128::from))
                            .with_precision_and_scale(15, 2)
                            .unwrap(),
                    ) as _,
                ),
            ])
            .unwrap();
            let options =
                IpcWriteOptions::try_new(8, false, arrow_ipc::MetadataVersion::V5).unwrap();
            let (_, encoded) = IpcDataGenerator::default()
                .encode(
                    &batch,
                    &mut DictionaryTracker::new(false),
                    &options,
                    &mut IpcWriteContext::default(),
                )
                .unwrap();
            let sent = FlightData {
                flight_descriptor: None,
                data_header: encoded.ipc_message.into(),
                app_metadata: Bytes::new(),
                data_body: encoded.arrow_data.into(),
            };
            let got = read(vec![Ok(framed(&sent.encode_to_vec()).into())], usize::MAX).await;
            let got = got[0].as_ref().unwrap();
            assert_eq!(got, &sent);
            let message = arrow_ipc::root_as_message(&got.data_header).unwrap();
            let buffers = message.header_as_record_batch().unwrap().buffers().unwrap();
            let decimals = buffers.iter().find(|b| b.length() == 16 * rows).unwrap();
            let address = got.data_body.as_ptr() as usize + decimals.offset() as usize;
            assert_eq!(
                address % 16,
                0,
                "{rows} rows: decimals at {}",
                decimals.offset()
            );
        }
    }

    #[tokio::test]
    async fn fields_after_the_body_and_unknown_fields_are_kept() {
        let data = flight_data(100);
        let mut message = Vec::new();
        // The body first, then an unknown varint field, then the others.
        prost::encoding::bytes::encode(1000, &data.data_body, &mut message);
        prost::encoding::uint64::encode(17, &300, &mut message);
        let rest = FlightData {
            data_body: Bytes::new(),
            ..data.clone()
        };
        message.extend(rest.encode_to_vec());
        let got = read(split(&framed(&message), &[5]), usize::MAX).await;
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].as_ref().unwrap(), &data);
    }

    #[tokio::test]
    async fn bad_messages_are_refused_with_the_right_status() {
        let data = flight_data(100).encode_to_vec();
        let over = read(vec![Ok(framed(&data).into())], 50).await;
        let err = over[0].as_ref().unwrap_err();
        assert_eq!(err.code(), Code::ResourceExhausted);
        assert!(err.message().contains("limits.max_message_bytes"), "{err}");
        assert_eq!(over.len(), 1, "nothing follows an error");

        let mut compressed = framed(&data);
        compressed[0] = 1;
        let got = read(vec![Ok(compressed.into())], usize::MAX).await;
        assert_eq!(got[0].as_ref().unwrap_err().code(), Code::InvalidArgument);

        // A field longer than the message, and a group wire type.
        for message in [vec![0x12, 0x7f, 1, 2], vec![0x13, 0x14]] {
            let got = read(vec![Ok(framed(&message).into())], usize::MAX).await;
            let err = got[0].as_ref().unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument, "{message:?}");
            assert!(err.message().contains("not a valid FlightData"), "{err}");
        }

        let whole = framed(&data);
        let cut = read(vec![Ok(Bytes::copy_from_slice(&whole[..200]))], usize::MAX).await;
        assert_eq!(cut.len(), 1);
        assert_eq!(cut[0].as_ref().unwrap_err().code(), Code::Cancelled);

        let broken = read(
            vec![
                Ok(Bytes::copy_from_slice(&whole[..200])),
                Err(Status::aborted("reset by the client")),
            ],
            usize::MAX,
        )
        .await;
        assert_eq!(broken.len(), 1);
        assert_eq!(broken[0].as_ref().unwrap_err().code(), Code::Aborted);
    }
}
