#![no_main]
//! Feeds the DoPut decoder (`src/wire/put_decode.rs`) streams of Arrow IPC messages and checks
//! that no stream panics it, that it refuses a stream only with a status that names the
//! message — `INVALID_ARGUMENT`, or `RESOURCE_EXHAUSTED` for a batch over the size limit —
//! short enough for a `grpc-message` trailer, and that every batch it accepts is valid Arrow.
//!
//! An input is a sequence of messages, each a header and a body, each of those a little-endian
//! `u32` length and that many bytes (a length past the end of the input takes what is left).
//! The seeds in `fuzz/seeds/put_stream` are streams pyarrow wrote, whole and damaged.

use arrow_array::Array;
use arrow_flight::FlightData;
use arrow_flight::decode::DecodedPayload;
use arrow_flight::error::FlightError;
use bytes::Bytes;
use quiver_protocol::error::{self, MAX_STATUS_MESSAGE_BYTES};
use tonic::Code;

#[path = "../../src/wire/put_decode.rs"]
mod put_decode;

/// The most a batch may hold decoded: small, so that forged compressed lengths reach it.
const MAX_BATCH_BYTES: usize = 16 << 20;

/// The most messages taken from one input.
const MAX_MESSAGES: usize = 64;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check(data));

fn check(data: &[u8]) {
    let messages = split(data);
    let mut decoder = put_decode::BatchDecoder::new(
        futures::stream::iter(messages.into_iter().map(Ok)),
        MAX_BATCH_BYTES,
    );
    futures::executor::block_on(async {
        while let Some(item) = decoder.next().await {
            match item {
                Ok(DecodedPayload::RecordBatch(batch)) => {
                    for column in batch.columns() {
                        if let Err(e) = column.to_data().validate_full() {
                            panic!("an accepted batch is not valid Arrow: {e}");
                        }
                    }
                }
                Ok(_) => {}
                Err(FlightError::Tonic(status)) => {
                    let message = status.message();
                    assert!(
                        matches!(
                            status.code(),
                            Code::InvalidArgument | Code::ResourceExhausted
                        ),
                        "{status:?}"
                    );
                    assert!(
                        message.contains("of the DoPut stream"),
                        "a refusal that names no message: {message}"
                    );
                    assert!(
                        message.len() <= MAX_STATUS_MESSAGE_BYTES,
                        "a refusal of {} bytes: {}",
                        message.len(),
                        error::echo(message)
                    );
                    // A put ends at its first refusal.
                    break;
                }
                Err(other) => panic!("a refusal that is not a status: {other}"),
            }
        }
    });
}

/// The messages an input holds.
fn split(mut data: &[u8]) -> Vec<FlightData> {
    let mut messages = Vec::new();
    while !data.is_empty() && messages.len() < MAX_MESSAGES {
        let header = take(&mut data);
        let body = take(&mut data);
        messages.push(FlightData {
            data_header: Bytes::copy_from_slice(header),
            data_body: Bytes::copy_from_slice(body),
            ..FlightData::default()
        });
    }
    messages
}

/// A length-prefixed part from the front of `data`.
fn take<'a>(data: &mut &'a [u8]) -> &'a [u8] {
    let (length, rest) = match data.split_first_chunk::<4>() {
        Some((length, rest)) => (u32::from_le_bytes(*length) as usize, rest),
        None => (0, &[][..]),
    };
    let (part, rest) = rest.split_at(length.min(rest.len()));
    *data = rest;
    part
}
