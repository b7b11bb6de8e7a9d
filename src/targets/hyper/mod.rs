//! Tableau Hyper extracts: one `.hyper` file per asset (one per partition of a partitioned
//! asset), written and read by Tableau's own `hyperd` over its PostgreSQL protocol.
//!
//! Layout, as the file targets: `<root>/<asset path>.hyper`, and for a partitioned asset
//! `<root>/<asset path>/<partition>.hyper`. Each file holds one table, `"Extract"."Extract"`,
//! the name Tableau opens a single-table extract by.
//!
//! A put creates a new database file next to its destination (`<file>#<digits>`, the name
//! the file targets stage uploads under, so the same start-up sweep removes leftovers),
//! streams the batches into it as Arrow IPC through `COPY … FROM STDIN WITH (FORMAT
//! arrowstream)`, detaches it, and renames it over the destination at commit. An append copies
//! the current file first and adds its rows to the copy.
//!
//! hyperd keeps a database it has loaded under its path, and would go on serving the old
//! content of a path a commit has renamed a new file onto. Every read therefore attaches a
//! hard link of the file under a fresh name, which also pins the version the read started on.

mod config;
mod server;
mod types;

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_buffer::Buffer;
use arrow_ipc::reader::StreamDecoder;
use arrow_ipc::writer::StreamWriter;
use arrow_schema::SchemaRef;
use async_trait::async_trait;
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio_postgres::CopyInSink;

use crate::asset::{AssetKey, Partition};
use crate::catalog::PendingPut;
use crate::error::{Error, Result};
use crate::protocol::Mode;
use crate::targets::file::local_identity;
use crate::targets::sql::quote;
use crate::targets::util::{async_stream_batches, refuse_options};
use crate::targets::{
    AssetWriter, DeleteRequest, ReadRequest, SendableBatchStream, Target, WriteRequest,
    WriteSummary,
};
pub use config::{Hyper, HyperConfig};
pub use server::HYPERD_ENV;
use server::Hyperd;

/// The table of every extract Quiver writes.
const TABLE: &str = "\"Extract\".\"Extract\"";
/// The Hyper file format version new files get: version 4 is the first to store REAL and
/// NUMERIC with more than 18 digits.
const DATABASE_VERSION: u32 = 4;
/// The name a put's session attaches its new file under.
const WRITE_ALIAS: &str = "quiver_put";
/// The name a read's session attaches the file it reads under.
const READ_ALIAS: &str = "quiver_read";

/// A target storing each asset as a Tableau Hyper file.
pub struct HyperTarget {
    name: String,
    root: PathBuf,
    hyperd: Arc<Hyperd>,
}

impl HyperTarget {
    pub fn new(name: &str, config: &HyperConfig) -> Result<Self> {
        let root = config
            .root_dir()
            .map_err(|e| Error::config(format!("[targets.{name}] {e}")))?;
        std::fs::create_dir_all(&root).map_err(|e| {
            Error::config(format!(
                "[targets.{name}] cannot create root directory {}: {e}",
                root.display()
            ))
        })?;
        let root = root
            .canonicalize()
            .map_err(|e| Error::config(format!("[targets.{name}] root {}: {e}", root.display())))?;
        let hyperd = Hyperd::new(name, config.hyperd.clone(), config.log_dir(name));
        Ok(Self {
            name: name.to_string(),
            root,
            hyperd: Arc::new(hyperd),
        })
    }

    fn path(&self, asset: &AssetKey, partition: Option<&Partition>) -> PathBuf {
        let mut path = self.root.clone();
        let mut segments: Vec<String> = asset.segments().to_vec();
        if let Some(p) = partition {
            segments.extend(p.path_segments().iter().map(|s| s.to_string()));
        }
        let last = segments.pop().expect("an asset key has a segment");
        path.extend(segments);
        path.push(format!("{last}.hyper"));
        path
    }

    fn storage_error(
        &self,
        action: impl Into<String>,
    ) -> impl FnOnce(tokio_postgres::Error) -> Error {
        let target = self.name.clone();
        let action = action.into();
        move |e| hyper_error(&target, &action, e)
    }
}

