use clap::Parser;
use tracing_subscriber::EnvFilter;

use quiver::cli::{Cli, Command, LogFormat};
use quiver::client;
use serde_json::{Value, json};

/// Buffers are allocated on one thread and freed on another all the time (decoding, encoding
/// threads, the blocking pool). glibc's per-thread arenas then hold on to freed memory, so the
/// footprint creeps up with the size of a put; mimalloc's per-thread heaps hold on to it with
/// the number of concurrent puts. jemalloc returns it in both cases.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run(Cli::parse().command).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("quiver: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(args: quiver::cli::ServeArgs) -> quiver::Result<()> {
    init_tracing(args.log_format, &args.log);
    let config = args.load_config()?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| quiver::Error::config(format!("cannot listen on {}: {e}", config.listen)))?;
    quiver::server::serve(config, listener, shutdown_signal()).await
}

/// Runs one command: the server, or a client command against a server.
async fn run(command: Command) -> quiver::Result<()> {
    match command {
        Command::Put(args) => {
            let mut flight = client::connect(&args.server).await?;
            let mut command =
                json!({"target": args.target, "asset": args.asset, "mode": args.mode});
            if let Some(p) = &args.partition {
                command["partition"] = client::partition_json(p);
            }
            if let Some(c) = &args.partition_column {
                command["partition_column"] = json!(c);
            }
            if !args.key.is_empty() {
                command["key"] = json!(args.key);
            }
            if let Some(k) = &args.idempotency_key {
                command["idempotency_key"] = json!(k);
            }
            let result = client::put(
                &mut flight,
                client::PutArgs {
                    file: args.file,
                    format: args.format,
                    command,
                },
            )
            .await?;
            println!("{result}");
        }
        Command::Get(args) => {
            let mut flight = client::connect(&args.server).await?;
            let mut ticket = json!({"asset": args.asset});
            if let Some(t) = &args.target {
                ticket["target"] = json!(t);
            }
            if !args.partition.is_empty() {
                ticket["partition"] = Value::Array(
                    args.partition
                        .iter()
                        .map(|p| client::partition_json(p))
                        .collect(),
                );
            }
            if let Some(c) = &args.columns {
                ticket["columns"] = json!(c);
            }
            let rows = client::get(&mut flight, ticket, &args.output, args.format).await?;
            println!("{rows} rows written to {}", args.output.display());
        }
        Command::Ls(args) => {
            let mut flight = client::connect(&args.server).await?;
            let mut criteria = json!({});
            if let Some(t) = &args.target {
                criteria["target"] = json!(t);
            }
            if let Some(p) = &args.prefix {
                criteria["prefix"] = json!(p);
            }
            let assets = client::list(&mut flight, criteria).await?;
            if args.json {
                for a in &assets {
                    println!("{a}");
                }
            } else {
                println!(
                    "{:<12} {:<40} {:>12} {:>14} {:>8}  UPDATED",
                    "TARGET", "ASSET", "ROWS", "BYTES", "VERSION"
                );
                for a in &assets {
                    println!(
                        "{:<12} {:<40} {:>12} {:>14} {:>8}  {}",
                        a["target"].as_str().unwrap_or(""),
                        a["asset"].as_str().unwrap_or(""),
                        a["rows"],
                        a["bytes"],
                        a["version"],
                        a["updated_at"].as_str().unwrap_or("")
                    );
                }
            }
        }
        Command::Rm(args) => {
            let mut flight = client::connect(&args.server).await?;
            let mut body = json!({"target": args.target, "asset": args.asset});
            if let Some(p) = &args.partition {
                body["partition"] = client::partition_json(p);
            }
            let result = client::action(&mut flight, "delete", Some(body)).await?;
            println!("{result}");
        }
        Command::Targets(server) => {
            let mut flight = client::connect(&server).await?;
            let targets = client::action(&mut flight, "list-targets", None).await?;
            for t in targets.as_array().into_iter().flatten() {
                println!(
                    "{:<16} {:<10} {}",
                    t["name"].as_str().unwrap_or(""),
                    t["kind"].as_str().unwrap_or(""),
                    t["modes"]
                        .as_array()
                        .map(|m| m
                            .iter()
                            .filter_map(Value::as_str)
                            .collect::<Vec<_>>()
                            .join(","))
                        .unwrap_or_default()
                );
            }
        }
        Command::Health(server) => println!("{}", client::health(&server).await?),
        Command::HashPassword => {
            let mut password = String::new();
            std::io::stdin().read_line(&mut password).map_err(|e| {
                quiver::Error::invalid_request(format!("reading the password: {e}"))
            })?;
            let password = password.trim_end_matches(['\r', '\n']);
            if password.is_empty() {
                return Err(quiver::Error::invalid_request(
                    "no password on standard input",
                ));
            }
            println!("{}", quiver::auth::hash_password(password)?);
        }
        Command::HashToken(args) => match args.token {
            Some(token) => println!("{}", quiver::auth::token_sha256(&token)),
            None => {
                let (token, digest) = quiver::auth::new_token()?;
                println!("token: {token}\ntoken_sha256: {digest}");
            }
        },
        Command::Serve(args) => serve(args).await?,
    }
    Ok(())
}

fn init_tracing(format: LogFormat, filter: &str) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = interrupt => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
    tracing::info!("shutting down: finishing in-flight calls");
}
