//! File targets: Parquet, NDJSON, CSV and Arrow IPC files in an object store.
//!
//! Every file goes through the `object_store` crate, so a root may be a local directory now and
//! an `s3://` bucket later without new code. The layout is Dagster's UPathIOManager's:
//! `root/<asset path>.<ext>`, and for partitioned assets `root/<asset path>/<partition>.<ext>`.
//!
//! Atomicity comes from the object store: a write is one upload to the final path, and an
//! upload only becomes visible when it completes (a staged file renamed into place on a local
//! disk, a completed multipart upload on S3). Aborting or dropping the writer discards it.

pub mod arrow;
mod config;
pub mod csv;
pub mod json;
pub(crate) mod parallel;
pub mod parquet;

use std::io::{Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::sync::{Arc, Mutex};

use arrow_array::RecordBatch;
use arrow_schema::{Schema, SchemaRef};
use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::buffered::BufWriter;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    GetOptions, GetRange, GetResult, GetResultPayload, ObjectMeta, ObjectStore, ObjectStoreExt,
};
use tokio::io::AsyncWriteExt;
use tokio::task::JoinHandle;

use crate::asset::{AssetKey, Partition};
use crate::catalog::PendingPut;
use crate::error::{Error, Result};
use crate::protocol::{Mode, Options};
pub(crate) use crate::targets::util::{
    async_stream_batches, find_unsupported, refuse_options, restore_types, text_dictionary_ok,
    wire_schema,
};
use crate::targets::{
    AssetWriter, DeleteRequest, ReadRequest, SendableBatchStream, Target, WriteRequest,
    WriteSummary,
};
pub use config::{
    Arrow, ArrowConfig, Csv, FileConfig, Json, Parquet, ParquetConfig, StorageOptions,
};

/// Bytes buffered before an upload part is sent.
const UPLOAD_PART_BYTES: usize = 10 * 1024 * 1024;
/// Upload parts in flight per writer.
const UPLOAD_CONCURRENCY: usize = 4;

/// A file format: how batches become bytes in one object and back.
#[async_trait]
pub(crate) trait Format: Send + Sync + 'static {
    fn kind(&self) -> &'static str;
    fn extension(&self) -> &'static str;
    /// Refuses a schema this format cannot store exactly, naming the column.
    fn check_schema(&self, schema: &Schema) -> Result<(), String>;
    /// An encoder writing the file's bytes into `out`.
    fn encoder(
        &self,
        schema: SchemaRef,
        out: SharedBuffer,
        options: &Options,
    ) -> Result<Box<dyn Encoder>>;
    /// Streams the batches of one stored file.
    async fn read(
        &self,
        object: PinnedObject,
        schema: SchemaRef,
        projection: Option<Vec<usize>>,
    ) -> Result<SendableBatchStream>;
}

/// A synchronous encoder; it runs on the blocking thread pool.
pub(crate) trait Encoder: Send {
    fn write(&mut self, batch: &RecordBatch) -> Result<()>;
    fn finish(&mut self) -> Result<()>;
    /// Called after [`Encoder::finish`] until it leaves the buffer empty: moves the next part
    /// of the file into it. A format whose file only exists whole at the end (an xlsx ZIP
    /// archive) builds it on local disk in `finish` and hands it over here part by part, so
    /// the upload never holds the whole file in memory.
    fn next_part(&mut self) -> Result<()> {
        Ok(())
    }
}

/// An in-memory sink shared between an encoder and the upload that drains it.
#[derive(Clone, Default)]
pub(crate) struct SharedBuffer(Arc<Mutex<Vec<u8>>>);

impl SharedBuffer {
    fn take(&self) -> Vec<u8> {
        std::mem::take(&mut *self.0.lock().expect("buffer lock"))
    }

    fn append(&self, bytes: &[u8]) {
        self.0.lock().expect("buffer lock").extend_from_slice(bytes);
    }
}

