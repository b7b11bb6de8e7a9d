//! Quiver: an Arrow Flight service that stores data assets in files, databases and search
//! engines, and serves them back type-exact.

pub use quiver_protocol::{asset, error, protocol};

pub mod auth;
pub mod catalog;
pub mod cli;
pub mod client;
pub mod config;
pub mod metrics;
pub mod pg;
pub mod server;
pub mod service;
pub mod targets;
pub mod wire;

pub use error::{Error, Result};
