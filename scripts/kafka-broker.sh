#!/usr/bin/env bash
# Makes sure a Kafka-protocol broker answers on 127.0.0.1:9092 for the Kafka-mode tests:
# installs `tansu` (a Kafka-compatible broker from crates.io) the first time (about 15
# minutes of building on 2 cores), and starts it in memory if nothing listens there yet.
# Prints the pid of a broker it started (empty if one was already running).
#
# With --fresh (the test suite), a tansu broker already listening there is stopped and a
# new one started: tansu's memory store never drops a topic, and a broker that has held
# every topic of several suite runs answers slowly enough to fail acknowledgement
# deadlines. A broker that is not tansu (a real Kafka) is used as it is.
set -euo pipefail
export PATH="$HOME/.cargo/bin:$PATH"
port_open() { (exec 3<>/dev/tcp/127.0.0.1/9092) 2>/dev/null; }
if [ "${1:-}" = "--fresh" ] && port_open; then
  old=$(pgrep -f 'tansu broker .*127\.0\.0\.1:9092' || true)
  if [ -n "$old" ]; then
    echo "== stopping the running tansu broker ($old) to start a fresh one" >&2
    kill $old 2>/dev/null || true
    for _ in $(seq 1 100); do port_open || break; sleep 0.1; done
  fi
fi
if port_open; then
  exit 0
fi
if ! command -v tansu >/dev/null 2>&1; then
  echo "== installing the tansu broker (first time only)" >&2
  # Without --locked the build breaks; without a storage feature it exits at start.
  cargo install tansu --locked --features dynostore >&2
fi
# TANSU_LOG names the broker's log file (test.sh shows its errors when a suite fails).
log="${TANSU_LOG:-${TMPDIR:-/tmp}/tansu-$$.log}"
RUST_LOG="${TANSU_RUST_LOG:-warn}" nohup tansu broker \
  --listener-url tcp://127.0.0.1:9092 \
  --advertised-listener-url tcp://127.0.0.1:9092 \
  --storage-engine memory://tansu/ >"$log" 2>&1 &
pid=$!
for _ in $(seq 1 100); do
  if port_open; then
    echo "$pid"
    exit 0
  fi
  sleep 0.1
done
echo "tansu did not start; its log:" >&2
cat "$log" >&2
exit 1