/// hyperd's message for a failed statement, with its detail and hint.
fn hyper_error(target: &str, action: &str, err: tokio_postgres::Error) -> Error {
    match err.as_db_error() {
        Some(db) => {
            let mut message = db.message().to_string();
            if let Some(hint) = db.hint() {
                message.push_str(&format!(" ({hint})"));
            }
            Error::storage(target, action, message)
        }
        None => Error::storage(target, action, err),
    }
}

/// An error of the COPY that streams a put's rows: hyperd refusing a value (out of its
/// range) is the client's data, anything else the storage's.
fn copy_error(target: &str, action: &str, err: tokio_postgres::Error) -> Error {
    match err.as_db_error() {
        Some(db) => Error::invalid_data(format!(
            "hyperd refused the rows of this put ({}): {}{}; Hyper's DATE, TIME and TIMESTAMP \
             ranges are narrower than Arrow's",
            db.code().code(),
            db.message(),
            db.detail()
                .filter(|d| !d.trim().is_empty())
                .map(|d| format!(" ({})", d.trim()))
                .unwrap_or_default()
        )),
        None => hyper_error(target, action, err),
    }
}

/// A fresh name beside `path` that the start-up sweep recognises: `<file>#<digits>`.
fn sibling(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(
        "#{}",
        uuid::Uuid::new_v4().as_u128() % 10u128.pow(30)
    ));
    path.with_file_name(name)
}

/// A path as hyperd takes it: a quoted identifier.
fn database(path: &Path) -> String {
    quote(&path.to_string_lossy())
}

