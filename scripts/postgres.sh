#!/usr/bin/env bash
# Makes sure PostgreSQL answers on 127.0.0.1:5432 (user postgres, trust auth, database
# `test`) for the tests that need it: starts the machine's cluster when it is down, and
# installs PostgreSQL from Debian the first time.
set -euo pipefail
ready() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }
if ! command -v pg_isready >/dev/null 2>&1 || ! command -v pg_lsclusters >/dev/null 2>&1; then
  echo "== installing PostgreSQL" >&2
  (apt-get update -qq && apt-get install -y -qq postgresql) >&2
fi
if ! ready; then
  read -r version cluster _ < <(pg_lsclusters --no-header | head -1)
  if [ -z "${version:-}" ]; then
    version=$(ls /usr/lib/postgresql | sort -n | tail -1)
    cluster=main
    pg_createcluster "$version" "$cluster" >&2
  fi
  conf="/etc/postgresql/$version/$cluster"
  # Local trust authentication over TCP, as the tests connect.
  if ! grep -q '^host all all 127.0.0.1/32 trust' "$conf/pg_hba.conf"; then
    sed -i '1i host all all 127.0.0.1/32 trust' "$conf/pg_hba.conf"
  fi
  pg_ctlcluster "$version" "$cluster" start >&2 || true
  for _ in $(seq 1 100); do
    ready && break
    sleep 0.1
  done
fi
ready || { echo "PostgreSQL did not start" >&2; exit 1; }
if ! psql -h 127.0.0.1 -U postgres -d postgres -tAc "select 1 from pg_database where datname = 'test'" | grep -q 1; then
  psql -h 127.0.0.1 -U postgres -d postgres -qc "create database test"
fi
