//! The `quiver` client commands: put, get, ls, rm and targets against a running server.

use std::fs::File;
use std::io::{BufReader, BufWriter, IsTerminal, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use arrow_array::{RecordBatch, RecordBatchReader};
use arrow_flight::encode::{DictionaryHandling, FlightDataEncoderBuilder};
use arrow_flight::error::FlightError;
use arrow_flight::{Action, FlightClient, FlightDescriptor, Ticket};
use arrow_schema::{ArrowError, SchemaRef};
use futures::{StreamExt, TryStreamExt};
use serde_json::{Value, json};

use crate::config::TransportConfig;
use crate::error::{Error, Result};

/// The server the client commands talk to.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArg {
    /// Quiver server address.
    #[arg(long, env = "QUIVER_SERVER", default_value = "grpc://localhost:8815")]
    pub server: String,
    /// PEM CA certificate trusted for `grpc+tls://` servers, besides the public web roots.
    #[arg(long, env = "QUIVER_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// API or session token, sent as `authorization: Bearer <token>`.
    #[arg(long, env = "QUIVER_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// File formats the client reads and writes, chosen by extension unless given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FileFormat {
    Parquet,
    Csv,
    Ndjson,
    Arrow,
}

impl FileFormat {
    pub fn from_path(path: &Path) -> Result<Self> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .unwrap_or_default();
        match ext.as_str() {
            "parquet" | "pq" => Ok(Self::Parquet),
            "csv" => Ok(Self::Csv),
            "json" | "ndjson" | "jsonl" => Ok(Self::Ndjson),
            "arrow" | "feather" | "ipc" => Ok(Self::Arrow),
            _ => Err(Error::invalid_request(format!(
                "cannot tell the format of {} from its extension; pass --format parquet|csv|ndjson|arrow",
                path.display()
            ))),
        }
    }
}

/// Rows per batch when reading local files.
const BATCH_ROWS: usize = 64 * 1024;

/// Connects to a server given as `grpc://host:port`, `http://host:port` or `host:port`,
/// sending the token (if any) with every call.
pub async fn connect(args: &ServerArg) -> Result<FlightClient> {
    let mut client = FlightClient::new(channel(args).await?);
    if let Some(token) = &args.token {
        client
            .add_header("authorization", &format!("Bearer {token}"))
            .map_err(|e| Error::invalid_request(format!("the token cannot be sent: {e}")))?;
    }
    Ok(client)
}

/// Asks the server's `grpc.health.v1` service about the whole server.
pub async fn health(args: &ServerArg) -> Result<String> {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let mut client = HealthClient::new(channel(args).await?);
    let response = client
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map_err(|s| Error::Remote {
            code: s.code(),
            message: s.message().to_string(),
        })?;
    let status = response.into_inner().status();
    if status != tonic_health::pb::health_check_response::ServingStatus::Serving {
        return Err(Error::Remote {
            code: tonic::Code::Unavailable,
            message: format!("the server reports {}", status.as_str_name()),
        });
    }
    Ok(status.as_str_name().to_string())
}

async fn channel(args: &ServerArg) -> Result<tonic::transport::Channel> {
    let server = args.server.as_str();
    let uri = match server.split_once("://") {
        Some(("grpc" | "grpc+tcp", rest)) => format!("http://{rest}"),
        Some(("grpc+tls", rest)) => format!("https://{rest}"),
        Some(_) => server.to_string(),
        None => format!("http://{server}"),
    };
    // The server's default HTTP/2 settings, for what this side receives (DoGet's batches):
    // fixed 16 MiB windows and 1 MiB frames instead of HTTP/2's 64 KiB and 16 KiB.
    let transport = TransportConfig::default();
    let mut endpoint = tonic::transport::Channel::from_shared(uri.clone())
        .map_err(|e| Error::invalid_request(format!("bad server address {server:?}: {e}")))?
        .initial_stream_window_size(transport.stream_window_bytes)
        .initial_connection_window_size(transport.connection_window_bytes)
        .max_frame_size(transport.max_frame_bytes);
    if uri.starts_with("https://") {
        crate::server::use_ring_for_tls();
        let mut tls = tonic::transport::ClientTlsConfig::new().with_webpki_roots();
        if let Some(ca) = &args.tls_ca {
            let pem = std::fs::read(ca).map_err(|e| {
                Error::invalid_request(format!("cannot read --tls-ca {}: {e}", ca.display()))
            })?;
            tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(pem));
        }
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| Error::invalid_request(format!("TLS setup for {uri}: {e}")))?;
    }
    endpoint.connect().await.map_err(|e| {
        Error::storage(
            "server",
            format!("connecting to {uri}"),
            format!("{e}; is `quiver serve` running there? (set --server or QUIVER_SERVER)"),
        )
    })
}