impl Write for SharedBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.append(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// One stored object, pinned to the version that was current when the read began: every
/// request carries its e-tag, so a commit that lands mid-read fails the read cleanly instead
/// of mixing two versions.
#[derive(Clone)]
pub(crate) struct PinnedObject {
    store: Arc<dyn ObjectStore>,
    meta: ObjectMeta,
    target: String,
    asset: String,
}

impl PinnedObject {
    pub(crate) fn size(&self) -> u64 {
        self.meta.size
    }

    /// The name of the target the object belongs to, for error messages.
    #[cfg_attr(not(feature = "excel"), allow(dead_code))]
    pub(crate) fn target(&self) -> &str {
        &self.target
    }

    fn options(&self, range: Option<GetRange>) -> GetOptions {
        GetOptions::default()
            .with_if_match(self.meta.e_tag.clone())
            .with_range(range)
    }

    fn map_err(&self, err: object_store::Error) -> Error {
        match err {
            object_store::Error::Precondition { .. } | object_store::Error::NotFound { .. } => {
                Error::ReadConflict {
                    target: self.target.clone(),
                    asset: self.asset.clone(),
                }
            }
            other => Error::storage(
                &self.target,
                format!("reading {}", self.meta.location),
                other,
            ),
        }
    }

    /// The whole object (or one range of it) as a stream of byte chunks.
    pub(crate) async fn stream(
        &self,
        range: Option<Range<u64>>,
    ) -> Result<futures::stream::BoxStream<'static, Result<Bytes>>> {
        let result: GetResult = self
            .store
            .get_opts(
                &self.meta.location,
                self.options(range.map(GetRange::Bounded)),
            )
            .await
            .map_err(|e| self.map_err(e))?;
        let this = self.clone();
        let chunks = match result.payload {
            GetResultPayload::File(file, path) => read_file(file, path, result.range),
            GetResultPayload::Stream(stream) => stream,
        };
        Ok(chunks.map_err(move |e| this.map_err(e)).boxed())
    }

    pub(crate) async fn bytes(&self, range: Range<u64>) -> Result<Bytes> {
        let result = self
            .store
            .get_opts(
                &self.meta.location,
                self.options(Some(GetRange::Bounded(range))),
            )
            .await
            .map_err(|e| self.map_err(e))?;
        result.bytes().await.map_err(|e| self.map_err(e))
    }
}

/// A target storing each asset as files of one format.
pub struct FileTarget {
    name: String,
    format: Arc<dyn Format>,
    store: Arc<dyn ObjectStore>,
    /// The root as users see it, e.g. `file:///data/parquet`.
    root_url: String,
}

impl FileTarget {
    pub fn parquet(name: &str, config: &ParquetConfig) -> Result<Self> {
        let format = parquet::ParquetFormat::new(config)?;
        Self::new(
            name,
            config.root.as_deref(),
            &config.storage,
            Arc::new(format),
        )
    }

    pub fn json(name: &str, config: &FileConfig) -> Result<Self> {
        Self::new(
            name,
            config.root.as_deref(),
            &config.storage,
            Arc::new(json::JsonFormat {
                threads: parallel::threads(config.threads).map_err(Error::config)?,
            }),
        )
    }

    pub fn csv(name: &str, config: &FileConfig) -> Result<Self> {
        Self::new(
            name,
            config.root.as_deref(),
            &config.storage,
            Arc::new(csv::CsvFormat {
                threads: parallel::threads(config.threads).map_err(Error::config)?,
            }),
        )
    }

    pub fn arrow(name: &str, config: &ArrowConfig) -> Result<Self> {
        let format = arrow::ArrowFormat::new(config)?;
        Self::new(
            name,
            config.root.as_deref(),
            &config.storage,
            Arc::new(format),
        )
    }

    /// A file target of any [`Format`]; the kinds outside this module (excel) build theirs here.
    pub(crate) fn new(
        name: &str,
        root: Option<&str>,
        storage: &StorageOptions,
        format: Arc<dyn Format>,
    ) -> Result<Self> {
        let root = root.ok_or_else(|| {
            Error::config(format!(
                "[targets.{name}] has no root; set root = \"<dir or URL>\""
            ))
        })?;
        let (store, root_url) = open_store(name, root, storage)?;
        Ok(Self {
            name: name.to_string(),
            format,
            store,
            root_url,
        })
    }

