#!/usr/bin/env bash
# Orders/s and ack latency of the whole exchange with each combination of event log
# (embedded journal, Kafka) and hot state (in-process, Redis), in one run, with ratios
# against embedded/in-process; and the Redis commands each order cost. Needs a release
# build, tansu on 127.0.0.1:9092 (scripts/kafka-broker.sh) and Redis on 127.0.0.1:6379
# (scripts/redis.sh). Not run in CI.
#
#   perf/hot_state.sh [closed-loop seconds] [open-loop rate embedded] [open-loop rate Kafka]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
rate_embedded=${2:-5000}
rate_kafka=${3:-500}
cargo build --release -q -p exchange -p perf
port=18190
results=$(mktemp)
run_mode() { # name, kafka (0/1), redis (0/1)
  local name=$1 kafka=$2 redis=$3 data
  data=$(mktemp -d)
  local env=(EXCHANGE_HTTP_ADDR=127.0.0.1:$port EXCHANGE_DATA_DIR=$data EXCHANGE_ADMIN_KEY=bench-admin
    EXCHANGE_RATE_LIMIT=0 EXCHANGE_CORES=0,1 RUST_LOG=warn)
  [ "$kafka" = 1 ] && env+=(EXCHANGE_KAFKA_BROKERS=127.0.0.1:9092 EXCHANGE_KAFKA_TOPIC_PREFIX=bench-$RANDOM-)
  [ "$redis" = 1 ] && env+=(EXCHANGE_REDIS_URL=redis://127.0.0.1:6379 EXCHANGE_REDIS_PREFIX=bench-$RANDOM:)
  env "${env[@]}" target/release/exchange >"$data/log" 2>&1 &
  local pid=$!
  for _ in $(seq 1 200); do
    curl -sf "127.0.0.1:$port/health" 2>/dev/null | grep -q '"status":"ok"' && break
    sleep 0.1
  done
  local rate=$rate_embedded
  [ "$kafka" = 1 ] && rate=$rate_kafka
  local closed open calls=""
  closed=$(target/release/load --addr 127.0.0.1:$port --connections 64 --duration "$secs" | grep -E '^load|^requests' | tr '\n' ' ')
  open=$(target/release/load --addr 127.0.0.1:$port --connections 16 --rate "$rate" --duration "$secs" | grep -E '^load|^requests' | tr '\n' ' ')
  [ "$redis" = 1 ] && calls=$(redis_calls_per_order)
  kill "$pid"; wait "$pid" 2>/dev/null || true
  rm -rf "$data"
  echo "$name | closed loop: $closed | open loop: $open | $calls" >>"$results"
}

# Redis commands per order, counted by Redis: 100 crossing pairs (a resting sell, then a
# buy that fills it) sent one at a time by two fresh users.
redis_calls_per_order() {
  local h="127.0.0.1:$port" a=(-s -H "X-Admin-Key: bench-admin") ka kb
  ka=$(curl "${a[@]}" -d '{"userId":"rt-a"}' "$h/admin/v1/users" | grep -oE '[0-9a-f]{16}\.[0-9a-f]{48}')
  kb=$(curl "${a[@]}" -d '{"userId":"rt-b"}' "$h/admin/v1/users" | grep -oE '[0-9a-f]{16}\.[0-9a-f]{48}')
  curl "${a[@]}" -d '{"userId":"rt-a","currency":"USDT","amount":"1000000","transferId":"rt-a"}' "$h/admin/v1/deposits" >/dev/null
  curl "${a[@]}" -d '{"userId":"rt-b","currency":"USDT","amount":"1000000","transferId":"rt-b"}' "$h/admin/v1/deposits" >/dev/null
  sleep 0.5
  redis-cli config resetstat >/dev/null
  for _ in $(seq 1 100); do
    curl -s -H "X-API-Key: $ka" -d '{"symbol":"ETH-PERP","side":"SELL","type":"LIMIT","price":"2000","quantity":"0.01","leverage":10}' "$h/v1/orders" >/dev/null
    curl -s -H "X-API-Key: $kb" -d '{"symbol":"ETH-PERP","side":"BUY","type":"LIMIT","price":"2000","quantity":"0.01","leverage":10}' "$h/v1/orders" >/dev/null
  done
  local stats; stats=$(redis-cli info commandstats | tr -d '\r')
  # The watchdog's marker checks (EXISTS) are not the orders' doing.
  local all evalsha exists
  calls() { echo "$stats" | grep -E "^cmdstat_$1:" | sed -E 's/^[^:]*:calls=([0-9]+),.*/\1/' | paste -sd+ | bc; }
  all=$(calls '[a-z|]+')
  evalsha=$(calls evalsha)
  exists=$(calls exists)
  echo "Redis per order: $(echo "scale=2; $evalsha / 200" | bc) scripts, $(echo "scale=2; ($all - ${exists:-0}) / 200" | bc) commands (1 awaited: the risk script)"
}
run_mode "embedded journal, in-process state" 0 0
run_mode "embedded journal, Redis" 0 1
run_mode "Kafka, in-process state" 1 0
run_mode "Kafka, Redis" 1 1
cat "$results"
rm -f "$results"
