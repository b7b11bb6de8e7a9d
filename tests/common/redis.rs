//! Redis for tests: a real one when `QUIVER_TEST_REDIS_URL` names it, else Debian's
//! `redis-server` started on a free port with persistence off (`scripts/redis` installs it).

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;

pub struct RedisServer {
    pub url: String,
    /// Each target of this test uses the prefix `<prefix>.<target name>`, so tests can share a
    /// real Redis.
    pub prefix: String,
    port: Option<u16>,
    child: Option<Child>,
    dir: Option<tempfile::TempDir>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

impl RedisServer {
    pub async fn start() -> Self {
        let prefix = format!("qt{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        if let Ok(url) = std::env::var("QUIVER_TEST_REDIS_URL") {
            return Self {
                url,
                prefix,
                port: None,
                child: None,
                dir: None,
            };
        }
        let port = free_port();
        let mut server = Self {
            url: format!("redis://127.0.0.1:{port}/0"),
            prefix,
            port: Some(port),
            child: None,
            dir: Some(tempfile::tempdir().expect("temp dir")),
        };
        server.spawn().await;
        server
    }

    /// Whether the tests started this Redis themselves (and so may stop it).
    pub fn local(&self) -> bool {
        self.port.is_some()
    }

    async fn spawn(&mut self) {
        let port = self.port.expect("a local server").to_string();
        let dir = self.dir.as_ref().expect("a local server").path();
        let child = Command::new("redis-server")
            .args(["--port", &port, "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "no", "--dir"])
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start redis-server ({e}); run scripts/redis to install it \
                     (apt-get install redis-server), or set QUIVER_TEST_REDIS_URL"
                )
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(client) = redis::Client::open(self.url.as_str())
                && let Ok(mut c) = client.get_multiplexed_async_connection().await
                && redis::cmd("PING")
                    .query_async::<String>(&mut c)
                    .await
                    .is_ok()
            {
                return;
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills the local Redis, as a crash or an outage would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the local Redis again on the same port (empty: persistence is off).
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    /// The key prefix of target `name`.
    pub fn prefix_of(&self, name: &str) -> String {
        format!("{}.{name}", self.prefix)
    }

    /// A `[targets.<name>]` table for this Redis, with `extra` settings.
    pub fn target_toml(&self, name: &str, extra: &str) -> String {
        format!(
            "[targets.{name}]\nkind = \"redis\"\nurl = \"{}\"\nprefix = \"{}\"\n{extra}\n",
            self.url,
            self.prefix_of(name)
        )
    }

    pub async fn connection(&self) -> MultiplexedConnection {
        redis::Client::open(self.url.as_str())
            .expect("a Redis URL")
            .get_multiplexed_async_connection()
            .await
            .unwrap_or_else(|e| panic!("connect to {}: {e}", self.url))
    }

    /// Every key of this test's targets, sorted.
    pub async fn keys(&self) -> Vec<String> {
        let mut c = self.connection().await;
        let mut keys: Vec<String> = Vec::new();
        let mut cursor = 0u64;
        loop {
            let (next, found): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{{{}.*", self.prefix))
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut c)
                .await
                .expect("SCAN");
            keys.extend(found);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        keys.sort();
        keys.dedup();
        keys
    }

    /// The key `{<prefix of target>:<rest>`.
    pub fn key(&self, target: &str, rest: &str) -> String {
        format!("{{{}:{rest}", self.prefix_of(target))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.kill();
            return;
        }
        if self.local() {
            return;
        }
        // A shared Redis: remove this test's keys.
        let url = self.url.clone();
        let pattern = format!("{{{}.*", self.prefix);
        let _ = std::thread::spawn(move || {
            let Ok(client) = redis::Client::open(url.as_str()) else {
                return;
            };
            let Ok(mut c) = client.get_connection() else {
                return;
            };
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(&pattern)
                .query(&mut c)
                .unwrap_or_default();
            for batch in keys.chunks(1000) {
                let _: redis::RedisResult<()> = redis::cmd("UNLINK").arg(batch).query(&mut c);
            }
        })
        .join();
    }
}
