#!/usr/bin/env bash
# Makes sure a 3-master Redis Cluster answers on 127.0.0.1:7000-7002 for the tests that
# run the exchange against a cluster: starts the nodes (no persistence, no replicas) and
# creates the cluster when it is not already up. Needs redis-server and redis-cli
# (scripts/redis.sh installs them).
set -euo pipefail
ports=(7000 7001 7002)
state() { redis-cli -p 7000 cluster info 2>/dev/null | tr -d '\r' | grep '^cluster_state:' | cut -d: -f2; }
if [ "$(state)" = "ok" ]; then exit 0; fi
scripts/redis.sh >/dev/null
dir="${TMPDIR:-/tmp}/exchange-redis-cluster"
for port in "${ports[@]}"; do
  redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true
done
rm -rf "$dir"
for port in "${ports[@]}"; do
  mkdir -p "$dir/$port"
  (cd "$dir/$port" && redis-server --port "$port" --bind 127.0.0.1 --cluster-enabled yes \
    --cluster-config-file nodes.conf --save "" --appendonly no --daemonize yes >/dev/null)
done
for port in "${ports[@]}"; do
  for _ in $(seq 1 50); do
    redis-cli -p "$port" ping >/dev/null 2>&1 && break
    sleep 0.1
  done
done
redis-cli --cluster create 127.0.0.1:7000 127.0.0.1:7001 127.0.0.1:7002 \
  --cluster-replicas 0 --cluster-yes >/dev/null
for _ in $(seq 1 100); do
  if [ "$(state)" = "ok" ]; then exit 0; fi
  sleep 0.1
done
echo "the Redis Cluster did not come up" >&2
exit 1
