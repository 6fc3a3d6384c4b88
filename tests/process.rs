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

#[test]
fn a_redis_password_never_reaches_the_logs() {
    let port = exchange_io::ports::free_listen_port();
    let data = std::env::temp_dir().join(format!("exchange-secrets-{}-{port}", std::process::id()));
    // Nothing listens on port 1: the exchange logs that Redis is not reachable, with its URL.
    let mut child = Command::new(env!("CARGO_BIN_EXE_exchange"))
        .arg("serve")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("EXCHANGE_HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("EXCHANGE_DATA_DIR", &data)
        .env("EXCHANGE_REDIS_URL", "redis://:t0p-s3cret@127.0.0.1:1")
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let _ = std::fs::remove_dir_all(&data);
    let logs = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(logs.contains("Redis not reachable") && logs.contains("redis://:***@127.0.0.1:1"), "{logs}");
    assert!(!logs.contains("t0p-s3cret"), "{logs}");
}