#[async_trait]
impl Target for HyperTarget {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "hyper"
    }

    fn modes(&self) -> &'static [Mode] {
        &[Mode::Overwrite, Mode::Append]
    }

    fn location(&self, asset: &AssetKey, partition: Option<&Partition>) -> String {
        format!("file://{}", self.path(asset, partition).display())
    }

    async fn begin(&self, req: &WriteRequest, schema: SchemaRef) -> Result<Box<dyn AssetWriter>> {
        refuse_options("hyper", &req.options, &[])?;
        let columns = types::columns(&schema).map_err(|reason| {
            Error::invalid_data(format!(
                "target '{}' (hyper) cannot store asset '{}': {reason}",
                self.name, req.asset
            ))
        })?;
        let path = self.path(&req.asset, req.partition.as_ref());
        let temp = sibling(&path);
        let append = req.mode == Mode::Append && path.exists();
        if append && let Some(existing) = &req.existing {
            let same = existing.fields().len() == schema.fields().len()
                && existing.fields().iter().zip(schema.fields()).all(|(a, b)| {
                    a.name() == b.name()
                        && a.data_type() == b.data_type()
                        && a.is_nullable() == b.is_nullable()
                });
            if !same {
                return Err(Error::failed_precondition(format!(
                    "an append to asset '{}' in target '{}' must send the stored columns ({}); \
                     overwrite the asset to change its schema",
                    req.asset,
                    self.name,
                    existing
                        .fields()
                        .iter()
                        .map(|f| format!("{}: {}", f.name(), f.data_type()))
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
        let dir = path.parent().expect("a file under the root").to_path_buf();
        let (from, to) = (path.clone(), temp.clone());
        tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&dir)?;
            if append {
                std::fs::copy(&from, &to)?;
            }
            Ok::<_, std::io::Error>(())
        })
        .await?
        .map_err(|e| Error::storage(&self.name, format!("staging {}", temp.display()), e))?;
        // From here on the staged file exists; the writer removes it unless it commits.
        let mut writer = HyperWriter {
            target: self.name.clone(),
            location: self.location(&req.asset, req.partition.as_ref()),
            path,
            staged: Staged(Some(temp.clone())),
            client: None,
            sink: None,
            ipc: None,
            wire: types::wire_schema(&schema, &columns),
            rows: 0,
            prepared: false,
        };
        let client = self.hyperd.connect().await?;
        if !append {
            client
                .batch_execute(&format!(
                    "CREATE DATABASE {} WITH VERSION {DATABASE_VERSION}",
                    database(&temp)
                ))
                .await
                .map_err(self.storage_error("creating a .hyper file"))?;
        }
        client
            .batch_execute(&format!(
                "ATTACH DATABASE {} AS {WRITE_ALIAS}",
                database(&temp)
            ))
            .await
            .map_err(self.storage_error("attaching the new .hyper file"))?;
        let table = format!("{WRITE_ALIAS}.{TABLE}");
        if !append {
            client
                .batch_execute(&format!("CREATE SCHEMA {WRITE_ALIAS}.\"Extract\""))
                .await
                .map_err(self.storage_error("creating the Extract schema"))?;
            client
                .batch_execute(&types::create_table(&table, &schema, &columns))
                .await
                .map_err(|e| match e.as_db_error() {
                    // The statement is built from the put's schema (its column names).
                    Some(db) => Error::invalid_data(format!(
                        "target '{}' (hyper) cannot store asset '{}': hyperd refused its table: {}",
                        self.name,
                        req.asset,
                        db.message()
                    )),
                    None => hyper_error(&self.name, "creating the Extract table", e),
                })?;
        }
        let sink = client
            .copy_in::<_, Bytes>(&format!(
                "COPY {table} FROM STDIN WITH (FORMAT arrowstream)"
            ))
            .await
            .map_err(self.storage_error("starting COPY"))?;
        let ipc = StreamWriter::try_new(Vec::new(), &writer.wire).map_err(|e| {
            Error::invalid_data(format!("cannot encode this schema as Arrow IPC: {e}"))
        })?;
        writer.client = Some(client);
        writer.sink = Some(Box::pin(sink));
        writer.ipc = Some(ipc);
        writer.send().await?;
        Ok(Box::new(writer))
    }

    async fn read(&self, req: &ReadRequest) -> Result<SendableBatchStream> {
        let files: Vec<(PathBuf, Option<&Partition>)> = match &req.partitions {
            None => vec![(self.path(&req.asset, None), None)],
            Some(partitions) => partitions
                .iter()
                .map(|p| (self.path(&req.asset, Some(p)), Some(p)))
                .collect(),
        };
        // Every file is pinned before the first byte is read.
        let mut pins = Vec::with_capacity(files.len());
        for (path, partition) in files {
            let link = sibling(&path);
            let (from, to) = (path.clone(), link.clone());
            match tokio::task::spawn_blocking(move || std::fs::hard_link(from, to)).await? {
                Ok(()) => pins.push(Staged(Some(link))),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(Error::failed_precondition(format!(
                        "the catalog lists asset '{}'{} in target '{}' but its file {} is \
                         missing; write the asset again or delete it",
                        req.asset,
                        partition
                            .map(|p| format!(" partition '{p}'"))
                            .unwrap_or_default(),
                        self.name,
                        path.display()
                    )));
                }
                Err(e) => {
                    return Err(Error::storage(
                        &self.name,
                        format!("pinning {} for a read", path.display()),
                        e,
                    ));
                }
            }
        }
        let schema = req.output_schema()?;
        let select = format!(
            "COPY (SELECT {} FROM {READ_ALIAS}.{TABLE}) TO STDOUT WITH (FORMAT arrowstream)",
            schema
                .fields()
                .iter()
                .map(|f| quote(f.name()))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let hyperd = Arc::clone(&self.hyperd);
        let target = self.name.clone();
        let stream = async_stream_batches(move |tx| async move {
            for pin in pins {
                let result = read_file(&hyperd, &target, &pin, &select, &schema, &tx).await;
                drop(pin);
                match result {
                    Ok(()) => {}
                    Err(Reading::Closed) => return Err(crate::targets::util::Closed),
                    Err(Reading::Failed(e)) => return tx.send(Err(e)).await,
                }
            }
            Ok(())
        });
        Ok(Box::pin(stream))
    }

    async fn delete(&self, req: &DeleteRequest) -> Result<()> {
        let paths: Vec<PathBuf> = if req.partitions.is_empty() {
            vec![self.path(&req.asset, None)]
        } else {
            req.partitions
                .iter()
                .map(|p| self.path(&req.asset, Some(p)))
                .collect()
        };
        for path in paths {
            match tokio::fs::remove_file(&path).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(Error::storage(
                        &self.name,
                        format!("deleting {}", path.display()),
                        e,
                    ));
                }
            }
        }
        Ok(())
    }

    async fn healthcheck(&self) -> Result<()> {
        let client = self.hyperd.connect().await?;
        client
            .simple_query("SELECT 1")
            .await
            .map(|_| ())
            .map_err(self.storage_error("running SELECT 1 on hyperd"))
    }

    /// Removes the files of puts that never committed and the pins of reads that never
    /// finished (`<file>#<digits>`).
    async fn recover(&self, min_age: std::time::Duration) -> Result<Vec<String>> {
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || crate::targets::file::remove_staged(&root, min_age))
            .await?
            .map_err(|e| Error::storage(&self.name, "removing staged .hyper files", e))
    }

    /// The put landed if the file at its path is no longer the one its writer saw before
    /// renaming (the mark is that file's identity).
    async fn resolve(&self, put: &PendingPut) -> Result<Option<WriteSummary>> {
        let c = &put.commit;
        let path = self.path(&c.asset, c.partition.as_ref());
        let identity = identity(path.clone()).await?;
        if identity == put.mark {
            return Ok(None);
        }
        let size = tokio::fs::metadata(&path)
            .await
            .map(|m| m.len())
            .unwrap_or(0);
        Ok(Some(WriteSummary {
            rows: c.rows,
            bytes: size,
            location: self.location(&c.asset, c.partition.as_ref()),
            total_rows: None,
        }))
    }
}

