#!/usr/bin/env bash
# Cold storage at load: the exchange in Kafka mode at its maximum (closed loop), once
# without PostgreSQL (the baseline) and once with it, in one run. Prints both runs'
# orders/s with the ratio, the writer's lag (`exchange_cold_store_lag_milliseconds`,
# sampled every 0.5 s) while the load runs, how long the writer takes to catch up once
# it stops, and the rows stored against the orders acknowledged. Needs tansu on
# 127.0.0.1:9092 (scripts/kafka-broker.sh) and PostgreSQL on 127.0.0.1:5432. Not run in CI.
#
#   perf/cold_lag.sh [seconds]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-30}
cargo build --release -q -p exchange -p perf
port=18191
pg=postgres://postgres@127.0.0.1:5432
db=exchange_bench_lag
psql "$pg/test" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db"
metric() { curl -s "127.0.0.1:$port/metrics" | awk -v m="$1" '$1 == m || index($1, m "{") == 1 {s += $2} END {print s + 0}'; }

run() { # name, with PostgreSQL (0/1)
  local name=$1 cold=$2 data pid
  data=$(mktemp -d)
  local env=(EXCHANGE_HTTP_ADDR=127.0.0.1:$port EXCHANGE_DATA_DIR=$data EXCHANGE_ADMIN_KEY=bench-admin
    EXCHANGE_RATE_LIMIT=0 EXCHANGE_CORES=0,1 RUST_LOG=warn
    EXCHANGE_KAFKA_BROKERS=127.0.0.1:9092 EXCHANGE_KAFKA_TOPIC_PREFIX=lag-$RANDOM-)
  [ "$cold" = 1 ] && env+=(EXCHANGE_POSTGRES_URL=$pg/$db)
  env "${env[@]}" target/release/exchange >"$data/log" 2>&1 &
  pid=$!
  for _ in $(seq 1 200); do
    curl -sf "127.0.0.1:$port/health" 2>/dev/null | grep -q '"status":"ok"' && break
    sleep 0.1
  done
  local samples=$data/lag
  if [ "$cold" = 1 ]; then
    (while kill -0 "$pid" 2>/dev/null; do metric exchange_cold_store_lag_milliseconds >>"$samples"; sleep 0.5; done) &
  fi
  local sampler=$!
  local out
  out=$(target/release/load --addr 127.0.0.1:$port --connections 64 --duration "$secs" | grep -E '^load|^requests' | tr '\n' ' ')
  echo "$name: $out"
  echo "$out" | grep -oE 'load: [0-9]+' | grep -oE '[0-9]+' >>"$rates"
  if [ "$cold" = 1 ]; then
    kill "$sampler" 2>/dev/null || true
    local stopped acked rows
    stopped=$(date +%s.%N)
    acked=$(metric exchange_orders_total)
    # Caught up: the orders table holds every order the exchange acknowledged.
    for _ in $(seq 1 600); do
      rows=$(psql "$pg/$db" -Atc "SELECT count(*) FROM orders")
      [ "$rows" -ge "$acked" ] && break
      sleep 0.1
    done
    local caught_up
    caught_up=$(echo "$(date +%s.%N) - $stopped" | bc)
    sort -n "$samples" | awk '{a[NR] = $1} END {printf "lag while loaded: %d samples, p50 %d ms, p99 %d ms, max %d ms\n", NR, a[int(NR * 0.5) + 1], a[int(NR * 0.99) + 1], a[NR]}'
    echo "caught up ${caught_up}s after the load stopped; orders counted by the exchange: $acked, order rows: $rows," \
      "trade rows: $(psql "$pg/$db" -Atc "SELECT count(*) FROM trades")"
  fi
  kill "$pid"; wait "$pid" 2>/dev/null || true
  rm -rf "$data"
}
rates=$(mktemp)
run "Kafka alone (baseline)" 0
run "Kafka + PostgreSQL" 1
echo "orders/s with PostgreSQL against without: $(paste -sd' ' "$rates" | awk '{printf "%.2f", $2 / $1}')"
rm -f "$rates"
psql "$pg/test" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)"
