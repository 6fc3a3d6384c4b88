//! The `exchange` binary.

use std::path::PathBuf;
use std::process::ExitCode;

use exchange::shard_map::ShardMap;

fn main() -> ExitCode {
    let path = std::env::var_os("EXCHANGE_SHARD_MAP").map_or_else(|| PathBuf::from("shards/default.toml"), PathBuf::from);
    match ShardMap::load(&path) {
        Ok(map) => {
            for s in &map.symbols {
                println!("{} tick {} lot {} shard {}", s.name, s.tick_size, s.lot_size, s.shard);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: shard map: {e}");
            ExitCode::FAILURE
        }
    }
}