    fn path(&self, asset: &AssetKey, partition: Option<&Partition>) -> Path {
        let ext = self.format.extension();
        let mut parts: Vec<String> = asset.segments().to_vec();
        match partition {
            None => {
                let last = parts.pop().expect("an asset key has a segment");
                parts.push(format!("{last}.{ext}"));
            }
            Some(p) => {
                let mut segs: Vec<String> =
                    p.path_segments().iter().map(|s| s.to_string()).collect();
                let last = segs.pop().expect("a partition has a segment");
                parts.extend(segs);
                parts.push(format!("{last}.{ext}"));
            }
        }
        Path::from_iter(parts)
    }

    async fn pin(&self, asset: &AssetKey, partition: Option<&Partition>) -> Result<PinnedObject> {
        let path = self.path(asset, partition);
        let meta = self.store.head(&path).await.map_err(|e| match e {
            object_store::Error::NotFound { .. } => Error::failed_precondition(format!(
                "the catalog lists asset '{asset}'{} in target '{}' but its file {} is missing; \
                 write the asset again or delete it",
                partition
                    .map(|p| format!(" partition '{p}'"))
                    .unwrap_or_default(),
                self.name,
                self.location(asset, partition)
            )),
            other => Error::storage(&self.name, format!("opening {path}"), other),
        })?;
        Ok(PinnedObject {
            store: Arc::clone(&self.store),
            meta,
            target: self.name.clone(),
            asset: asset.to_string(),
        })
    }
}

/// Opens the object store behind a root: a local path or a URL object_store understands.
/// `s3://` roots also read the standard `AWS_*` environment variables; `storage` wins.
fn open_store(
    name: &str,
    root: &str,
    storage: &StorageOptions,
) -> Result<(Arc<dyn ObjectStore>, String)> {
    let local = match root.strip_prefix("file://") {
        Some(path) => Some(std::path::PathBuf::from(path)),
        None if !root.contains("://") => Some(std::path::PathBuf::from(root)),
        None => None,
    };
    let Some(dir) = local else {
        let (store, prefix) = open_url_store(name, root, storage)?;
        let store: Arc<dyn ObjectStore> =
            Arc::new(object_store::prefix::PrefixStore::new(store, prefix));
        return Ok((store, root.trim_end_matches('/').to_string()));
    };
    std::fs::create_dir_all(&dir).map_err(|e| {
        Error::config(format!(
            "[targets.{name}] cannot create root directory {}: {e}",
            dir.display()
        ))
    })?;
    let dir = dir
        .canonicalize()
        .map_err(|e| Error::config(format!("[targets.{name}] root {}: {e}", dir.display())))?;
    let store = LocalFileSystem::new_with_prefix(&dir)
        .map_err(|e| Error::config(format!("[targets.{name}] root {}: {e}", dir.display())))?;
    Ok((Arc::new(store), format!("file://{}", dir.display())))
}

/// The store behind a URL root (`s3://bucket/prefix`, ...) at its bucket's top, and the
/// root's path in it. `s3://` roots also read the standard `AWS_*` environment variables;
/// `storage` wins.
pub(crate) fn open_url_store(
    name: &str,
    root: &str,
    storage: &StorageOptions,
) -> Result<(Box<dyn ObjectStore>, Path)> {
    let bad =
        |e: &dyn std::fmt::Display| Error::config(format!("[targets.{name}] root {root:?}: {e}"));
    let url = url::Url::parse(root).map_err(|e| bad(&e))?;
    if url.scheme() == "s3" {
        let mut builder = AmazonS3Builder::from_env().with_url(root);
        for (key, value) in &storage.0 {
            let key: AmazonS3ConfigKey = key
                .parse()
                .map_err(|e| Error::config(format!("[targets.{name}.storage] {e}")))?;
            builder = builder.with_config(key, value);
        }
        let store = builder.build().map_err(|e| bad(&e))?;
        let prefix = Path::from_url_path(url.path()).map_err(|e| bad(&e))?;
        Ok((Box::new(store), prefix))
    } else {
        object_store::parse_url_opts(&url, &storage.0).map_err(|e| bad(&e))
    }
}

