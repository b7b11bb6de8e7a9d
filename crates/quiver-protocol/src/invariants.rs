//! Properties every parser in this crate keeps for any input, as functions that panic when one
//! is broken. The `cargo fuzz` targets in `fuzz/` and the property tests in `tests/` call them,
//! so both check the same things:
//!
//! - no input panics a parser;
//! - every refusal is `INVALID_ARGUMENT` with a message (never `INTERNAL`), which repeats what
//!   was sent only in part, so it fits a `grpc-message` trailer whole however long the input;
//! - every accepted name stays inside its target: no empty, `.`-leading, `/` or `\` segment;
//! - what is accepted survives its canonical encoding unchanged (asset keys as text,
//!   partitions as catalog ids, tickets as protobuf).

use arrow_flight::FlightDescriptor;
use tonic::Code;

use crate::asset::{AssetKey, Partition};
use crate::error::{Error, MAX_STATUS_MESSAGE_BYTES};
use crate::protocol::{
    self, AssetCommand, AssetTicket, parse_asset_action, parse_command, parse_criteria,
    parse_ticket,
};

/// A CMD descriptor body (JSON or protobuf `quiver.v1.AssetCommand`).
pub fn command(data: &[u8]) {
    if let Some(command) = accepted(parse_command(data)) {
        check_command(&command);
    }
}

/// A PATH descriptor whose elements are `data` split at `\0`.
pub fn path(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let descriptor = FlightDescriptor::new_path(text.split('\0').map(str::to_string).collect());
    if let Some(command) = accepted(protocol::parse_descriptor(&descriptor)) {
        check_command(&command);
    }
}

/// A DoGet ticket (JSON or protobuf `quiver.v1.AssetTicket`).
pub fn ticket(data: &[u8]) {
    if let Some(ticket) = accepted(parse_ticket(data)) {
        check_ticket(&ticket);
    }
}

/// ListFlights criteria.
pub fn criteria(data: &[u8]) {
    if let Some(criteria) = accepted(parse_criteria(data))
        && let Some(target) = &criteria.target
    {
        accepted(protocol::check_target_name(target)).expect("criteria name a valid target");
    }
}

/// The body of the `delete` and `describe` actions.
pub fn action_body(data: &[u8]) {
    for action in ["delete", "describe"] {
        if let Some(parsed) = accepted(parse_asset_action(action, data)) {
            check_key(&parsed.asset);
            if let Some(partition) = &parsed.partition {
                check_partition(partition);
            }
        }
    }
}

/// An asset key and a partition id given as text.
pub fn names(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Some(key) = accepted(AssetKey::parse(&text)) {
        check_key(&key);
    }
    if let Some(partition) = accepted(Partition::from_id(&text)) {
        check_partition(&partition);
    }
}

/// The value of `result`, or `None` after checking that the refusal is a client error.
fn accepted<T>(result: Result<T, Error>) -> Option<T> {
    match result {
        Ok(value) => Some(value),
        Err(error) => {
            let message = error.to_string();
            let status = tonic::Status::from(error);
            assert_eq!(status.code(), Code::InvalidArgument, "{message}");
            assert!(!message.is_empty(), "a refusal without a message");
            assert!(
                message.len() <= MAX_STATUS_MESSAGE_BYTES,
                "a refusal of {} bytes: {}",
                message.len(),
                crate::error::echo(&message)
            );
            None
        }
    }
}

fn check_command(command: &AssetCommand) {
    accepted(protocol::check_target_name(&command.target)).expect("a valid target name");
    check_key(&command.asset);
    if let Some(partition) = &command.partition {
        check_partition(partition);
    }
}

fn check_ticket(ticket: &AssetTicket) {
    check_key(&ticket.asset);
    ticket.partitions.iter().for_each(check_partition);
    let again = parse_ticket(&protocol::encode_ticket(ticket))
        .unwrap_or_else(|e| panic!("an encoded ticket does not parse: {e}"));
    assert_eq!(&again, ticket, "a ticket changed through its encoding");
}

/// A path segment that stays inside its directory.
fn check_segment(whose: &dyn std::fmt::Debug, segment: &str) {
    assert!(
        !segment.is_empty() && !segment.starts_with('.') && !segment.contains(['/', '\\', '\0']),
        "{whose:?} has path segment {segment:?}"
    );
}

fn check_key(key: &AssetKey) {
    for segment in key.segments() {
        check_segment(key, segment);
    }
    let text = key.to_string();
    let again = AssetKey::parse(&text).unwrap_or_else(|e| panic!("key {text} reparses: {e}"));
    assert_eq!(&again, key);
}

fn check_partition(partition: &Partition) {
    for segment in partition.path_segments() {
        check_segment(partition, segment);
    }
    let id = partition.id();
    let again = Partition::from_id(&id).unwrap_or_else(|e| panic!("partition {id} reparses: {e}"));
    assert_eq!(&again, partition);
}
