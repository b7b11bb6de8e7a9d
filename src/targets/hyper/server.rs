//! The `hyperd` a Hyper target drives: started on first use, restarted when it has died,
//! stopped with the target.
//!
//! hyperd listens on a port it picks itself and tells it over a "callback connection" that
//! Quiver opens: a TCP socket on 127.0.0.1 that hyperd connects to at start-up. hyperd shuts
//! down as soon as that connection closes, so it never outlives the Quiver process, even one
//! killed with SIGKILL; dropping [`Hyperd`] also kills the child.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;

use crate::error::{Error, Result};

/// The role hyperd gives new databases; every connection logs in as it.
const USER: &str = "tableau_internal_user";
/// Longest wait for a starting hyperd to report its port.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Where `pip install tableauhyperapi` puts hyperd, below a site-packages directory.
const WHEEL_PATH: &str = "tableauhyperapi/bin/hyper/hyperd";
/// The environment variable naming hyperd when the target's `hyperd` setting does not.
pub const HYPERD_ENV: &str = "QUIVER_HYPERD";

/// One target's hyperd.
pub(crate) struct Hyperd {
    target: String,
    /// The `hyperd` setting, if any.
    binary: Option<PathBuf>,
    log_dir: PathBuf,
    running: Mutex<Option<Running>>,
}

