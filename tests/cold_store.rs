//! The PostgreSQL schema, applied by `exchange migrate` to a real PostgreSQL
//! (`EXCHANGE_TEST_POSTGRES_URL`, default `postgres://postgres@127.0.0.1:5432/test`;
//! unreachable is a failure, not a skip). Each test works in a database of its own.

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

fn admin_url() -> String {
    std::env::var("EXCHANGE_TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {url} is required for these tests: {e}"));
    tokio::spawn(connection);
    client
}

/// A database of the test's own, dropped at the end.
struct Database {
    name: String,
    url: String,
}

impl Database {
    fn create() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!("exchange_test_{}_{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
        let admin = admin_url();
        runtime().block_on(async {
            let c = connect(&admin).await;
            c.batch_execute(&format!("DROP DATABASE IF EXISTS {name}")).await.unwrap();
            c.batch_execute(&format!("CREATE DATABASE {name}")).await.unwrap();
        });
        let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b).to_owned();
        Self { url: format!("{base}/{name}"), name }
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let admin = admin_url();
        let name = self.name.clone();
        runtime().block_on(async move {
            let c = connect(&admin).await;
            let _ = c.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await;
        });
    }
}

fn migrate(url: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_exchange"))
        .arg("migrate")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("EXCHANGE_POSTGRES_URL", url)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run exchange migrate")
}

#[test]
fn migrate_creates_the_schema_once() {
    let db = Database::create();
    let first = migrate(&db.url);
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    assert!(String::from_utf8_lossy(&first.stdout).contains("applied V1__cold_storage"), "{first:?}");
    let second = migrate(&db.url);
    assert!(second.status.success());
    assert_eq!(String::from_utf8_lossy(&second.stdout).trim(), "schema up to date");
    runtime().block_on(async {
        let c = connect(&db.url).await;
        for table in ["orders", "trades", "accounts", "positions", "writer_offsets"] {
            let n: i64 = c
                .query_one("SELECT count(*) FROM information_schema.tables WHERE table_name = $1", &[&table])
                .await
                .unwrap()
                .get(0);
            assert_eq!(n, 1, "table {table}");
        }
        // Money and quantities are exact.
        for (table, column) in [("orders", "price"), ("orders", "filled_quantity"), ("trades", "buyer_fee"), ("accounts", "total")] {
            let t: String = c
                .query_one(
                    "SELECT data_type FROM information_schema.columns WHERE table_name = $1 AND column_name = $2",
                    &[&table, &column],
                )
                .await
                .unwrap()
                .get(0);
            assert_eq!(t, "numeric", "{table}.{column}");
        }
    });
}

#[test]
fn migrate_without_postgres_fails_clearly() {
    let out = migrate("postgres://postgres@127.0.0.1:1/none");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("connecting to PostgreSQL"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_exchange")).arg("migrate").env_remove("EXCHANGE_POSTGRES_URL").output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("EXCHANGE_POSTGRES_URL"));
}