fn from_flight(err: FlightError) -> Error {
    match err {
        FlightError::Tonic(status) => Error::Remote {
            code: status.code(),
            message: status.message().to_string(),
        },
        other => Error::internal(other.to_string()),
    }
}

fn io_error(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error::invalid_request(format!("cannot read {}: {e}", path.display()))
}

fn read_error(path: &Path) -> impl Fn(ArrowError) -> Error + '_ {
    move |e| Error::invalid_data(format!("cannot read {}: {e}", path.display()))
}

/// The batches of a local file, read on a blocking thread.
type Batches = Box<dyn Iterator<Item = Result<RecordBatch>> + Send>;

/// Opens a local file as a schema and an iterator of batches.
fn open_file(path: &Path, format: FileFormat) -> Result<(SchemaRef, Batches)> {
    let file = File::open(path)
        .map_err(|e| Error::invalid_request(format!("cannot open {}: {e}", path.display())))?;
    let owned = path.to_path_buf();
    let wrap = move |r: Result<RecordBatch, ArrowError>| {
        r.map_err(|e| Error::invalid_data(format!("cannot read {}: {e}", owned.display())))
    };
    match format {
        FileFormat::Parquet => {
            let reader =
                parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
                    .map_err(|e| {
                        Error::invalid_data(format!("cannot read {}: {e}", path.display()))
                    })?
                    .with_batch_size(BATCH_ROWS)
                    .build()
                    .map_err(|e| {
                        Error::invalid_data(format!("cannot read {}: {e}", path.display()))
                    })?;
            let schema = reader.schema();
            Ok((schema, Box::new(reader.map(wrap))))
        }
        FileFormat::Arrow => {
            let reader = arrow_ipc::reader::FileReader::try_new_buffered(file, None);
            match reader {
                Ok(reader) => {
                    let schema = reader.schema();
                    Ok((schema, Box::new(reader.map(wrap))))
                }
                Err(_) => {
                    // Not an IPC file: try the IPC stream format.
                    let file = File::open(path).map_err(|e| {
                        Error::invalid_request(format!("cannot open {}: {e}", path.display()))
                    })?;
                    let reader = arrow_ipc::reader::StreamReader::try_new_buffered(file, None)
                        .map_err(read_error(path))?;
                    let schema = reader.schema();
                    Ok((schema, Box::new(reader.map(wrap))))
                }
            }
        }
        FileFormat::Csv => {
            let mut file = file;
            let (schema, _) = arrow_csv::reader::Format::default()
                .with_header(true)
                .infer_schema(&mut file, Some(10_000))
                .map_err(read_error(path))?;
            file.rewind().map_err(io_error(path))?;
            let schema = Arc::new(schema);
            let reader = arrow_csv::ReaderBuilder::new(Arc::clone(&schema))
                .with_header(true)
                .with_batch_size(BATCH_ROWS)
                .build(file)
                .map_err(read_error(path))?;
            Ok((schema, Box::new(reader.map(wrap))))
        }
        FileFormat::Ndjson => {
            let mut buffered = BufReader::new(file);
            let (schema, _) = arrow_json::reader::infer_json_schema(&mut buffered, Some(10_000))
                .map_err(read_error(path))?;
            buffered.rewind().map_err(io_error(path))?;
            let schema = Arc::new(schema);
            let reader = arrow_json::ReaderBuilder::new(Arc::clone(&schema))
                .with_batch_size(BATCH_ROWS)
                .build(buffered)
                .map_err(read_error(path))?;
            Ok((schema, Box::new(reader.map(wrap))))
        }
    }
}

