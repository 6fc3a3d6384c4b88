#!/usr/bin/env bash
# An unchanged freqtrade (from PyPI, into target/freqtrade-venv) running a futures dry-run
# bot against a fresh embedded exchange through the Binance dialect, for SECONDS (default
# 90). The exchange gets a market maker and a few trades first, so there are candles.
# Passes when freqtrade loaded the markets, kept its loop running, logged no error, and
# got complete candles (its "Empty candle" warnings stop once a traded minute has closed).
#
#   cargo build --release && scripts/freqtrade-dry-run.sh [SECONDS]
#
# Not part of test.sh: it needs a few minutes and a ~300 MB virtual environment.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-90}"
venv="${CARGO_TARGET_DIR:-target}/freqtrade-venv"
if ! "$venv/bin/freqtrade" --version >/dev/null 2>&1; then
  echo "== installing freqtrade into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q freqtrade
fi
work=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
A="http://127.0.0.1:$port"
EXCHANGE_ADMIN_KEY=secret EXCHANGE_DATA_DIR="$work/data" EXCHANGE_HTTP_ADDR="127.0.0.1:$port" RUST_LOG=warn \
  target/release/exchange serve > "$work/exchange.log" 2>&1 &
exchange=$!
trap 'kill $exchange 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 1 150); do curl -sf "$A/health" >/dev/null && break; sleep 0.2; done
admin=(-H 'X-Admin-Key: secret')
user() {
  local body
  body=$(curl -s -XPOST "$A/admin/v1/users" "${admin[@]}" -d "{\"userId\":\"$1\"}")
  curl -s -XPOST "$A/admin/v1/deposits" "${admin[@]}" -d "{\"userId\":\"$1\",\"currency\":\"USDT\",\"amount\":\"100000\",\"transferId\":\"t-$1\"}" >/dev/null
  echo "$body"
}
bot=$(user bot)
maker=$(user maker | python3 -c 'import json,sys; print(json.load(sys.stdin)["apiKey"])')
taker=$(user taker | python3 -c 'import json,sys; print(json.load(sys.stdin)["apiKey"])')
curl -s -XPOST "$A/admin/v1/index-prices" "${admin[@]}" -d '{"symbol":"BTC-PERP","price":"50000"}' >/dev/null
order() { curl -s -XPOST "$A/v1/orders" -H "X-API-Key: $1" -d "$2" >/dev/null; }
order "$maker" '{"symbol":"BTC-PERP","side":"SELL","type":"LIMIT","price":"50010","quantity":"0.5","leverage":10}'
order "$maker" '{"symbol":"BTC-PERP","side":"BUY","type":"LIMIT","price":"49990","quantity":"0.5","leverage":10}'
for _ in 1 2 3; do order "$taker" '{"symbol":"BTC-PERP","side":"BUY","type":"MARKET","quantity":"0.01","leverage":10}'; done
python3 - "$A" "$bot" "$work" <<'EOF'
import json, sys
base, bot, work = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
urls = {name: f"{base}/fapi/{v}" for name, v in (("fapiPublic", "v1"), ("fapiPublicV2", "v2"), ("fapiPublicV3", "v3"),
        ("fapiPrivate", "v1"), ("fapiPrivateV2", "v2"), ("fapiPrivateV3", "v3"), ("fapiData", "v1"))}
ccxt = {"urls": {"api": urls}, "options": {"fetchCurrencies": False, "fetchMarkets": {"types": ["linear"]}}}
config = {
    "max_open_trades": 1, "stake_currency": "USDT", "stake_amount": 100, "dry_run": True, "dry_run_wallet": 1000,
    "trading_mode": "futures", "margin_mode": "isolated", "timeframe": "1m",
    "exchange": {"name": "binance", "key": bot["apiKey"], "secret": bot["apiSecret"], "ccxt_config": ccxt,
                 "ccxt_async_config": ccxt, "pair_whitelist": ["BTC/USDT:USDT"], "pair_blacklist": []},
    "pairlists": [{"method": "StaticPairList"}],
    "entry_pricing": {"price_side": "same", "use_order_book": True, "order_book_top": 1},
    "exit_pricing": {"price_side": "same", "use_order_book": True, "order_book_top": 1},
    "bot_name": "dry-run", "initial_state": "running", "internals": {"process_throttle_secs": 5},
    "db_url": f"sqlite:///{work}/trades.sqlite",
}
json.dump(config, open(f"{work}/config.json", "w"), indent=1)
EOF
"$venv/bin/freqtrade" create-userdir --userdir "$work/user_data" >/dev/null
"$venv/bin/freqtrade" new-strategy --userdir "$work/user_data" --strategy Probe --template minimal >/dev/null
echo "== freqtrade dry-run for $seconds s against $A" >&2
timeout "$seconds" "$venv/bin/freqtrade" trade --config "$work/config.json" --userdir "$work/user_data" --strategy Probe > "$work/freqtrade.log" 2>&1 || true
log="$work/freqtrade.log"
errors=$(grep -cE " - ERROR - |Traceback" "$log" || true)
beats=$(grep -c "Bot heartbeat" "$log" || true)
last_empty=$(grep "Empty candle" "$log" | tail -1 | cut -c1-19)
last_line=$(grep -E "^20" "$log" | tail -1 | cut -c1-19)
echo "freqtrade: $beats heartbeats, $errors errors, last 'Empty candle' warning at ${last_empty:-never}, last line at $last_line"
if [ "$errors" -ne 0 ] || [ "$beats" -eq 0 ]; then
  grep -E " - ERROR - |Traceback" -A5 "$log" | head -40
  exit 1
fi
# Candles came: the warnings stopped at least 20 s before the end.
if [ -n "$last_empty" ] && [ $(( $(date -d "$last_line" +%s) - $(date -d "$last_empty" +%s) )) -lt 20 ]; then
  echo "freqtrade never got a complete candle" >&2
  exit 1
fi
echo "ok"