#[async_trait]
impl Target for FileTarget {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        self.format.kind()
    }

    fn modes(&self) -> &'static [Mode] {
        &[Mode::Overwrite]
    }

    fn location(&self, asset: &AssetKey, partition: Option<&Partition>) -> String {
        format!("{}/{}", self.root_url, self.path(asset, partition))
    }

    async fn begin(&self, req: &WriteRequest, schema: SchemaRef) -> Result<Box<dyn AssetWriter>> {
        self.format.check_schema(&schema).map_err(|reason| {
            Error::invalid_data(format!(
                "target '{}' ({}) cannot store asset '{}': {reason}",
                self.name,
                self.format.kind(),
                req.asset
            ))
        })?;
        let buffer = SharedBuffer::default();
        let encoder = self.format.encoder(schema, buffer.clone(), &req.options)?;
        let path = self.path(&req.asset, req.partition.as_ref());
        let sink =
            BufWriter::with_capacity(Arc::clone(&self.store), path.clone(), UPLOAD_PART_BYTES)
                .with_max_concurrency(UPLOAD_CONCURRENCY);
        Ok(Box::new(FileWriter {
            target: self.name.clone(),
            store: Arc::clone(&self.store),
            path: self.path(&req.asset, req.partition.as_ref()),
            location: self.location(&req.asset, req.partition.as_ref()),
            encoder: Some(encoder),
            encoding: None,
            buffer,
            sink,
            prepared: false,
            rows: 0,
            bytes: 0,
        }))
    }

    async fn read(&self, req: &ReadRequest) -> Result<SendableBatchStream> {
        let mut objects = Vec::new();
        match &req.partitions {
            None => objects.push(self.pin(&req.asset, None).await?),
            Some(partitions) => {
                for p in partitions {
                    objects.push(self.pin(&req.asset, Some(p)).await?);
                }
            }
        }
        let format = Arc::clone(&self.format);
        let schema = Arc::clone(&req.schema);
        let projection = req.projection.clone();
        let stream = futures::stream::iter(objects)
            .then(move |object| {
                let format = Arc::clone(&format);
                let schema = Arc::clone(&schema);
                let projection = projection.clone();
                async move { format.read(object, schema, projection).await }
            })
            .try_flatten();
        Ok(Box::pin(stream))
    }

    async fn delete(&self, req: &DeleteRequest) -> Result<()> {
        let paths: Vec<Path> = if req.partitions.is_empty() {
            vec![self.path(&req.asset, None)]
        } else {
            req.partitions
                .iter()
                .map(|p| self.path(&req.asset, Some(p)))
                .collect()
        };
        for path in paths {
            match self.store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(Error::storage(&self.name, format!("deleting {path}"), e)),
            }
        }
        Ok(())
    }

    async fn healthcheck(&self) -> Result<()> {
        // Listing the root proves the store answers without leaving anything behind.
        self.store
            .list_with_delimiter(None)
            .await
            .map(|_| ())
            .map_err(|e| Error::storage(&self.name, "listing the root", e))
    }

    /// Removes upload parts staged next to their destination (`<file>#<n>`) by puts that
    /// never completed. On object stores, incomplete multipart uploads are the bucket's to
    /// expire (an `AbortIncompleteMultipartUpload` lifecycle rule).
    async fn recover(&self, min_age: std::time::Duration) -> Result<Vec<String>> {
        let Some(dir) = self.root_url.strip_prefix("file://") else {
            return Ok(Vec::new());
        };
        let dir = std::path::PathBuf::from(dir);
        tokio::task::spawn_blocking(move || remove_staged(&dir, min_age))
            .await?
            .map_err(|e| Error::storage(&self.name, "removing staged upload parts", e))
    }

    /// The put landed if the file at its path is no longer the one its writer saw before
    /// committing (the mark is that file's identity). If it did not, its staged upload is
    /// removed by the start-up sweep (local disk) or the bucket's lifecycle rule.
    async fn resolve(&self, put: &PendingPut) -> Result<Option<WriteSummary>> {
        let c = &put.commit;
        let path = self.path(&c.asset, c.partition.as_ref());
        match file_identity(self.store.as_ref(), &path, &self.name).await? {
            Some((identity, size)) if identity != put.mark => Ok(Some(WriteSummary {
                rows: c.rows,
                bytes: size,
                location: self.location(&c.asset, c.partition.as_ref()),
                total_rows: None,
            })),
            _ => Ok(None),
        }
    }
}

