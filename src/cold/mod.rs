//! Cold storage in PostgreSQL (layer 3): the schema and its migrations.
//!
//! The schema lives in `migrations/` as numbered SQL files, embedded in the binary and
//! applied by refinery (over tokio-postgres, on the sidecar's tokio runtime), which
//! records what it applied in `refinery_schema_history`: `exchange migrate` applies
//! what is missing, and running it again changes nothing.

use anyhow::Context;

pub mod checkpoint;
pub mod reader;
pub mod sync;
pub mod records;
pub mod writer;

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// Applies the migrations PostgreSQL at `url` does not have yet; returns their names.
///
/// # Errors
/// PostgreSQL unreachable, or a migration failed (it is rolled back).
pub async fn migrate(url: &str) -> anyhow::Result<Vec<String>> {
    migrate_client(&mut connect(url).await?).await
}

/// A connection to PostgreSQL at `url`, its driver spawned on the current tokio runtime.
///
/// # Errors
/// PostgreSQL unreachable or refusing.
pub async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) =
        tokio_postgres::connect(url, tokio_postgres::NoTls).await.with_context(|| format!("connecting to PostgreSQL ({})", exchange_io::redact(url)))?;
    tokio::spawn(connection);
    Ok(client)
}

/// [`migrate`] on an open connection.
///
/// # Errors
/// A migration failed (it is rolled back).
pub async fn migrate_client(client: &mut tokio_postgres::Client) -> anyhow::Result<Vec<String>> {
    // The writers, the checkpoint thread and `exchange migrate` may all start at once:
    // one applies, the others wait and find the schema up to date.
    client.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK]).await.context("waiting to migrate")?;
    let report = embedded::migrations::runner().run_async(client).await.context("applying migrations");
    let unlocked = client.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK]).await;
    let report = report?;
    unlocked.context("releasing the migration lock")?;
    Ok(report.applied_migrations().iter().map(ToString::to_string).collect())
}

/// The advisory lock migrations take (any number the exchange alone uses).
const MIGRATION_LOCK: i64 = 0x0045_5843_4d49_4752;

/// `exchange migrate`.
///
/// # Errors
/// No `EXCHANGE_POSTGRES_URL`, or [`migrate`] failed.
pub fn migrate_command(config: &crate::config::Config) -> anyhow::Result<()> {
    let url = config.postgres.url.as_deref().context("EXCHANGE_POSTGRES_URL is not set")?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let applied = rt.block_on(migrate(url))?;
    if applied.is_empty() {
        println!("schema up to date");
    }
    for name in applied {
        println!("applied {name}");
    }
    Ok(())
}
