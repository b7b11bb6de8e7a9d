//! A fresh PostgreSQL database per test, on the server named by `QUIVER_TEST_POSTGRES_URL`
//! (default `postgres://postgres@127.0.0.1:5432/test`).

use tokio_postgres::{Client, NoTls};

pub fn admin_url() -> String {
    std::env::var("QUIVER_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string())
}

pub async fn connect(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| {
            panic!("PostgreSQL must be reachable (set QUIVER_TEST_POSTGRES_URL): {e}")
        });
    tokio::spawn(connection);
    client
}

/// A database that exists for one test.
pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    pub async fn create() -> Self {
        let admin = connect(&admin_url()).await;
        let name = format!("quiver_test_{}", uuid::Uuid::new_v4().simple());
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create a test database");
        let mut url = url::Url::parse(&admin_url()).expect("QUIVER_TEST_POSTGRES_URL is a URL");
        url.set_path(&name);
        Self {
            name,
            url: url.to_string(),
        }
    }

    /// Configuration with one PostgreSQL target named `target` on this database.
    pub fn toml(&self, target: &str) -> String {
        format!(
            "[targets.{target}]\nkind = \"postgres\"\nurl = \"{}\"\n",
            self.url
        )
    }

    pub async fn client(&self) -> Client {
        connect(&self.url).await
    }

    pub async fn drop(self) {
        let admin = connect(&admin_url()).await;
        admin
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .await
            .expect("drop the test database");
    }
}