/// The identity [`file_identity`] gives a local file, for tools and tests that look at a
/// data directory directly.
pub fn local_identity(path: &std::path::Path) -> Result<String> {
    let dir = path
        .parent()
        .ok_or_else(|| Error::internal("a file path without a directory"))?;
    let name = path
        .file_name()
        .ok_or_else(|| Error::internal("a path without a file name"))?;
    let store = LocalFileSystem::new_with_prefix(dir)
        .map_err(|e| Error::storage("local", "opening a directory", e))?;
    let location = Path::from(name.to_string_lossy().as_ref());
    futures::executor::block_on(file_identity(&store, &location, "local"))?
        .map(|(identity, _)| identity)
        .ok_or_else(|| Error::internal(format!("no file at {}", path.display())))
}

/// What tells one version of a file from another (its ETag, or size and modification time
/// where the store has none), with its size; `None` if there is no file.
async fn file_identity(
    store: &dyn ObjectStore,
    path: &Path,
    target: &str,
) -> Result<Option<(String, u64)>> {
    match store.head(path).await {
        Ok(meta) => {
            let identity = match (&meta.e_tag, &meta.version) {
                (Some(tag), version) => format!("etag:{tag}:{}", version.as_deref().unwrap_or("")),
                (None, _) => format!(
                    "meta:{}:{}",
                    meta.size,
                    meta.last_modified.timestamp_nanos_opt().unwrap_or_default()
                ),
            };
            Ok(Some((identity, meta.size)))
        }
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(Error::storage(target, format!("reading {path}"), e)),
    }
}

/// An encoding on the blocking pool; it hands the encoder back with its result.
type Encoding = JoinHandle<(Box<dyn Encoder>, Result<()>)>;

/// Encodes batches on the blocking pool and streams the bytes into one upload.
///
/// One batch is encoded while the put decodes the next: `write` hands the batch over and
/// returns, and waits only for the encoding of the batch before it.
struct FileWriter {
    target: String,
    store: Arc<dyn ObjectStore>,
    path: Path,
    location: String,
    /// `None` only while the encoder is away on the blocking pool.
    encoder: Option<Box<dyn Encoder>>,
    /// The encoding in flight, which holds the encoder.
    encoding: Option<Encoding>,
    buffer: SharedBuffer,
    sink: BufWriter,
    /// Everything but the upload's completion is done.
    prepared: bool,
    rows: u64,
    bytes: u64,
}

impl FileWriter {
    /// Starts `work` on the encoder once the encoding before it has finished.
    async fn encode(
        &mut self,
        work: impl FnOnce(&mut dyn Encoder) -> Result<()> + Send + 'static,
    ) -> Result<()> {
        self.settle().await?;
        let mut encoder = self
            .encoder
            .take()
            .ok_or_else(|| Error::internal("encoder used after a failed write"))?;
        self.encoding = Some(tokio::task::spawn_blocking(move || {
            let result = work(encoder.as_mut());
            (encoder, result)
        }));
        Ok(())
    }

    /// Waits for the encoding in flight and uploads what it produced; `false` if it produced
    /// nothing.
    async fn settle(&mut self) -> Result<bool> {
        let Some(encoding) = self.encoding.take() else {
            return Ok(false);
        };
        let (encoder, result) = encoding.await?;
        self.encoder = Some(encoder);
        result?;
        let bytes = self.buffer.take();
        if bytes.is_empty() {
            return Ok(false);
        }
        self.bytes += bytes.len() as u64;
        self.sink
            .put(Bytes::from(bytes))
            .await
            .map_err(|e| Error::storage(&self.target, format!("writing {}", self.location), e))?;
        Ok(true)
    }
}

