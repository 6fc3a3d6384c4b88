#!/usr/bin/env bash
# Starts many exchanges at once, again and again, and counts those that do not become
# healthy in time: the check for start-up hangs under load (several processes starting
# together on two cores, each connecting to Kafka and Redis).
#   perf/start_storm.sh [ROUNDS] [AT_ONCE] [ENV=VALUE ...]
# BIN (default target/debug/exchange, the build the tests start), PATIENCE seconds
# (default 60). Kafka at 127.0.0.1:9092 and Redis at 127.0.0.1:6379 must answer; each
# exchange gets its own topic prefix, Redis database prefix, data directory and port.
# Prints one line per round and `start_storm: <healthy>/<started> healthy`.
set -uo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-10}; at_once=${2:-8}; shift $(( $# >= 2 ? 2 : $# ))
bin=${BIN:-target/debug/exchange}; patience=${PATIENCE:-60}
work=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null; [ -n "${KEEP:-}" ] && echo "logs in $work" || rm -rf "$work"' EXIT
free_port() { python3 -c 'import random,socket
while True:
    p=random.randint(20000,32000); s=socket.socket()
    try: s.bind(("127.0.0.1",p)); print(p); break
    except OSError: pass'; }
healthy=0; started=0
for round in $(seq 1 "$rounds"); do
  pids=(); ports=()
  for i in $(seq 1 "$at_once"); do
    port=$(free_port); tag="storm$$r${round}i$i"
    env EXCHANGE_HTTP_ADDR=127.0.0.1:$port EXCHANGE_DATA_DIR=$work/$tag EXCHANGE_KAFKA_BROKERS=127.0.0.1:9092 \
      EXCHANGE_KAFKA_TOPIC_PREFIX=$tag. EXCHANGE_KAFKA_PARTITIONS=2 EXCHANGE_REDIS_URL=redis://127.0.0.1:6379 EXCHANGE_REDIS_PREFIX=$tag: RUST_LOG=warn "$@" \
      "$bin" serve > "$work/$tag.log" 2>&1 &
    pids+=($!); ports+=($port)
  done
  ok=0; t0=$(date +%s)
  for port in "${ports[@]}"; do
    until curl -s "127.0.0.1:$port/health" | grep -q '"status":"ok"'; do
      [ $(( $(date +%s) - t0 )) -ge "$patience" ] && break
      sleep 0.2
    done
    curl -s "127.0.0.1:$port/health" | grep -q '"status":"ok"' && ok=$((ok + 1))
  done
  echo "round $round: $ok/$at_once healthy within ${patience}s (last after $(( $(date +%s) - t0 ))s)"
  healthy=$((healthy + ok)); started=$((started + at_once))
  kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null
done
echo "start_storm: $healthy/$started healthy"
