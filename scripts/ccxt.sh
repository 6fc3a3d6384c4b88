#!/usr/bin/env bash
# Makes sure a Python with ccxt (the version BINANCE.md was read from) is there for the
# Binance-dialect tests (tests/binance.rs): a virtual environment under target/, made and
# filled from PyPI the first time. Prints its interpreter's path.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${CARGO_TARGET_DIR:-target}/ccxt-venv"
want="4.5.90"
if ! "$venv/bin/python" -c "import ccxt, sys; sys.exit(ccxt.__version__ != '$want')" 2>/dev/null; then
  echo "== installing ccxt $want into $venv" >&2
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install -q "ccxt==$want" >&2
fi
echo "$(cd "$venv/bin" && pwd)/python"
