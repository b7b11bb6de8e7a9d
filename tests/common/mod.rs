//! A Quiver server in-process on port 0, and a Flight client for it.
#![allow(dead_code)]

pub mod postgres;
#[cfg(feature = "redis")]
pub mod redis;
pub mod s3;
#[cfg(feature = "search")]
pub mod search;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_flight::encode::{DictionaryHandling, FlightDataEncoderBuilder};
use arrow_flight::error::FlightError;
use arrow_flight::{Action, FlightClient, FlightDescriptor, PutResult, Ticket};
use arrow_schema::SchemaRef;
use futures::{StreamExt, TryStreamExt};
use quiver::config::Config;
use serde_json::Value;
use tokio::sync::oneshot;

pub struct TestServer {
    pub addr: SocketAddr,
    /// Where `/metrics`, `/healthz` and `/readyz` answer.
    pub metrics_addr: SocketAddr,
    pub dir: tempfile::TempDir,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<quiver::Result<()>>>,
}

impl TestServer {
    /// A server with the default targets under a fresh data directory.
    pub async fn start() -> Self {
        Self::start_with_toml("").await
    }

    /// A server with extra TOML configuration; `data_dir` is set to a fresh directory.
    pub async fn start_with_toml(toml: &str) -> Self {
        Self::start_in(tempfile::tempdir().expect("temp dir"), toml).await
    }

    /// A server on the data directory of an earlier one (see [`TestServer::stop`]), as a
    /// restart finds it.
    pub async fn start_in(dir: tempfile::TempDir, toml: &str) -> Self {
        let mut config = Config::from_toml(toml).expect("test config parses");
        config.data_dir = dir.path().join("data");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind port 0");
        let addr = listener.local_addr().unwrap();
        let metrics = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind port 0");
        let metrics_addr = metrics.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(quiver::server::serve_on(
            config,
            listener,
            Some(metrics),
            async {
                let _ = rx.await;
            },
        ));
        Self {
            addr,
            metrics_addr,
            dir,
            shutdown: Some(tx),
            handle: Some(handle),
        }
    }

