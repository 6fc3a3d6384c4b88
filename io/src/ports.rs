//! Ports for servers that tests and tools start on this machine.

use std::collections::BTreeSet;
use std::hash::{BuildHasher, Hasher};
use std::net::TcpListener;
use std::sync::Mutex;

/// A free port on 127.0.0.1 for a server to listen on, below the kernel's ephemeral range
/// (`ip_local_port_range`).
///
/// A port from that range (what binding port 0 hands out) can be taken as the local end
/// of any outgoing connection between the moment it is picked and the moment the server
/// binds it: the exchange makes several at start (Kafka, Redis) before its shards bind,
/// and so do tests running beside it; the bind then fails with "Address already in use"
/// (seen in CI). The kernel never picks a port below the range for a connection, so one
/// from there stays free unless someone binds it on purpose: each is picked at random,
/// checked by binding it, and never handed out twice by one process.
pub fn free_listen_port() -> u16 {
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let (from, to) = (10_000, ephemeral_start().max(10_001));
    for _ in 0..10_000 {
        let mut hasher = std::hash::RandomState::new().build_hasher();
        hasher.write_u64(std::process::id().into());
        let port = from + (hasher.finish() % u64::from(to - from)) as u16;
        let fresh = GIVEN.lock().map(|mut given| given.insert(port)).unwrap_or(false);
        if fresh && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

/// The first port of the ephemeral range (Linux's default when it cannot be read).
fn ephemeral_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

#[cfg(test)]
mod tests {
    #[test]
    fn ports_are_below_the_ephemeral_range_free_and_never_given_twice() {
        let ports: Vec<u16> = (0..200).map(|_| super::free_listen_port()).collect();
        let start = super::ephemeral_start();
        assert!(ports.iter().all(|p| (10_000..start).contains(p)), "{ports:?}");
        let distinct: std::collections::BTreeSet<_> = ports.iter().collect();
        assert_eq!(distinct.len(), ports.len());
        assert!(std::net::TcpListener::bind(("127.0.0.1", ports[0])).is_ok());
    }
}
