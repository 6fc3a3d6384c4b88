#!/usr/bin/env bash
# Runs every test of the workspace on the embedded defaults, then the black-box suite
# again with Kafka as the event log (a fresh local tansu broker on 127.0.0.1:9092, started
# here and stopped at the end; installed the first time), then with Kafka and Redis as the hot
# state: a single Redis (127.0.0.1:6379) and a 3-master Redis Cluster (127.0.0.1:7000-
# 7002), each started if it does not answer. PostgreSQL (127.0.0.1:5432, database test)
# is started if it does not answer; chromium and chromedriver (the page test) are
# installed if missing, and ccxt (the Binance-dialect test) into a virtual environment.
# Prints one closing line with the totals.
set -uo pipefail
cd "$(dirname "$0")"
export PROPTEST_CASES="${PROPTEST_CASES:-2000}"
log=$(mktemp)
export TANSU_LOG
TANSU_LOG=$(mktemp)
broker=""
cleanup() {
  rm -f "$log" "$TANSU_LOG"
  if [ -n "$broker" ]; then kill "$broker" 2>/dev/null; fi
}
trap cleanup EXIT

if ! broker=$(scripts/kafka-broker.sh --fresh); then
  echo "tests: 0 passed, 1 failed (no Kafka broker could be started)"
  exit 1
fi
export EXCHANGE_KAFKA_TEST_BROKER=127.0.0.1:9092
if ! scripts/redis.sh || ! scripts/redis-cluster.sh; then
  echo "tests: 0 passed, 1 failed (no Redis could be started)"
  exit 1
fi
if ! scripts/browser.sh; then
  echo "tests: 0 passed, 1 failed (no headless browser could be installed)"
  exit 1
fi
if ! ccxt_python=$(scripts/ccxt.sh); then
  echo "tests: 0 passed, 1 failed (ccxt could not be installed from PyPI)"
  exit 1
fi
export EXCHANGE_TEST_CCXT_PYTHON="$ccxt_python"
if ! scripts/postgres.sh; then
  echo "tests: 0 passed, 1 failed (no PostgreSQL could be started)"
  exit 1
fi
export EXCHANGE_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test
export EXCHANGE_TEST_REDIS_URL=redis://127.0.0.1:6379

echo "== tests, embedded event log"
cargo test --workspace --locked --no-fail-fast "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}

echo "== black-box tests, Kafka event log"
EXCHANGE_TEST_KAFKA_BROKERS=127.0.0.1:9092 cargo test -p exchange --locked --no-fail-fast --test api --test recovery --test perpetual --test streams --test binance --test binance_streams "$@" 2>&1 | tee -a "$log"
kafka_status=${PIPESTATUS[0]}
[ "$kafka_status" -ne 0 ] && status=$kafka_status

for redis in redis://127.0.0.1:6379 redis://127.0.0.1:7000; do
  echo "== black-box tests, Kafka event log, Redis hot state at $redis"
  EXCHANGE_TEST_KAFKA_BROKERS=127.0.0.1:9092 EXCHANGE_TEST_HOT_REDIS=$redis \
    cargo test -p exchange --locked --no-fail-fast --test api --test recovery --test hot_state --test perpetual --test binance --test binance_streams "$@" 2>&1 | tee -a "$log"
  redis_status=${PIPESTATUS[0]}
  [ "$redis_status" -ne 0 ] && status=$redis_status
done

passed=$(grep -oE '^test result: .* ([0-9]+) passed' "$log" | grep -oE '[0-9]+ passed' | awk '{s+=$1} END {print s+0}')
failed=$(grep -oE '^test result: .* ([0-9]+) failed' "$log" | grep -oE '[0-9]+ failed' | awk '{s+=$1} END {print s+0}')
if [ "$status" -ne 0 ] && [ "$failed" -eq 0 ]; then failed=1; fi
if [ "$status" -ne 0 ] && [ -s "$TANSU_LOG" ]; then
  echo "== the tansu broker's warnings and errors (last 40)"
  grep -aiE 'warn|error|panic' "$TANSU_LOG" | tail -40
fi
echo "tests: $passed passed, $failed failed"
exit "$status"
