//! Command-line interface.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// TOML configuration file; without one, the parquet, json, csv and arrow targets are
    /// enabled under the data directory.
    #[arg(long, env = "QUIVER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 0.0.0.0:8815, or `listen` from the config file].
    #[arg(long, env = "QUIVER_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Directory for the catalog and default target roots [default: ./data, or `data_dir`
    /// from the config file].
    #[arg(long, env = "QUIVER_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Log line format.
    #[arg(long, env = "QUIVER_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Log filter, in tracing's EnvFilter syntax.
    #[arg(long, env = "QUIVER_LOG", default_value = "info")]
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
        config.validate()?;
        Ok(config)
    }
}
