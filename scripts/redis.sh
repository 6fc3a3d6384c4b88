#!/usr/bin/env bash
# Makes sure Redis answers on 127.0.0.1:6379 for the tests that need it: starts the
# machine's redis-server (installing it from Debian if missing) when nothing answers.
set -euo pipefail
ping() { (exec 3<>/dev/tcp/127.0.0.1/6379 && printf 'PING\r\n' >&3 && head -c 5 <&3 | grep -q PONG) 2>/dev/null; }
if ping; then exit 0; fi
if ! command -v redis-server >/dev/null 2>&1; then
  echo "== installing redis-server" >&2
  (apt-get update -qq && apt-get install -y -qq redis-server) >&2
fi
redis-server --port 6379 --bind 127.0.0.1 --save "" --appendonly no --daemonize yes >&2
for _ in $(seq 1 50); do
  if ping; then exit 0; fi
  sleep 0.1
done
echo "redis-server did not start" >&2
exit 1