/// Shows rows and MB/s on stderr while a transfer runs, when stdout is a terminal.
struct Progress {
    started: Instant,
    rows: u64,
    bytes: u64,
    live: bool,
}

impl Progress {
    fn new() -> Self {
        Self {
            started: Instant::now(),
            rows: 0,
            bytes: 0,
            live: std::io::stdout().is_terminal(),
        }
    }

    fn add(&mut self, batch: &RecordBatch) {
        self.rows += batch.num_rows() as u64;
        self.bytes += batch.get_array_memory_size() as u64;
        if self.live {
            let secs = self.started.elapsed().as_secs_f64().max(1e-3);
            eprint!(
                "\r{} rows, {:.1} MB/s   ",
                self.rows,
                self.bytes as f64 / 1e6 / secs
            );
        }
    }

    fn done(&self) {
        if self.live {
            eprintln!();
        }
    }
}

/// What `quiver put` sends.
pub struct PutArgs {
    pub file: PathBuf,
    pub format: Option<FileFormat>,
    pub command: Value,
}

/// Streams a local file to the server; returns the PutResult JSON.
pub async fn put(client: &mut FlightClient, args: PutArgs) -> Result<Value> {
    let format = match args.format {
        Some(f) => f,
        None => FileFormat::from_path(&args.file)?,
    };
    let (schema, batches) = open_file(&args.file, format)?;
    // Reading and decoding happen on a blocking thread; a small channel bounds memory.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<RecordBatch>>(2);
    tokio::task::spawn_blocking(move || {
        for batch in batches {
            if tx.blocking_send(batch).is_err() {
                return;
            }
        }
    });
    let mut progress = Progress::new();
    let input = tokio_stream::wrappers::ReceiverStream::new(rx).map(move |b| {
        if let Ok(batch) = &b {
            progress.add(batch);
        }
        b.map_err(|e| FlightError::ExternalError(Box::new(e)))
    });
    let data = FlightDataEncoderBuilder::new()
        .with_schema(schema)
        .with_flight_descriptor(Some(FlightDescriptor::new_cmd(args.command.to_string())))
        .with_dictionary_handling(DictionaryHandling::Resend)
        .build(input);
    let results: Vec<_> = client
        .do_put(data)
        .await
        .map_err(from_flight)?
        .try_collect()
        .await
        .map_err(from_flight)?;
    let first = results
        .first()
        .ok_or_else(|| Error::internal("the server answered without a PutResult"))?;
    serde_json::from_slice(&first.app_metadata)
        .map_err(|e| Error::internal(format!("the PutResult is not JSON: {e}")))
}

/// Reads an asset into a local file; returns the number of rows written.
pub async fn get(
    client: &mut FlightClient,
    ticket: Value,
    out: &Path,
    format: Option<FileFormat>,
) -> Result<u64> {
    let format = match format {
        Some(f) => f,
        None => FileFormat::from_path(out)?,
    };
    let mut stream = client
        .do_get(Ticket::new(ticket.to_string()))
        .await
        .map_err(from_flight)?;
    // The schema arrives with the first message; an empty asset still has one.
    let first = stream.next().await.transpose().map_err(from_flight)?;
    let schema = stream
        .schema()
        .cloned()
        .ok_or_else(|| Error::internal("the server sent no schema"))?;
    let tmp = out.with_extension("quiver-partial");
    let file = File::create(&tmp)
        .map_err(|e| Error::invalid_request(format!("cannot create {}: {e}", tmp.display())))?;
    let mut writer = Writer::new(format, file, schema)?;
    let mut progress = Progress::new();
    let mut rows = 0;
    let mut next = first;
    while let Some(batch) = next {
        progress.add(&batch);
        rows += batch.num_rows() as u64;
        writer.write(&batch)?;
        next = stream.next().await.transpose().map_err(from_flight)?;
    }
    writer.finish()?;
    progress.done();
    std::fs::rename(&tmp, out)
        .map_err(|e| Error::invalid_request(format!("cannot write {}: {e}", out.display())))?;
    Ok(rows)
}