#[async_trait]
impl AssetWriter for FileWriter {
    async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        self.rows += batch.num_rows() as u64;
        self.encode(move |encoder| encoder.write(&batch)).await
    }

    /// Encodes the file's end and uploads everything but the completion, then notes which
    /// file the put is about to replace ("absent" for none).
    async fn prepare(&mut self) -> Result<String> {
        self.encode(|encoder| encoder.finish()).await?;
        self.settle().await?;
        loop {
            self.encode(|encoder| encoder.next_part()).await?;
            if !self.settle().await? {
                break;
            }
        }
        self.prepared = true;
        Ok(file_identity(self.store.as_ref(), &self.path, &self.target)
            .await?
            .map_or_else(|| "absent".to_string(), |(identity, _)| identity))
    }

    async fn commit(mut self: Box<Self>) -> Result<WriteSummary> {
        if !self.prepared {
            self.prepare().await?;
        }
        self.sink.shutdown().await.map_err(|e| {
            Error::storage(&self.target, format!("completing {}", self.location), e)
        })?;
        Ok(WriteSummary {
            rows: self.rows,
            bytes: self.bytes,
            location: self.location.clone(),
            total_rows: None,
        })
    }

    async fn abort(mut self: Box<Self>) -> Result<()> {
        // An encoding in flight only fills the in-memory buffer; let it finish on its own.
        self.encoding.take();
        self.sink
            .abort()
            .await
            .map_err(|e| Error::storage(&self.target, format!("aborting {}", self.location), e))
    }
}

/// Decodes a stream of text bytes (NDJSON, CSV) with a push decoder, projecting each batch.
pub(crate) fn decode_text_stream<D>(
    mut bytes: futures::stream::BoxStream<'static, Result<Bytes>>,
    mut decoder: D,
    target: String,
    finish: impl Fn(RecordBatch) -> Result<RecordBatch> + Send + 'static,
) -> SendableBatchStream
where
    D: TextDecoder + Send + 'static,
{
    let stream = async_stream_batches(move |tx| async move {
        let mut buffered = Bytes::new();
        loop {
            if buffered.is_empty() {
                match bytes.next().await {
                    Some(Ok(b)) => buffered = b,
                    Some(Err(e)) => return tx.send(Err(e)).await,
                    None => break,
                }
            }
            let consumed = match decoder.decode(&buffered) {
                Ok(n) => n,
                Err(e) => {
                    return tx
                        .send(Err(Error::format(&target, "decode a stored file", e)))
                        .await;
                }
            };
            buffered = buffered.slice(consumed..);
            if !buffered.is_empty() {
                match decoder.flush() {
                    Ok(Some(batch)) => tx.send(finish(batch)).await?,
                    Ok(None) => {}
                    Err(e) => {
                        return tx
                            .send(Err(Error::format(&target, "decode a stored file", e)))
                            .await;
                    }
                }
            }
        }
        match decoder.flush() {
            Ok(Some(batch)) => tx.send(finish(batch)).await,
            Ok(None) => Ok(()),
            Err(e) => {
                tx.send(Err(Error::format(&target, "decode a stored file", e)))
                    .await
            }
        }
    });
    Box::pin(stream)
}

/// The push decoders of arrow-json and arrow-csv, seen through one interface.
pub(crate) trait TextDecoder {
    fn decode(&mut self, buf: &[u8]) -> Result<usize, arrow_schema::ArrowError>;
    fn flush(&mut self) -> Result<Option<RecordBatch>, arrow_schema::ArrowError>;
}

impl TextDecoder for arrow_json::reader::Decoder {
    fn decode(&mut self, buf: &[u8]) -> Result<usize, arrow_schema::ArrowError> {
        arrow_json::reader::Decoder::decode(self, buf)
    }

    fn flush(&mut self) -> Result<Option<RecordBatch>, arrow_schema::ArrowError> {
        arrow_json::reader::Decoder::flush(self)
    }
}

impl TextDecoder for arrow_csv::reader::Decoder {
    fn decode(&mut self, buf: &[u8]) -> Result<usize, arrow_schema::ArrowError> {
        arrow_csv::reader::Decoder::decode(self, buf)
    }

    fn flush(&mut self) -> Result<Option<RecordBatch>, arrow_schema::ArrowError> {
        arrow_csv::reader::Decoder::flush(self)
    }
}

