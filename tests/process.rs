//! The process lives or dies whole: a panic on any thread ends it at once, with a
//! non-zero exit and a clear log line (`exchange::process::abort_on_panic`).
//!
//! The test runs itself again as a child process that installs the hook and panics on a
//! thread of its own, the way a shard's thread would.

use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::time::{Duration, Instant};

const CHILD: &str = "EXCHANGE_TEST_PANIC_CHILD";

#[test]
fn a_panic_on_any_thread_takes_the_whole_process_down_at_once() {
    if std::env::var_os(CHILD).is_some() {
        tracing_subscriber::fmt().with_writer(std::io::stderr).init();
        exchange::process::abort_on_panic();
        let _ = std::thread::Builder::new().name("shard-1".into()).spawn(|| panic!("boom on a shard"));
        // Without the hook the main thread carries on, as the other shards would.
        std::thread::sleep(Duration::from_secs(10));
        std::process::exit(0);
    }
    let started = Instant::now();
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "a_panic_on_any_thread_takes_the_whole_process_down_at_once", "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.signal(), Some(libc::SIGABRT), "{:?}\n{stderr}", out.status);
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    assert!(stderr.contains("boom on a shard") && stderr.contains("stopping the whole process"), "{stderr}");
    assert!(stderr.contains("shard-1"), "{stderr}");
}