/// The identity of the file at `path` as the file targets note it, or `absent`.
async fn identity(path: PathBuf) -> Result<String> {
    tokio::task::spawn_blocking(move || {
        if path.exists() {
            local_identity(&path)
        } else {
            Ok("absent".to_string())
        }
    })
    .await?
}

/// Why reading one file stopped early.
enum Reading {
    /// The client went away.
    Closed,
    Failed(Error),
}

impl From<Error> for Reading {
    fn from(e: Error) -> Self {
        Self::Failed(e)
    }
}

/// Streams the rows of one pinned file to `tx`, cast to `schema`.
async fn read_file(
    hyperd: &Hyperd,
    target: &str,
    pin: &Staged,
    select: &str,
    schema: &SchemaRef,
    tx: &crate::targets::util::Sender,
) -> Result<(), Reading> {
    let path = pin.0.as_deref().expect("a pinned file");
    let client = hyperd.connect().await?;
    client
        .batch_execute(&format!(
            "ATTACH DATABASE {} AS {READ_ALIAS}",
            database(path)
        ))
        .await
        .map_err(|e| hyper_error(target, "attaching a .hyper file", e))?;
    let bytes = client
        .copy_out(select)
        .await
        .map_err(|e| hyper_error(target, "reading a .hyper file", e))?;
    let mut bytes = Box::pin(bytes);
    let mut decoder = StreamDecoder::new();
    let decode_failed = |e| Error::format(target, "decode hyperd's Arrow stream", e);
    // hyperd ends its stream without an end-of-stream marker, and after only the schema
    // for a table without rows, which the decoder would take for a cut stream.
    let mut empty = true;
    while let Some(chunk) = bytes.next().await {
        let chunk = chunk.map_err(|e| hyper_error(target, "reading a .hyper file", e))?;
        let mut buffer = Buffer::from(chunk);
        while !buffer.is_empty() {
            if let Some(batch) = decoder.decode(&mut buffer).map_err(decode_failed)? {
                empty = false;
                let batch = types::cast_batch(&batch, schema).map_err(decode_failed)?;
                tx.send(Ok(batch)).await.map_err(|_| Reading::Closed)?;
            }
        }
    }
    if !empty {
        decoder.finish().map_err(decode_failed)?;
    }
    client
        .batch_execute(&format!("DETACH DATABASE {READ_ALIAS}"))
        .await
        .map_err(|e| hyper_error(target, "detaching a .hyper file", e))?;
    Ok(())
}

/// A file of this target's own (a put's new file, a read's pin) that goes when this drops,
/// unless taken.
struct Staged(Option<PathBuf>);

impl Drop for Staged {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Streams one put into a new `.hyper` file.
struct HyperWriter {
    target: String,
    location: String,
    /// The destination.
    path: PathBuf,
    staged: Staged,
    client: Option<tokio_postgres::Client>,
    sink: Option<Pin<Box<CopyInSink<Bytes>>>>,
    ipc: Option<StreamWriter<Vec<u8>>>,
    wire: SchemaRef,
    rows: u64,
    prepared: bool,
}

impl HyperWriter {
    fn fail(&self, action: &'static str) -> impl FnOnce(tokio_postgres::Error) -> Error + use<> {
        let target = self.target.clone();
        move |e| hyper_error(&target, action, e)
    }