/// A started hyperd.
struct Running {
    child: Child,
    port: u16,
    /// hyperd stops when this closes.
    _callback: TcpStream,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Hyperd {
    pub(crate) fn new(target: &str, binary: Option<PathBuf>, log_dir: PathBuf) -> Self {
        Self {
            target: target.to_string(),
            binary,
            log_dir,
            running: Mutex::new(None),
        }
    }

    /// A session on hyperd with no database attached, starting hyperd first if it is not
    /// running (or has died since).
    pub(crate) async fn connect(&self) -> Result<tokio_postgres::Client> {
        let port = self.port().await?;
        match self.session(port).await {
            Ok(client) => Ok(client),
            // A hyperd that was just killed may not have been reaped yet: give it a moment
            // to be seen gone, and start a new one if it is.
            Err(e) if self.exited().await => {
                tracing::debug!(target = %self.target, error = %e, "hyperd is gone");
                let port = self.port().await?;
                self.session(port).await
            }
            Err(e) => Err(e),
        }
    }

    /// Whether the hyperd last started has exited (waiting up to a second to see it go).
    async fn exited(&self) -> bool {
        for _ in 0..20 {
            let mut running = self.running.lock().await;
            match running.as_mut().map(|r| r.child.try_wait()) {
                Some(Ok(None)) => {}
                _ => return true,
            }
            drop(running);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    async fn session(&self, port: u16) -> Result<tokio_postgres::Client> {
        let mut config = tokio_postgres::Config::new();
        config
            .host("127.0.0.1")
            .port(port)
            .user(USER)
            .application_name("quiver")
            .connect_timeout(Duration::from_secs(10));
        let (client, connection) = config
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(|e| super::hyper_error(&self.target, "connecting to hyperd", e))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }

    /// The port of a live hyperd.
    async fn port(&self) -> Result<u16> {
        let mut running = self.running.lock().await;
        if let Some(r) = running.as_mut() {
            match r.child.try_wait() {
                Ok(None) => return Ok(r.port),
                Ok(Some(status)) => tracing::warn!(
                    target = %self.target,
                    %status,
                    log_dir = %self.log_dir.display(),
                    "hyperd exited; starting it again"
                ),
                Err(e) => tracing::warn!(
                    target = %self.target,
                    error = %e,
                    "cannot tell whether hyperd runs; starting it again"
                ),
            }
            *running = None;
        }
        let started = self.start().await?;
        let port = started.port;
        *running = Some(started);
        Ok(port)
    }

    async fn start(&self) -> Result<Running> {
        let binary = match &self.binary {
            Some(path) => path.clone(),
            None => find_hyperd().ok_or_else(|| {
                Error::failed_precondition(format!(
                    "target '{}' found no hyperd: set hyperd = \"<path>\" in [targets.{}] or \
                     {HYPERD_ENV}, or `pip install tableauhyperapi` (its wheel ships hyperd)",
                    self.target, self.target
                ))
            })?,
        };
        std::fs::create_dir_all(&self.log_dir).map_err(|e| {
            Error::storage(
                &self.target,
                format!("creating hyperd's log directory {}", self.log_dir.display()),
                e,
            )
        })?;
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| Error::storage(&self.target, "opening hyperd's callback socket", e))?;
        let callback = listener
            .local_addr()
            .map_err(|e| Error::storage(&self.target, "opening hyperd's callback socket", e))?;
        let mut child = Command::new(&binary)
            .arg("run")
            .arg("--skip-license")
            .arg("--no-password")
            .arg(format!("--init-user={USER}"))
            .arg(format!("--log-dir={}", self.log_dir.display()))
            .arg("--listen-connection=tab.tcp://127.0.0.1:auto")
            .arg(format!("--callback-connection=tab.tcp://{callback}"))
            .current_dir(&self.log_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                Error::failed_precondition(format!(
                    "target '{}' cannot start hyperd at {}: {e}; point the hyperd setting \
                     (or {HYPERD_ENV}) at the hyperd binary",
                    self.target,
                    binary.display()
                ))
            })?;
        match tokio::time::timeout(START_TIMEOUT, announced_port(&listener)).await {
            Ok(Ok((port, stream))) => {
                tracing::info!(target = %self.target, port, pid = child.id(), "started hyperd");
                Ok(Running {
                    child,
                    port,
                    _callback: stream,
                })
            }
            outcome => {
                let _ = child.kill();
                let status = child.wait().ok();
                let why = match outcome {
                    Ok(Err(e)) => e.to_string(),
                    _ => format!("it did not report a port within {START_TIMEOUT:?}"),
                };
                Err(Error::storage(
                    &self.target,
                    "starting hyperd",
                    format!(
                        "{why} (exit status {}); see its log in {}",
                        status.map_or("unknown".to_string(), |s| s.to_string()),
                        self.log_dir.display()
                    ),
                ))
            }
        }
    }
}

/// Accepts hyperd's callback connection and reads the address it listens on: a length byte,
/// then `tab.tcp://127.0.0.1:<port>` and a NUL.
async fn announced_port(listener: &TcpListener) -> std::io::Result<(u16, TcpStream)> {
    let (mut stream, _) = listener.accept().await?;
    let mut message = Vec::new();
    let mut chunk = [0u8; 256];
    while !message.contains(&0) || message.len() < 2 {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        message.extend_from_slice(&chunk[..n]);
    }
    parse_announcement(&message)
        .map(|port| (port, stream))
        .ok_or_else(|| {
            std::io::Error::other(format!(
                "hyperd announced no port: {:?}",
                String::from_utf8_lossy(&message)
            ))
        })
}

fn parse_announcement(message: &[u8]) -> Option<u16> {
    let text = String::from_utf8_lossy(message);
    let (_, rest) = text.split_once("tab.tcp://")?;
    let address = rest.split('\0').next()?;
    address.rsplit_once(':')?.1.parse().ok()
}

/// hyperd from `$QUIVER_HYPERD`, else from a `tableauhyperapi` installed by pip in a virtual
/// environment (`$VIRTUAL_ENV`), the user's or the system's site-packages, else `hyperd` on
/// `PATH`.
pub(crate) fn find_hyperd() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(HYPERD_ENV).filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(path));
    }
    let mut lib_dirs: Vec<PathBuf> = Vec::new();
    if let Some(venv) = std::env::var_os("VIRTUAL_ENV") {
        lib_dirs.push(Path::new(&venv).join("lib"));
    }
    if let Some(home) = std::env::var_os("HOME") {
        lib_dirs.push(Path::new(&home).join(".local/lib"));
    }
    lib_dirs.extend(["/usr/local/lib", "/usr/lib", "/opt/venv/lib"].map(PathBuf::from));
    for lib in lib_dirs {
        let Ok(entries) = std::fs::read_dir(&lib) else {
            continue;
        };
        let mut pythons: Vec<PathBuf> = entries
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("python3"))
            .map(|e| e.path())
            .collect();
        pythons.sort();
        for python in pythons.iter().rev() {
            for packages in ["site-packages", "dist-packages"] {
                let candidate = python.join(packages).join(WHEEL_PATH);
                if candidate.is_file() {
                    return Some(candidate);
                }
            }
        }
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("hyperd"))
            .find(|candidate| candidate.is_file())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_announced_port_is_read_from_the_callback_message() {
        assert_eq!(
            parse_announcement(b"\x1atab.tcp://127.0.0.1:44297\0"),
            Some(44297)
        );
        assert_eq!(parse_announcement(b"\x05junk\0"), None);
    }
}
