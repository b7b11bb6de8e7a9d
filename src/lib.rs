//! Quiver: an Arrow Flight service that stores data assets in files, databases and search
//! engines, and serves them back type-exact.

pub mod asset;
pub mod auth;
pub mod catalog;
pub mod cli;
pub mod client;
pub mod config;
pub mod error;
pub mod metrics;
pub mod protocol;
pub mod server;
pub mod service;
pub mod targets;

pub use error::{Error, Result};
