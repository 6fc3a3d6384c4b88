//! The `exchange` binary: `serve` (default), and the operations commands.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(version, about = "A thread-per-core perpetual-futures exchange")]
struct Cli {
    /// TOML configuration file; environment variables (EXCHANGE_*) override it.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the exchange (the default).
    Serve,
    /// Apply the PostgreSQL schema in migrations/ (needs EXCHANGE_POSTGRES_URL).
    Migrate {
        /// Succeed doing nothing when EXCHANGE_POSTGRES_URL is not set (for a unit that
        /// runs it before every start, with or without PostgreSQL).
        #[arg(long)]
        if_configured: bool,
    },
    /// Rebuild hot state from the checkpoint and the log (needs EXCHANGE_REDIS_URL).
    RebuildState,
    /// Run one consistency check in the running exchange (EXCHANGE_HTTP_ADDR,
    /// EXCHANGE_ADMIN_KEY): exit 0 if clean, 1 if something was repaired, 2 on error.
    Check,
}

/// Asks the running exchange for one consistency check and prints its report; whether
/// it was clean.
fn check(config: &exchange::config::Config) -> anyhow::Result<bool> {
    let key = config.admin_key.as_deref().ok_or_else(|| anyhow::anyhow!("EXCHANGE_ADMIN_KEY is not set"))?;
    let url = format!("http://{}/admin/v1/check", config.http_addr);
    let response = match ureq::post(&url).set("x-admin-key", key).timeout(std::time::Duration::from_secs(600)).call() {
        Ok(r) => r,
        Err(ureq::Error::Status(code, r)) => anyhow::bail!("{url}: {code} {}", r.into_string().unwrap_or_default()),
        Err(e) => anyhow::bail!("{url}: {e}"),
    };
    let report: serde_json::Value = response.into_json()?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(report["clean"] == true)
}

/// glibc's allocator spent about 9 % of an order's CPU (arena locks between the shard
/// threads, consolidation); mimalloc's per-thread pages cost a fraction of it (measured
/// in perf/RESULTS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit status of a process that another one superseded on the event log's topics;
/// the systemd unit does not restart it (`RestartPreventExitStatus`).
const SUPERSEDED: u8 = 4;

fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // glommio's one message there says that its probe for polled I/O failed, which the
    // journal makes it do on purpose (`exchange_io::journal`, off the polled ring).
    let filter = match "glommio::reactor=off".parse() {
        Ok(quiet) => filter.add_directive(quiet),
        Err(_) => filter,
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
    exchange::process::abort_on_panic();
    // Before any thread is pinned: helper threads get this mask back (io::offcore).
    exchange_io::offcore::remember_affinity();
    let cli = Cli::parse();
    let config = match exchange::config::Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    let result = match cli.command.unwrap_or(Cmd::Serve) {
        Cmd::Serve => exchange::server::run(config, exchange::server::Mode::Serve),
        Cmd::RebuildState => exchange::server::run(config, exchange::server::Mode::RebuildState),
        Cmd::Migrate { if_configured: true } if config.postgres.url.is_none() => {
            println!("EXCHANGE_POSTGRES_URL is not set: no schema to apply");
            Ok(())
        }
        Cmd::Migrate { .. } => exchange::cold::migrate_command(&config),
        Cmd::Check => match check(&config) {
            Ok(true) => Ok(()),
            Ok(false) => return ExitCode::from(1),
            Err(e) => {
                eprintln!("error: {e:#}");
                return ExitCode::from(2);
            }
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is::<exchange::server::Superseded>() => {
            eprintln!("error: {e:#}");
            ExitCode::from(SUPERSEDED)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