    /// `GET path` on the metrics port: the status code and body.
    pub async fn http_get(&self, path: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(self.metrics_addr)
            .await
            .expect("connect to the metrics port");
        stream
            .write_all(
                format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let status = response
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .expect("an HTTP status line");
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (status, body)
    }

    /// A plain gRPC channel to the server, for clients other than Flight's.
    pub async fn channel(&self) -> tonic::transport::Channel {
        channel_at(self.addr).await
    }

    /// Waits until the server reports `count` puts running on `target` (its metrics gauge);
    /// panics after ten seconds.
    pub async fn wait_for_puts_in_flight(&self, target: &str, count: usize) {
        let line = format!("quiver_puts_in_flight{{target=\"{target}\"}} {count}");
        for _ in 0..400 {
            let (_, metrics) = self.http_get("/metrics").await;
            if metrics.lines().any(|l| l == line) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        panic!("the server never reported {line}");
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub async fn client(&self) -> FlightClient {
        FlightClient::new(self.channel().await)
    }

    /// Stops the server, waits for it to finish in-flight calls, and hands back its directory.
    pub async fn stop(mut self) -> tempfile::TempDir {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(handle) = self.handle.take() {
            handle.await.expect("server task").expect("server result");
        }
        self.dir
    }

    /// Every file under the data directory except the catalog, relative to it, sorted.
    pub fn files(&self) -> Vec<String> {
        let mut out = Vec::new();
        walk(&self.data_dir(), &self.data_dir(), &mut out);
        // The catalog and DuckDB databases change in place; the suite checks those through
        // the service instead.
        out.retain(|f| !f.starts_with("catalog.sqlite") && !f.contains(".duckdb"));
        out.sort();
        out
    }
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            walk(root, &path, out);
        } else {
            out.push(
                path.strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned(),
            );
        }
    }
}

pub fn cmd(json: Value) -> FlightDescriptor {
    FlightDescriptor::new_cmd(json.to_string())
}

pub fn path(parts: &[&str]) -> FlightDescriptor {
    FlightDescriptor::new_path(parts.iter().map(|s| s.to_string()).collect())
}

/// Puts batches under `descriptor`; returns the PutResult JSON.
pub async fn put(
    client: &mut FlightClient,
    descriptor: FlightDescriptor,
    schema: SchemaRef,
    batches: Vec<RecordBatch>,
) -> Result<Value, tonic::Status> {
    let input = futures::stream::iter(batches.into_iter().map(Ok));
    let data = FlightDataEncoderBuilder::new()
        .with_schema(schema)
        .with_flight_descriptor(Some(descriptor))
        .with_dictionary_handling(DictionaryHandling::Resend)
        .build(input);
    let results: Vec<PutResult> = client
        .do_put(data)
        .await
        .map_err(status)?
        .try_collect()
        .await
        .map_err(status)?;
    assert_eq!(results.len(), 1, "one PutResult per DoPut");
    Ok(serde_json::from_slice(&results[0].app_metadata).expect("PutResult is JSON"))
}

/// Reads an asset with a JSON ticket; returns the schema and batches.
pub async fn get(
    client: &mut FlightClient,
    ticket: Value,
) -> Result<(SchemaRef, Vec<RecordBatch>), tonic::Status> {
    get_ticket(client, Ticket::new(ticket.to_string())).await
}

pub async fn get_ticket(
    client: &mut FlightClient,
    ticket: Ticket,
) -> Result<(SchemaRef, Vec<RecordBatch>), tonic::Status> {
    let mut stream = client.do_get(ticket).await.map_err(status)?;
    let mut batches = Vec::new();
    while let Some(batch) = stream.next().await {
        batches.push(batch.map_err(status)?);
    }
    let schema = stream.schema().cloned().expect("DoGet sends a schema");
    Ok((schema, batches))
}

pub async fn action(
    client: &mut FlightClient,
    name: &str,
    body: Value,
) -> Result<Value, tonic::Status> {
    let body = if body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    let results: Vec<bytes::Bytes> = client
        .do_action(Action::new(name, body))
        .await
        .map_err(status)?
        .try_collect()
        .await
        .map_err(status)?;
    assert_eq!(results.len(), 1);
    Ok(serde_json::from_slice(&results[0]).expect("action result is JSON"))
}

pub fn status(e: FlightError) -> tonic::Status {
    match e {
        FlightError::Tonic(s) => *s,
        other => tonic::Status::unknown(other.to_string()),
    }
}

/// Asserts a call failed with `code` and a message containing `needle`.
pub fn assert_status<T: std::fmt::Debug>(
    result: Result<T, tonic::Status>,
    code: tonic::Code,
    needle: &str,
) -> String {
    match result {
        Ok(v) => panic!("expected {code:?} containing {needle:?}, got Ok({v:?})"),
        Err(s) => {
            assert_eq!(s.code(), code, "status {s:?}");
            assert!(
                s.message().contains(needle),
                "message {:?} lacks {needle:?}",
                s.message()
            );
            s.message().to_string()
        }
    }
}

pub fn concat(schema: &SchemaRef, batches: &[RecordBatch]) -> RecordBatch {
    arrow_select::concat::concat_batches(schema, batches).expect("concat")
}

/// The batch with dictionary columns decoded to their values, for value comparison; the
/// caller checks schemas separately so type exactness is still asserted.
pub fn values(batch: &RecordBatch) -> Vec<arrow_array::ArrayRef> {
    batch
        .columns()
        .iter()
        .map(|c| match c.data_type() {
            arrow_schema::DataType::Dictionary(_, v) => arrow_cast::cast(c, v).unwrap(),
            _ => Arc::clone(c),
        })
        .collect()
}

/// A TCP relay to `upstream`; aborting the returned task cuts the connection like a killed
/// client process would.
pub async fn relay(upstream: SocketAddr) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (mut inbound, _) = listener.accept().await.unwrap();
        let mut outbound = tokio::net::TcpStream::connect(upstream).await.unwrap();
        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
    });
    (addr, task)
}

/// A gRPC channel to `addr`.
pub async fn channel_at(addr: SocketAddr) -> tonic::transport::Channel {
    tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"))
}

/// A Flight client connected through `addr`.
pub async fn client_at(addr: SocketAddr) -> FlightClient {
    FlightClient::new(channel_at(addr).await)
}

/// A put left open: send batches on the returned sender, drop it to finish; the handle
/// resolves to the call's results.
pub type OpenPut = (
    futures::channel::mpsc::Sender<Result<RecordBatch, FlightError>>,
    tokio::task::JoinHandle<Result<Vec<PutResult>, FlightError>>,
);

/// Starts a DoPut under `descriptor` whose batches the caller sends one at a time.
pub fn open_put(mut client: FlightClient, descriptor: FlightDescriptor) -> OpenPut {
    let (tx, rx) = futures::channel::mpsc::channel(4);
    let encoded = FlightDataEncoderBuilder::new()
        .with_flight_descriptor(Some(descriptor))
        .build(rx);
    let call = tokio::spawn(async move { client.do_put(encoded).await?.try_collect().await });
    (tx, call)
}
