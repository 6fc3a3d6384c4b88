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
    Migrate,
    /// Rebuild hot state from the checkpoint and the log (needs EXCHANGE_REDIS_URL).
    RebuildState,
    /// Run one consistency check (needs EXCHANGE_REDIS_URL).
    Check,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
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
        Cmd::Migrate => exchange::cold::migrate_command(&config),
        Cmd::Check => Err(anyhow::anyhow!(
            "the consistency check is not in this build yet"
        )),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