/// Streams a stored text file (NDJSON, CSV) through `decoder`, which decodes the
/// [`wire_schema`]; batches come out with the stored types and `projection` applied.
pub(crate) async fn read_text<D: TextDecoder + Send + 'static>(
    object: PinnedObject,
    schema: SchemaRef,
    projection: Option<Vec<usize>>,
    action: &'static str,
    decoder: D,
) -> Result<SendableBatchStream> {
    let target = object.target.clone();
    let bytes = object.stream(None).await?;
    let finish_target = target.clone();
    Ok(decode_text_stream(bytes, decoder, target, move |batch| {
        restore_types(batch, &schema, projection.as_deref())
            .map_err(|e| Error::format(&finish_target, action, e))
    }))
}

/// Bytes read from a local file per blocking read. object_store's own stream reads 8 KiB per
/// blocking task: a 1.5 GB Arrow IPC file took ~190,000 hand-offs to the blocking pool, and
/// its DoGet spent more time switching threads than decoding.
const FILE_READ_CHUNK: u64 = 4 << 20;

/// `range` of an opened local file, in chunks read on the blocking pool one after another.
fn read_file(
    file: std::fs::File,
    path: std::path::PathBuf,
    range: Range<u64>,
) -> BoxStream<'static, object_store::Result<Bytes>> {
    let failed = |source: Box<dyn std::error::Error + Send + Sync>| object_store::Error::Generic {
        store: "LocalFileSystem",
        source,
    };
    futures::stream::try_unfold((file, range), move |(mut file, range)| {
        let path = path.clone();
        async move {
            if range.is_empty() {
                return Ok(None);
            }
            let len = (range.end - range.start).min(FILE_READ_CHUNK);
            let read = tokio::task::spawn_blocking(move || {
                let mut chunk = Vec::with_capacity(len as usize);
                file.seek(SeekFrom::Start(range.start))?;
                (&mut file).take(len).read_to_end(&mut chunk)?;
                Ok::<_, std::io::Error>((file, chunk))
            })
            .await;
            let (file, chunk) = match read {
                Ok(Ok(read)) => read,
                Ok(Err(e)) => return Err(failed(format!("{}: {e}", path.display()).into())),
                Err(e) => return Err(failed(Box::new(e))),
            };
            if chunk.len() as u64 != len {
                return Err(failed(
                    format!("{} ended before byte {}", path.display(), range.start + len).into(),
                ));
            }
            Ok(Some((
                Bytes::from(chunk),
                (file, range.start + len..range.end),
            )))
        }
    })
    .boxed()
}

/// Deletes files named `<name>#<digits>` (object_store's staged upload parts) under `dir`.
pub(crate) fn remove_staged(
    dir: &std::path::Path,
    min_age: std::time::Duration,
) -> std::io::Result<Vec<String>> {
    let mut removed = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                pending.push(path);
                continue;
            }
            let name = entry.file_name();
            let staged = name
                .to_string_lossy()
                .rsplit_once('#')
                .is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
            let age = entry.metadata()?.modified()?.elapsed().unwrap_or_default();
            if staged && age >= min_age {
                std::fs::remove_file(&path)?;
                removed.push(path.display().to_string());
            }
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod read_file_tests {
    use super::*;

    fn numbered(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    #[tokio::test]
    async fn a_range_across_several_chunks_arrives_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let whole = numbered(2 * FILE_READ_CHUNK as usize + 12_345);
        std::fs::write(&path, &whole).unwrap();
        let range = 77..whole.len() as u64 - 5;
        let chunks: Vec<Bytes> =
            read_file(std::fs::File::open(&path).unwrap(), path, range.clone())
                .try_collect()
                .await
                .unwrap();
        assert_eq!(chunks.len(), 3);
        assert!(chunks.iter().all(|c| c.len() as u64 <= FILE_READ_CHUNK));
        assert_eq!(
            chunks.concat(),
            whole[range.start as usize..range.end as usize]
        );
    }

    #[tokio::test]
    async fn a_file_shorter_than_the_range_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, numbered(1000)).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let err = read_file(file, path, 0..2000)
            .try_collect::<Vec<_>>()
            .await
            .unwrap_err();
        assert!(err.to_string().contains("ended before byte 2000"), "{err}");
    }
}
