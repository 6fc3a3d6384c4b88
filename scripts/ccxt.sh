#!/usr/bin/env bash
# Makes sure a Python with ccxt (the version BINANCE.md was read from) and python-binance
# is there for the Binance-dialect tests (tests/binance.rs): a virtual environment under
# target/, made and filled from PyPI the first time. Prints its interpreter's path.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${CARGO_TARGET_DIR:-target}/ccxt-venv"
want="4.5.90"
binance="1.0.29"
if ! "$venv/bin/python" -c "import ccxt, binance, sys; sys.exit(ccxt.__version__ != '$want' or binance.__version__ != '$binance')" 2>/dev/null; then
  echo "== installing ccxt $want and python-binance $binance into $venv" >&2
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install -q "ccxt==$want" "python-binance==$binance" >&2
fi
echo "$(cd "$venv/bin" && pwd)/python"