    fn copy_failed(
        &self,
        action: &'static str,
    ) -> impl FnOnce(tokio_postgres::Error) -> Error + use<> {
        let target = self.target.clone();
        move |e| copy_error(&target, action, e)
    }

    /// Sends what the IPC writer has encoded so far.
    async fn send(&mut self) -> Result<()> {
        let ipc = self
            .ipc
            .as_mut()
            .ok_or_else(|| Error::internal("write after finish"))?;
        let bytes = std::mem::take(ipc.get_mut());
        if bytes.is_empty() {
            return Ok(());
        }
        let fail = self.copy_failed("streaming rows into hyperd");
        self.sink
            .as_mut()
            .ok_or_else(|| Error::internal("write after finish"))?
            .send(Bytes::from(bytes))
            .await
            .map_err(fail)
    }

    fn staged(&self) -> &Path {
        self.staged.0.as_deref().expect("the staged file")
    }
}

#[async_trait]
impl AssetWriter for HyperWriter {
    async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        self.rows += batch.num_rows() as u64;
        let batch = types::cast_batch(&batch, &self.wire).map_err(|e| {
            Error::invalid_data(format!("a value does not fit its Hyper column: {e}"))
        })?;
        self.ipc
            .as_mut()
            .ok_or_else(|| Error::internal("write after finish"))?
            .write(&batch)
            .map_err(|e| Error::invalid_data(format!("cannot encode a batch as Arrow IPC: {e}")))?;
        self.send().await
    }

    /// Ends the COPY, detaches the file and syncs it to disk, then notes which file the put
    /// is about to replace.
    async fn prepare(&mut self) -> Result<String> {
        if let Some(ipc) = self.ipc.as_mut() {
            ipc.finish()
                .map_err(|e| Error::internal(format!("finishing the Arrow IPC stream: {e}")))?;
        }
        self.send().await?;
        self.ipc = None;
        let fail = self.copy_failed("finishing COPY into hyperd");
        if let Some(sink) = self.sink.as_mut() {
            sink.as_mut().finish().await.map_err(fail)?;
        }
        self.sink = None;
        let fail = self.fail("detaching the new .hyper file");
        if let Some(client) = self.client.take() {
            client
                .batch_execute(&format!("DETACH DATABASE {WRITE_ALIAS}"))
                .await
                .map_err(fail)?;
        }
        let staged = self.staged().to_path_buf();
        tokio::task::spawn_blocking(move || std::fs::File::open(staged)?.sync_all())
            .await?
            .map_err(|e| Error::storage(&self.target, "syncing the new .hyper file", e))?;
        self.prepared = true;
        identity(self.path.clone()).await
    }

    async fn commit(mut self: Box<Self>) -> Result<WriteSummary> {
        if !self.prepared {
            self.prepare().await?;
        }
        let staged = self.staged.0.take().expect("the staged file");
        let path = self.path.clone();
        let bytes = tokio::task::spawn_blocking(move || {
            let bytes = std::fs::metadata(&staged)?.len();
            std::fs::rename(&staged, &path).inspect_err(|_| {
                let _ = std::fs::remove_file(&staged);
            })?;
            if let Some(dir) = path.parent() {
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok::<_, std::io::Error>(bytes)
        })
        .await?
        .map_err(|e| Error::storage(&self.target, format!("committing {}", self.location), e))?;
        Ok(WriteSummary {
            rows: self.rows,
            bytes,
            location: self.location.clone(),
            total_rows: None,
        })
    }

    /// Abandons the COPY and removes the new file; the destination stays as it was.
    async fn abort(mut self: Box<Self>) -> Result<()> {
        // Dropping the sink unfinished fails the COPY; detaching then releases the file.
        self.sink = None;
        if let Some(client) = self.client.take() {
            let _ = client
                .batch_execute(&format!("DETACH DATABASE {WRITE_ALIAS}"))
                .await;
        }
        Ok(())
    }
}