/// The output file, written through a buffer: the Arrow IPC writer issues a write per column
/// buffer and per padding (hundreds of thousands of system calls for a large string table).
type Output = BufWriter<File>;

/// Bytes gathered before each write to the output file.
const OUTPUT_BUFFER: usize = 1 << 20;

enum Writer {
    Parquet(parquet::arrow::ArrowWriter<Output>),
    Csv(arrow_csv::Writer<Output>),
    Ndjson(arrow_json::LineDelimitedWriter<Output>),
    Arrow(arrow_ipc::writer::FileWriter<Output>),
}

impl Writer {
    fn new(format: FileFormat, file: File, schema: SchemaRef) -> Result<Self> {
        let fail = |e: String| Error::invalid_data(format!("cannot write this schema: {e}"));
        let file = BufWriter::with_capacity(OUTPUT_BUFFER, file);
        Ok(match format {
            FileFormat::Parquet => Self::Parquet(
                parquet::arrow::ArrowWriter::try_new(file, schema, None)
                    .map_err(|e| fail(e.to_string()))?,
            ),
            FileFormat::Csv => Self::Csv(arrow_csv::Writer::new(file)),
            FileFormat::Ndjson => Self::Ndjson(arrow_json::LineDelimitedWriter::new(file)),
            FileFormat::Arrow => Self::Arrow(
                arrow_ipc::writer::FileWriter::try_new(file, &schema)
                    .map_err(|e| fail(e.to_string()))?,
            ),
        })
    }

    fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        let result = match self {
            Self::Parquet(w) => w.write(batch).map_err(|e| e.to_string()),
            Self::Csv(w) => w.write(batch).map_err(|e| e.to_string()),
            Self::Ndjson(w) => w.write(batch).map_err(|e| e.to_string()),
            Self::Arrow(w) => w.write(batch).map_err(|e| e.to_string()),
        };
        result.map_err(|e| Error::invalid_data(format!("cannot write a batch: {e}")))
    }

    fn finish(self) -> Result<()> {
        let output = match self {
            Self::Parquet(w) => w.into_inner().map_err(|e| e.to_string()),
            Self::Csv(w) => Ok(w.into_inner()),
            Self::Ndjson(mut w) => w
                .finish()
                .map(|()| w.into_inner())
                .map_err(|e| e.to_string()),
            Self::Arrow(w) => w.into_inner().map_err(|e| e.to_string()),
        };
        let result = output.and_then(|mut out| out.flush().map_err(|e| e.to_string()));
        result.map_err(|e| Error::invalid_data(format!("cannot finish the file: {e}")))
    }
}

/// Lists assets as FlightInfo app_metadata JSON objects.
pub async fn list(client: &mut FlightClient, criteria: Value) -> Result<Vec<Value>> {
    let expression = if criteria.as_object().is_some_and(|o| o.is_empty()) {
        String::new()
    } else {
        criteria.to_string()
    };
    let infos: Vec<_> = client
        .list_flights(expression)
        .await
        .map_err(from_flight)?
        .try_collect()
        .await
        .map_err(from_flight)?;
    infos
        .iter()
        .map(|i| {
            serde_json::from_slice(&i.app_metadata)
                .map_err(|e| Error::internal(format!("bad FlightInfo metadata: {e}")))
        })
        .collect()
}

/// Runs one action and returns its JSON result.
pub async fn action(client: &mut FlightClient, name: &str, body: Option<Value>) -> Result<Value> {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let results: Vec<_> = client
        .do_action(Action::new(name, body))
        .await
        .map_err(from_flight)?
        .try_collect()
        .await
        .map_err(from_flight)?;
    let first = results
        .first()
        .ok_or_else(|| Error::internal(format!("action {name} returned nothing")))?;
    serde_json::from_slice(first).map_err(|e| Error::internal(format!("bad action result: {e}")))
}

/// Parses `--partition` values: `2024-01-01` or `date=2024-01-01,region=eu`.
pub fn partition_json(text: &str) -> Value {
    if text.contains('=') {
        let dims: serde_json::Map<String, Value> = text
            .split(',')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.trim().to_string(), Value::String(v.trim().to_string())))
            .collect();
        Value::Object(dims)
    } else {
        json!(text)
    }
}
