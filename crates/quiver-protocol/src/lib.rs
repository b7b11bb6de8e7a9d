//! Quiver's wire contract, shared by the server, its clients and the fuzz targets: asset and
//! partition names ([`asset`]), Flight descriptor commands, tickets, list criteria and action
//! bodies in their JSON and protobuf forms ([`protocol`]), and the error type with its gRPC
//! status mapping ([`error`]).
//!
//! It depends on no storage engine, so anything that only speaks the protocol builds quickly.

pub mod asset;
pub mod error;
pub mod invariants;
pub mod protocol;
