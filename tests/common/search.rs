//! Search clusters for tests: a real one when `QUIVER_TEST_ELASTICSEARCH_URL` /
//! `QUIVER_TEST_OPENSEARCH_URL` name it, else the protocol servers from PyPI started on a free
//! port (noida-db for the Elasticsearch 8 API, osmem-server for the OpenSearch API), from the
//! virtualenv `scripts/test` sets up.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use elasticsearch::Elasticsearch;
use elasticsearch::auth::Credentials;
use elasticsearch::http::headers::HeaderMap;
use elasticsearch::http::transport::{SingleNodeConnectionPool, TransportBuilder};
use elasticsearch::http::{Method, Url};
use serde_json::Value;

pub struct SearchServer {
    /// `elasticsearch` or `opensearch`.
    pub kind: &'static str,
    pub url: String,
    /// Every index and alias of this test starts with it, so tests can share a real cluster.
    pub prefix: String,
    client: Elasticsearch,
    child: Option<Child>,
    _dir: Option<tempfile::TempDir>,
}

fn venv() -> PathBuf {
    std::env::var("QUIVER_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").expect("HOME is set")).join(".cache/quiver/venv")
        })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn client(url: &str) -> Elasticsearch {
    let mut url = Url::parse(url).expect("a cluster URL");
    let credentials = (!url.username().is_empty())
        .then(|| Credentials::Basic(url.username().into(), url.password().unwrap_or("").into()));
    let _ = url.set_username("");
    let _ = url.set_password(None);
    let mut builder = TransportBuilder::new(SingleNodeConnectionPool::new(url));
    if let Some(c) = credentials {
        builder = builder.auth(c);
    }
    Elasticsearch::new(builder.build().expect("an HTTP client"))
}

impl SearchServer {
    pub async fn start(kind: &'static str) -> Self {
        let variable = match kind {
            "elasticsearch" => "QUIVER_TEST_ELASTICSEARCH_URL",
            "opensearch" => "QUIVER_TEST_OPENSEARCH_URL",
            other => panic!("no search server of kind {other}"),
        };
        let prefix = format!("qt{}-", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        if let Ok(url) = std::env::var(variable) {
            return Self {
                kind,
                client: client(&url),
                url,
                prefix,
                child: None,
                _dir: None,
            };
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let mut command = match kind {
            "elasticsearch" => {
                let mut c = Command::new(venv().join("bin/noida-db"));
                c.arg("start")
                    .arg("--data-dir")
                    .arg(dir.path())
                    .args(["--only", "elasticsearch", "--host", "127.0.0.1"])
                    .args(["--elasticsearch-port", &port.to_string()]);
                c
            }
            _ => {
                let out = Command::new(venv().join("bin/python"))
                    .args([
                        "-c",
                        "import osmem_server; print(osmem_server.resolve_binary())",
                    ])
                    .output()
                    .expect("run the virtualenv's python; run scripts/test to set it up");
                assert!(
                    out.status.success(),
                    "osmem-server is not installed; run scripts/test"
                );
                let binary = String::from_utf8(out.stdout).unwrap().trim().to_string();
                let mut c = Command::new(binary);
                c.args(["-addr", &format!("127.0.0.1:{port}"), "-no-stdin-watch"]);
                c
            }
        };
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("start the {kind} test server ({e}); run scripts/test to install it")
            });
        let url = format!("http://127.0.0.1:{port}");
        let server = Self {
            kind,
            client: client(&url),
            url,
            prefix,
            child: Some(child),
            _dir: Some(dir),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok((200, _)) = server.try_request(Method::Get, "/", None).await {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the {kind} test server did not start"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        server
    }

    /// A `[targets.<name>]` table for this cluster.
    pub fn target_toml(&self, name: &str) -> String {
        format!(
            "[targets.{name}]\nkind = \"{}\"\nurl = \"{}\"\nindex_prefix = \"{}\"\n",
            self.kind, self.url, self.prefix
        )
    }

    async fn try_request(
        &self,
        method: Method,
        path: &str,
        body: Option<&str>,
    ) -> Result<(u16, Value), elasticsearch::Error> {
        let response = self
            .client
            .send::<Bytes, ()>(
                method,
                path,
                HeaderMap::new(),
                None,
                body.map(|b| Bytes::from(b.to_string())),
                None,
            )
            .await?;
        let status = response.status_code().as_u16();
        let bytes = response.bytes().await?;
        Ok((
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        ))
    }

    /// One request straight to the cluster: the status and the JSON reply.
    pub async fn request(&self, method: Method, path: &str, body: Option<&str>) -> (u16, Value) {
        self.try_request(method, path, body)
            .await
            .unwrap_or_else(|e| panic!("{} {path}: {e}", self.kind))
    }

    /// Names of this test's indices, sorted.
    pub async fn indices(&self) -> Vec<String> {
        let (status, reply) = self
            .request(
                Method::Get,
                &format!("/_cat/indices/{}*?format=json", self.prefix),
                None,
            )
            .await;
        assert_eq!(status, 200, "{reply}");
        let mut names: Vec<String> = reply
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i["index"].as_str().map(str::to_string))
            .collect();
        names.sort();
        names
    }

    /// The indices behind an alias (without the test prefix), sorted.
    pub async fn behind(&self, alias: &str) -> Vec<String> {
        let (status, reply) = self
            .request(
                Method::Get,
                &format!("/_alias/{}{alias}", self.prefix),
                None,
            )
            .await;
        if status == 404 {
            return Vec::new();
        }
        let mut names: Vec<String> = reply
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        names.sort();
        names
    }
}

impl Drop for SearchServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // noida-db runs its server as a child process: stop the whole group. Its data is
            // a temporary directory, so nothing needs a clean shutdown.
            let _ = Command::new("kill")
                .args(["-s", "KILL", "--", &format!("-{}", child.id())])
                .status();
            let _ = child.wait();
        } else {
            // A shared cluster: remove this test's indices, by name (clusters may refuse
            // wildcard deletes).
            let client = self.client.clone();
            let listing = format!("/_cat/indices/{}*?format=json", self.prefix);
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime");
                rt.block_on(async move {
                    let send = |method, path: String| {
                        let client = client.clone();
                        async move {
                            client
                                .send::<Bytes, ()>(
                                    method,
                                    &path,
                                    HeaderMap::new(),
                                    None,
                                    None,
                                    None,
                                )
                                .await
                        }
                    };
                    let Ok(response) = send(Method::Get, listing).await else {
                        return;
                    };
                    let indices: Value = response.json().await.unwrap_or(Value::Null);
                    let names: Vec<String> = indices
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|i| i["index"].as_str().map(str::to_string))
                        .collect();
                    if !names.is_empty() {
                        let _ = send(Method::Delete, format!("/{}", names.join(","))).await;
                    }
                });
            })
            .join();
        }
    }
}
