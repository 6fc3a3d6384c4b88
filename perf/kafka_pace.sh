#!/usr/bin/env bash
# Acknowledgement latency in Kafka mode across rates, for several settings of the
# commands' producers, in one run:
#   cargo build --release && perf/kafka_pace.sh "EXCHANGE_KAFKA_LINGER_MS=0" "" ...
# Each argument is one setting (environment assignments, space-separated; "" for the
# defaults; `BIN=path` runs another build of the exchange). For each setting and each
# rate in RATES (default "200 2000 5000"), a fresh tansu broker (scripts/kafka-broker.sh
# --fresh: a broker holding earlier runs' topics slows down) and a fresh exchange, then
# `target/release/load --rate R --duration SECS --users 400` (open loop, default 8 s).
# Prints one line per setting and rate: p50 / p99 / p99.9 and orders/s.
set -euo pipefail
cd "$(dirname "$0")/.."
rates=${RATES:-200 2000 5000}
for setting in "$@"; do
  for rate in $rates; do
    scripts/kafka-broker.sh --fresh > /dev/null
    work=$(mktemp -d)
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    bin=target/release/exchange
    envs=()
    for kv in $setting; do
      case $kv in BIN=*) bin=${kv#BIN=} ;; *) envs+=("$kv") ;; esac
    done
    env EXCHANGE_ADMIN_KEY=bench-admin EXCHANGE_HTTP_ADDR=127.0.0.1:$port EXCHANGE_DATA_DIR=$work/data EXCHANGE_RATE_LIMIT=0 \
      EXCHANGE_CHECK_INTERVAL_SECS=0 EXCHANGE_KAFKA_BROKERS=127.0.0.1:9092 RUST_LOG=warn "${envs[@]}" "$bin" serve > "$work/server.log" 2>&1 &
    pid=$!
    for _ in $(seq 1 300); do curl -s "127.0.0.1:$port/health" | grep -q '"status":"ok"' && break; sleep 0.1; done
    out=$(target/release/load --addr 127.0.0.1:$port --rate "$rate" --duration "${SECS:-8}" --users 400 ${LOAD_ARGS:-} 2>&1 || true)
    kill $pid; wait $pid 2>/dev/null || true
    # With RUST_LOG=exchange_io=debug in a setting: how often streams changed producers.
    changes=$(grep -c "commands' producer changed" "$work/server.log" || true)
    rm -rf "$work"
    line=$(echo "$out" | grep -E 'p50|orders/s' | tr '\n' ' ')
    echo "kafka_pace: [${setting:-defaults}] rate $rate: $line(producer changes: $changes)"
  done
done
