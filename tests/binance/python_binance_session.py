"""An unmodified python-binance client (futures methods) against the exchange.

Usage: python_binance_session.py BASE_URL API_KEY API_SECRET
Prints what it saw as one JSON object; the Rust test checks it against the native API.
Only the futures base URL is pointed here (and no ping of Binance's spot API).
"""
import json
import sys

from binance.client import Client
from binance.exceptions import BinanceAPIException

base, key, secret = sys.argv[1:4]


def connect(secret):
    client = Client(key, secret, ping=False)
    client.FUTURES_URL = base + "/fapi"
    return client


client = connect(secret)
seen = {"time": client.futures_time()["serverTime"]}
seen["symbols"] = sorted(s["symbol"] for s in client.futures_exchange_info()["symbols"])
seen["balance"] = next(b["balance"] for b in client.futures_account_balance() if b["asset"] == "USDT")
seen["leverage"] = client.futures_change_leverage(symbol="BTCUSDT", leverage=4)["leverage"]
order = client.futures_create_order(symbol="BTCUSDT", side="BUY", type="LIMIT", timeInForce="GTC", quantity="0.01", price="45000")
seen["order"] = {k: order[k] for k in ("status", "price", "origQty", "type", "timeInForce", "orderId")}
seen["get"] = client.futures_get_order(symbol="BTCUSDT", orderId=order["orderId"])["status"]
seen["open"] = [o["orderId"] for o in client.futures_get_open_orders(symbol="BTCUSDT")]
modified = client.futures_modify_order(symbol="BTCUSDT", orderId=order["orderId"], side="BUY", quantity="0.02", price="44000")
seen["modified"] = {k: modified[k] for k in ("price", "origQty", "status")}
seen["cancelled"] = client.futures_cancel_order(symbol="BTCUSDT", orderId=order["orderId"])["status"]
seen["klines"] = client.futures_klines(symbol="BTCUSDT", interval="1m", limit=5)
seen["ticker"] = client.futures_ticker(symbol="BTCUSDT")["lastPrice"]
seen["mark"] = client.futures_mark_price(symbol="BTCUSDT")["markPrice"]
seen["book"] = client.futures_order_book(symbol="BTCUSDT", limit=5)
seen["trades"] = [t["price"] for t in client.futures_recent_trades(symbol="BTCUSDT")]
seen["positions"] = [p["positionAmt"] for p in client.futures_position_information(symbol="BTCUSDT")]
try:
    client.futures_create_order(symbol="BTCUSDT", side="BUY", type="LIMIT", timeInForce="GTC", quantity="100", price="45000")
except BinanceAPIException as e:
    seen["too_big"] = e.code
try:
    connect("0" * 64).futures_account_balance()
except BinanceAPIException as e:
    seen["bad_secret"] = e.code
print(json.dumps(seen))
