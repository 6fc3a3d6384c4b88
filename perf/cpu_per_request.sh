#!/usr/bin/env bash
# CPU per request of the exchange process, GET /health against POST /v1/orders, in one run:
#   cargo build --release && perf/cpu_per_request.sh [ENV=VALUE ...]   (BIN=path: another build)
# Starts target/release/exchange (embedded journal unless the environment given says
# otherwise) on a free port with 400 funded users, then runs wrk (Debian's `wrk`; 2
# threads, 64 connections, SECS seconds each, default 8) against /health, then against
# /v1/orders with one-lot GTC orders around 50,000 on BTC-PERP (perf/wrk/orders.lua).
# CPU is the exchange's utime + stime from /proc over each run, divided by the requests
# wrk completed; under each run, the same per kind of thread (shards, librdkafka's broker
# threads, the Redis and cold-storage writers). Prints one line per run and
# `cpu_per_request: orders/health ...`. BROKER_PID=<pid>: also the CPU per request of
# that process (the Kafka broker). After the orders run: the commands per log batch, and
# the messages between cores per order (over the whole process's life, setup included).
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
A=127.0.0.1:$port
env EXCHANGE_ADMIN_KEY=k EXCHANGE_HTTP_ADDR=$A EXCHANGE_DATA_DIR=$work/data EXCHANGE_RATE_LIMIT=0 \
  EXCHANGE_CHECK_INTERVAL_SECS=0 RUST_LOG=warn "$@" "${BIN:-target/release/exchange}" serve > "$work/server.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 1 200); do curl -s "$A/health" | grep -q '"status":"ok"' && break; sleep 0.1; done
for i in $(seq 1 400); do
  curl -s -XPOST "$A/admin/v1/users" -H 'X-Admin-Key: k' -d "{\"userId\":\"u$i\"}" | sed 's/.*"apiKey":"\([^"]*\)".*/\1/' >> "$work/keys.txt"
  echo >> "$work/keys.txt"
  curl -s -XPOST "$A/admin/v1/deposits" -H 'X-Admin-Key: k' -d "{\"userId\":\"u$i\",\"currency\":\"USDT\",\"amount\":\"100000000\",\"transferId\":\"t$i\"}" > /dev/null
done
sed -i '/^$/d' "$work/keys.txt"
ticks() { awk '{print $14+$15}' "/proc/$pid/stat"; }
# utime + stime of each thread: "tid name ticks" (names with spaces joined by _).
threads() { for t in /proc/$pid/task/*; do echo "${t##*/} $(tr ' ' _ < "$t/comm" 2>/dev/null) $(awk '{print $14+$15}' "$t/stat" 2>/dev/null)"; done | sort; }
hz=$(getconf CLK_TCK)
measure() { # label, wrk args...
  local label=$1; shift
  local t0; t0=$(ticks)
  local b0=0; [ -n "${BROKER_PID:-}" ] && b0=$(awk '{print $14+$15}' "/proc/$BROKER_PID/stat")
  threads > "$work/threads0"
  local out; out=$(KEYS="$work/keys.txt" wrk -t2 -c64 -d"${SECS:-8}"s "$@" 2>&1)
  local t1; t1=$(ticks)
  local b1=0; [ -n "${BROKER_PID:-}" ] && b1=$(awk '{print $14+$15}' "/proc/$BROKER_PID/stat")
  threads > "$work/threads1"
  local reqs; reqs=$(echo "$out" | awk '/requests in/ {print $1}')
  local rps; rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  local us; us=$(echo "($t1 - $t0) * 1000000 / $hz / $reqs" | bc -l)
  printf '%s: %.0f req/s, exchange CPU %.1f us/request\n' "$label" "$rps" "$us"
  # Where it went: each kind of thread's CPU per request (threads of one name summed).
  join "$work/threads0" "$work/threads1" | awk -v hz="$hz" -v n="$reqs" '{d[$2] += $5 - $3} END {for (k in d) if (d[k] > 0) printf "  %-18s %7.1f us/request\n", k, d[k] * 1000000 / hz / n}' | sort -k2 -rn
  [ -n "${BROKER_PID:-}" ] && printf '  (broker process    %7.1f us/request)\n' "$(echo "($b1 - $b0) * 1000000 / $hz / $reqs" | bc -l)"
  echo "$rps $us" > "$work/$label"
}
measure health "http://$A/health"
measure orders -s perf/wrk/orders.lua "http://$A/v1/orders"
curl -s "$A/metrics" | awk '/^exchange_log_batch_commands_sum/ {s += $2} /^exchange_log_batch_commands_count/ {c += $2} END {if (c > 0) printf "commands per log batch: %.1f (%d batches)\n", s / c, c}'
curl -s "$A/metrics" | awk '/^exchange_orders_total/ {o += $2} /^exchange_mesh_messages_total/ {m += $2} /^exchange_mesh_batches_total/ {b += $2} END {if (o > 0 && b > 0) printf "mesh messages per order: %.2f (%.1f a batch)\n", m / o, m / b}'
read -r hrps hus < "$work/health"
read -r orps ous < "$work/orders"
printf 'cpu_per_request: orders %.0f/s at %.1f us, health %.0f/s at %.1f us, orders/health throughput %.2f\n' "$orps" "$ous" "$hrps" "$hus" "$(echo "$orps / $hrps" | bc -l)"
