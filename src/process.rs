//! Process-wide failure policy: the process lives or dies whole.
//!
//! A panic on a shard's thread would otherwise kill that thread alone while the process,
//! its other shards and `/health` carried on: requests for the dead shard's symbols and
//! accounts would hang, and systemd, seeing the process alive, would never restart it.
//! So a panic anywhere logs one clear line and aborts the process (a non-zero exit by
//! signal); the restart then recovers from the logs like after any crash, and no
//! acknowledged order is lost.

/// Installs the hook; call once, first thing in `main`.
pub fn abort_on_panic() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let thread = std::thread::current().name().unwrap_or("unnamed").to_owned();
        tracing::error!(thread, panic = %info, "a thread panicked: stopping the whole process so that it restarts whole");
        default(info);
        std::process::abort();
    }));
}
