//! Work that must not run on a shard's core.
//!
//! A shard thread is pinned to its core and runs an executor that must never block:
//! every other task of the core waits behind a blocking call. And a thread started from
//! a pinned thread inherits its pinning, so a library that starts threads of its own
//! (librdkafka starts several per client) would put them on the shard's core too, where
//! they compete with it for every cycle. So blocking calls (a Kafka consumer's polls,
//! directory syncs, snapshot files) and the creation of such clients run here: on a
//! thread of their own, with the CPU mask the process had before any shard was pinned
//! ([`remember_affinity`], called at start).

use std::future::Future;
use std::sync::OnceLock;

static ORIGINAL: OnceLock<libc::cpu_set_t> = OnceLock::new();

/// Remembers the process's CPU mask; call it once at start, before any thread is
/// pinned. Later threads started here get this mask back.
pub fn remember_affinity() {
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid, writable cpu_set_t of the size passed.
    let ok = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) } == 0;
    if ok {
        let _ = ORIGINAL.set(set);
    }
}

/// Starts a thread named `name` that runs `f` off every shard's core.
///
/// # Errors
/// The thread could not be started.
pub fn spawn<F>(name: &str, f: F) -> std::io::Result<std::thread::JoinHandle<()>>
where
    F: FnOnce() + Send + 'static,
{
    std::thread::Builder::new().name(name.to_owned()).spawn(move || {
        unpin();
        f();
    })
}

/// Runs `f` on a thread of its own, off every shard's core, and waits for its result
/// without blocking the calling executor.
///
/// # Errors
/// The thread could not be started, or it ended without a result (it panicked).
pub fn run<T, F>(name: &str, f: F) -> impl Future<Output = Result<T, String>> + use<T, F>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let (tx, rx) = futures_channel::oneshot::channel();
    let started = spawn(name, move || {
        let _ = tx.send(f());
    })
    .map_err(|e| e.to_string());
    let name = name.to_owned();
    async move {
        started.map_err(|e| format!("{name}: no thread: {e}"))?;
        rx.await.map_err(|_| format!("{name}: the thread ended without a result"))
    }
}

/// Gives the calling thread the process's original CPU mask.
fn unpin() {
    if let Some(set) = ORIGINAL.get() {
        // SAFETY: `set` is a valid cpu_set_t read by `sched_getaffinity`.
        unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), set) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed() -> usize {
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
        (0..libc::CPU_SETSIZE as usize).filter(|c| unsafe { libc::CPU_ISSET(*c, &set) }).count()
    }

    #[test]
    fn a_thread_started_from_a_pinned_one_gets_the_original_mask() {
        remember_affinity();
        let everywhere = allowed();
        let from_pinned = std::thread::spawn(move || {
            let mut one: libc::cpu_set_t = unsafe { std::mem::zeroed() };
            unsafe { libc::CPU_SET(0, &mut one) };
            unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &one) };
            let inherited = std::thread::spawn(allowed).join().unwrap();
            let (tx, rx) = std::sync::mpsc::channel();
            spawn("t", move || tx.send(allowed()).unwrap()).unwrap();
            (inherited, rx.recv().unwrap())
        })
        .join()
        .unwrap();
        assert_eq!(from_pinned, (1, everywhere));
        assert_eq!(futures_lite::future::block_on(run("t", || 7)), Ok(7));
    }
}
