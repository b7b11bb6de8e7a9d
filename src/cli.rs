//! Command-line interface.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::auth::AnonymousAccess;
use crate::client::{FileFormat, ServerArg};
use crate::config::Config;
use crate::error::Result;

#[derive(Debug, Parser)]
#[command(
    name = "quiver",
    version,
    about = "Arrow Flight service for storing and serving data assets"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the Flight server.
    Serve(ServeArgs),
    /// Store a local Parquet, CSV, NDJSON or Arrow IPC file as an asset.
    Put(PutCommand),
    /// Read an asset into a local file.
    Get(GetCommand),
    /// List stored assets.
    Ls(LsCommand),
    /// Delete an asset or one partition of it.
    Rm(RmCommand),
    /// List the server's targets.
    Targets(ServerArg),
    /// Ask the server's grpc.health.v1 service whether it serves (exit status 0 when it does).
    Health(ServerArg),
    /// Print a `password_hash` for [auth] users; reads the password from standard input.
    HashPassword,
    /// Print a `token_sha256` for [auth] tokens: of TOKEN, or of a new random token (printed too).
    HashToken(HashTokenArgs),
}

#[derive(Debug, clap::Args)]
pub struct HashTokenArgs {
    /// The token to hash; a new one is generated when absent.
    pub token: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct PutCommand {
    /// File to store; its format comes from the extension unless --format is given.
    pub file: PathBuf,
    /// Asset key, e.g. sales/daily.
    #[arg(long)]
    pub asset: String,
    /// Target name, e.g. parquet or duckdb.
    #[arg(long)]
    pub target: String,
    /// overwrite, append or upsert.
    #[arg(long, default_value = "overwrite")]
    pub mode: String,
    /// Partition key, or dimension=key pairs separated by commas.
    #[arg(long)]
    pub partition: Option<String>,
    /// Column holding the partition key (table targets).
    #[arg(long)]
    pub partition_column: Option<String>,
    /// Key column for upserts; repeat for several.
    #[arg(long)]
    pub key: Vec<String>,
    /// Idempotency key: a repeated put with the same key writes nothing.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Input format.
    #[arg(long, value_enum)]
    pub format: Option<FileFormat>,
    #[command(flatten)]
    pub server: ServerArg,
}

#[derive(Debug, clap::Args)]
pub struct GetCommand {
    /// Asset key.
    pub asset: String,
    /// Target name; optional when the asset is in exactly one target.
    #[arg(long)]
    pub target: Option<String>,
    /// Output file; its format comes from the extension unless --format is given.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Partition to read; repeat for several. Default: all.
    #[arg(long)]
    pub partition: Vec<String>,
    /// Columns to read, separated by commas. Default: all.
    #[arg(long, value_delimiter = ',')]
    pub columns: Option<Vec<String>>,
    /// Output format.
    #[arg(long, value_enum)]
    pub format: Option<FileFormat>,
    #[command(flatten)]
    pub server: ServerArg,
}

#[derive(Debug, clap::Args)]
pub struct LsCommand {
    /// Only assets in this target.
    #[arg(long)]
    pub target: Option<String>,
    /// Only assets whose key starts with this.
    #[arg(long)]
    pub prefix: Option<String>,
    /// Print JSON lines instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub server: ServerArg,
}

#[derive(Debug, clap::Args)]
pub struct RmCommand {
    /// Asset key.
    pub asset: String,
    /// Target name.
    #[arg(long)]
    pub target: String,
    /// Only this partition.
    #[arg(long)]
    pub partition: Option<String>,
    #[command(flatten)]
    pub server: ServerArg,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AnonymousArg {
    None,
    Read,
    Write,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// TOML configuration file; without one, the parquet, json, csv, arrow, duckdb and delta
    /// targets are enabled under the data directory.
    #[arg(long, env = "QUIVER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8815, or `listen` from the config file].
    #[arg(long, env = "QUIVER_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Directory for the catalog and default target roots [default: ./data, or `data_dir`
    /// from the config file].
    #[arg(long, env = "QUIVER_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// What callers without credentials may do: none, read or write [default: `[auth]
    /// anonymous` from the config file; without [auth], anything, on a loopback address only].
    #[arg(long, env = "QUIVER_ANONYMOUS", value_enum)]
    pub anonymous: Option<AnonymousArg>,
    /// How many servers run this configuration side by side [default: 1, or `replicas` from the
    /// config file]; above 1, storage one process owns is refused at start-up.
    #[arg(long, env = "QUIVER_REPLICAS")]
    pub replicas: Option<u32>,
    /// Serve `/metrics`, `/healthz` and `/readyz` over HTTP on this address [default: off, or
    /// `[metrics] listen` from the config file].
    #[arg(long, env = "QUIVER_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// With no config file (or one without `[targets]`), also enable a `postgres` target
    /// writing to this database.
    #[arg(long, env = "QUIVER_POSTGRES_URL", hide_env_values = true)]
    pub postgres_url: Option<String>,
    /// With no config file (or one without `[targets]`), also enable an `elasticsearch` target
    /// for this cluster.
    #[arg(long, env = "QUIVER_ELASTICSEARCH_URL", hide_env_values = true)]
    pub elasticsearch_url: Option<String>,
    /// With no config file (or one without `[targets]`), also enable an `opensearch` target
    /// for this cluster.
    #[arg(long, env = "QUIVER_OPENSEARCH_URL", hide_env_values = true)]
    pub opensearch_url: Option<String>,
    /// Log line format.
    #[arg(long, env = "QUIVER_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Log filter, in tracing's EnvFilter syntax.
    #[arg(long, env = "QUIVER_LOG", default_value = "info,delta_kernel=warn")]
    pub log: String,
}

impl ServeArgs {
    /// The configuration these arguments describe: the file (if any), then flags on top.
    pub fn load_config(&self) -> Result<Config> {
        let mut config = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        if let Some(listen) = self.listen {
            config.listen = listen;
        }
        if let Some(dir) = &self.data_dir {
            config.data_dir = dir.clone();
        }
        config.postgres_url = self.postgres_url.clone();
        config.elasticsearch_url = self.elasticsearch_url.clone();
        config.opensearch_url = self.opensearch_url.clone();
        if let Some(anonymous) = self.anonymous {
            config.auth.get_or_insert_with(Default::default).anonymous = match anonymous {
                AnonymousArg::None => AnonymousAccess::None,
                AnonymousArg::Read => AnonymousAccess::Read,
                AnonymousArg::Write => AnonymousAccess::Write,
            };
        }
        if let Some(replicas) = self.replicas {
            config.replicas = replicas;
        }
        if let Some(addr) = self.metrics_listen {
            config.metrics.listen = Some(addr);
        }
        // Checked before the listener binds; the server checks it again when it builds the
        // service (a library caller starts there), which also builds the authenticator once.
        config.validate()?;
        Ok(config)
    }
}
