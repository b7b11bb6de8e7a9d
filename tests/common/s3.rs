//! An S3 server for tests: s3s-fs (a file-backed implementation of the S3 API) on a free
//! port, with one bucket, credentials `quiver` / `quiver-secret`.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BUCKET: &str = "quiver";

pub struct S3Server {
    pub endpoint: String,
    pub dir: tempfile::TempDir,
    child: Child,
}

fn binary() -> PathBuf {
    if let Ok(path) = std::env::var("QUIVER_S3S_FS") {
        return PathBuf::from(path);
    }
    let home = std::env::var("HOME").expect("HOME is set");
    PathBuf::from(home).join(".cache/quiver/tools/bin/s3s-fs")
}

impl S3Server {
    pub fn start() -> Self {
        let binary = binary();
        assert!(
            binary.exists(),
            "s3s-fs not found at {}; run scripts/tools (or set QUIVER_S3S_FS)",
            binary.display()
        );
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir(dir.path().join(BUCKET)).expect("bucket directory");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new(&binary)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", "quiver", "--secret-key", "quiver-secret"])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start s3s-fs");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "s3s-fs did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            endpoint: format!("http://127.0.0.1:{port}"),
            dir,
            child,
        }
    }

    /// A `[targets.<name>]` table for a file target of `kind` under `s3://quiver/<prefix>`.
    pub fn target_toml(&self, name: &str, kind: &str, prefix: &str) -> String {
        format!(
            "[targets.{name}]\nkind = \"{kind}\"\nroot = \"s3://{BUCKET}/{prefix}\"\n\
             [targets.{name}.storage]\naws_endpoint = \"{}\"\naws_region = \"us-east-1\"\n\
             aws_access_key_id = \"quiver\"\naws_secret_access_key = \"quiver-secret\"\n\
             aws_allow_http = \"true\"\naws_virtual_hosted_style_request = \"false\"\n",
            self.endpoint
        )
    }

    /// Every object stored, relative to the bucket, sorted.
    pub fn objects(&self) -> Vec<String> {
        let mut out = Vec::new();
        let root = self.dir.path().join(BUCKET);
        let mut stack = vec![root.clone()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    stack.push(path);
                } else {
                    out.push(
                        path.strip_prefix(&root)
                            .unwrap()
                            .to_string_lossy()
                            .into_owned(),
                    );
                }
            }
        }
        out.sort();
        out
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
