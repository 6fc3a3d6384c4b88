"""An unmodified ccxt `binanceusdm` client pointed at the exchange (BINANCE.md, section 1).

Usage: ccxt_session.py BASE_URL API_KEY API_SECRET
Prints one JSON object: what ccxt saw. The Rust test (tests/binance.rs) checks it against
the native API. Every HTTP request ccxt makes is recorded, so the test can check that
nothing left for binance.com.
"""
import json
import re
import sys

import ccxt

base, key, secret = sys.argv[1:4]
requested = []


class Recording(ccxt.binanceusdm):
    def fetch(self, url, method="GET", headers=None, body=None):
        requested.append(f"{method} {url.split('?')[0]}")
        return super().fetch(url, method, headers, body)


def client(secret):
    ex = Recording({"apiKey": key, "secret": secret, "options": {"fetchCurrencies": False}})
    for name, v in (("fapiPublic", "v1"), ("fapiPublicV2", "v2"), ("fapiPublicV3", "v3"),
                    ("fapiPrivate", "v1"), ("fapiPrivateV2", "v2"), ("fapiPrivateV3", "v3")):
        ex.urls["api"][name] = f"{base}/fapi/{v}"
    return ex


def error_class(call):
    try:
        call()
    except ccxt.BaseError as e:
        return type(e).__name__
    return None


def error_code(call):
    """The class and Binance code of the error a call raises (ccxt maps some codes, -2021
    and -4120 among them, to classes only on Binance's own hostnames)."""
    try:
        call()
    except ccxt.BaseError as e:
        found = re.search(r'"code":\s*(-?\d+)', str(e))
        return [type(e).__name__, int(found.group(1)) if found else None]
    return None


ex = client(secret)
markets = ex.load_markets()
btc = markets["BTC/USDT:USDT"]
seen = {
    "markets": sorted(m["id"] for m in markets.values()),
    "btc": {"id": btc["id"], "settle": btc["settle"], "active": btc["active"], "linear": btc["linear"],
            "price_precision": str(btc["precision"]["price"]), "amount_precision": str(btc["precision"]["amount"])},
    "time": ex.fetch_time(),
}
balance = ex.fetch_balance()
seen["balance"] = {k: str(balance["USDT"][k]) for k in ("total", "free", "used")}
book = ex.fetch_order_book("BTC/USDT:USDT", limit=5)
seen["book"] = {side: [[str(p), str(q)] for p, q in book[side]] for side in ("bids", "asks")}
seen["book"]["nonce"] = book["nonce"]
seen["positions"] = [{"symbol": p["symbol"], "contracts": p["contracts"], "side": p["side"]}
                     for p in ex.fetch_positions()]
seen["leverage"] = ex.set_leverage(5, "BTC/USDT:USDT")
seen["leverage_too_high"] = error_class(lambda: ex.set_leverage(100000, "BTC/USDT:USDT"))
leverages = ex.fetch_leverages()
seen["leverages"] = {s: [l["longLeverage"], l["shortLeverage"], l["marginMode"]] for s, l in leverages.items()}
resting = ex.create_order("BTC/USDT:USDT", "limit", "sell", 0.01, 52000, {"timeInForce": "GTC"})
seen["resting"] = {"id": resting["id"], "status": resting["status"], "amount": str(resting["amount"]),
                   "price": str(resting["price"]), "clientOrderId": resting["clientOrderId"]}
seen["open"] = [o["id"] for o in ex.fetch_open_orders("BTC/USDT:USDT")]
fetched = ex.fetch_order(resting["id"], "BTC/USDT:USDT")
seen["fetched"] = {"id": fetched["id"], "status": fetched["status"], "remaining": str(fetched["remaining"])}
edited = ex.edit_order(resting["id"], "BTC/USDT:USDT", "limit", "sell", 0.008, 52500)
seen["edited"] = {"id": edited["id"], "amount": str(edited["amount"]), "price": str(edited["price"]), "status": edited["status"]}
cancelled = ex.cancel_order(resting["id"], "BTC/USDT:USDT")
seen["cancelled"] = {"id": cancelled["id"], "status": cancelled["status"]}
seen["open_after_cancel"] = [o["id"] for o in ex.fetch_open_orders("BTC/USDT:USDT")]
seen["post_only_cross"] = error_class(lambda: ex.create_order("BTC/USDT:USDT", "limit", "buy", 0.001, 51000, {"timeInForce": "GTX"}))
seen["oversized"] = error_class(lambda: ex.create_order("BTC/USDT:USDT", "limit", "buy", 100, 49000))
seen["unknown_cancel"] = error_class(lambda: ex.cancel_order("123456789", "BTC/USDT:USDT"))
seen["off_tick"] = error_class(lambda: ex.fapiPrivatePostOrder({"symbol": "BTCUSDT", "side": "BUY", "type": "LIMIT", "timeInForce": "GTC", "quantity": "0.001", "price": "49000.05"}))
bought = ex.create_order("BTC/USDT:USDT", "market", "buy", 0.002)
seen["bought"] = {"status": bought["status"], "filled": str(bought["filled"]), "average": str(bought["average"])}
# A stop-loss for that long: an algo order (ccxt's trigger orders), listed, read, cancelled.
stop = ex.create_order("BTC/USDT:USDT", "market", "sell", 0.002, None, {"stopLossPrice": 45000, "reduceOnly": True})
seen["stop"] = {"id": stop["id"], "status": stop["status"], "type": stop["type"], "triggerPrice": str(stop["triggerPrice"]),
                "reduceOnly": stop["reduceOnly"], "clientOrderId": stop["clientOrderId"]}
seen["stops_open"] = [o["id"] for o in ex.fetch_open_orders("BTC/USDT:USDT", params={"trigger": True})]
seen["stop_fetched"] = ex.fetch_order(stop["id"], "BTC/USDT:USDT", {"trigger": True})["status"]
seen["stop_cancelled"] = ex.cancel_order(stop["id"], "BTC/USDT:USDT", {"trigger": True})["id"]
seen["stops_after_cancel"] = [o["id"] for o in ex.fetch_open_orders("BTC/USDT:USDT", params={"trigger": True})]
trailing = ex.create_order("BTC/USDT:USDT", "market", "sell", 0.002, None, {"trailingPercent": 1.5, "reduceOnly": True})
seen["trailing"] = {"id": trailing["id"], "type": trailing["type"],
                    "rate": str(ex.safe_string(trailing["info"], "priceRate"))}
seen["trailing_open"] = [o["id"] for o in ex.fetch_open_orders("BTC/USDT:USDT", params={"trigger": True})]
seen["trailing_cancelled"] = ex.cancel_order(trailing["id"], "BTC/USDT:USDT", {"trigger": True})["id"]
seen["stop_would_trigger"] = error_code(lambda: ex.create_order("BTC/USDT:USDT", "market", "sell", 0.002, None, {"stopLossPrice": 60000, "reduceOnly": True}))
seen["stop_on_order_endpoint"] = error_code(lambda: ex.fapiPrivatePostOrder({"symbol": "BTCUSDT", "side": "SELL", "type": "STOP_MARKET", "stopPrice": "45000", "quantity": "0.001"}))
balance = ex.fetch_balance()
seen["balance_after"] = {k: str(balance["USDT"][k]) for k in ("total", "free", "used")}
seen["positions_after"] = [{"symbol": p["symbol"], "contracts": str(p["contracts"]), "side": p["side"],
                            "entryPrice": str(p["entryPrice"])} for p in ex.fetch_positions()]
seen["ohlcv"] = [[str(x) for x in c] for c in ex.fetch_ohlcv("BTC/USDT:USDT", "1m", limit=3)]
ticker = ex.fetch_ticker("BTC/USDT:USDT")
seen["ticker"] = {k: str(ticker[k]) for k in ("last", "high", "low", "open", "baseVolume", "quoteVolume", "percentage")}
seen["tickers"] = sorted(ex.fetch_tickers().keys())
trades = ex.fetch_my_trades("BTC/USDT:USDT")
seen["my_trades"] = [{"id": t["id"], "order": t["order"], "price": str(t["price"]), "amount": str(t["amount"]),
                      "side": t["side"], "takerOrMaker": t["takerOrMaker"], "fee": str(t["fee"]["cost"])} for t in trades]
seen["bought_id"] = bought["id"]
seen["public_trades"] = [{"price": str(t["price"]), "amount": str(t["amount"]), "side": t["side"]}
                         for t in ex.fetch_trades("BTC/USDT:USDT")]
batch = ex.create_orders([
    {"symbol": "BTC/USDT:USDT", "type": "limit", "side": "buy", "amount": 0.001, "price": 48000},
    {"symbol": "BTC/USDT:USDT", "type": "limit", "side": "buy", "amount": 100, "price": 47500},
    {"symbol": "BTC/USDT:USDT", "type": "limit", "side": "buy", "amount": 0.001, "price": 47000},
])
seen["batch"] = [{"id": o["id"], "status": o["status"], "info": o["info"]} for o in batch]
seen["open_after_batch"] = sorted(o["id"] for o in ex.fetch_open_orders("BTC/USDT:USDT"))
ex.cancel_all_orders("BTC/USDT:USDT")
seen["open_after_cancel_all"] = [o["id"] for o in ex.fetch_open_orders("BTC/USDT:USDT")]
seen["all_orders"] = {o["id"]: o["status"] for o in ex.fetch_orders("BTC/USDT:USDT")}
seen["closed_orders"] = sorted(o["id"] for o in ex.fetch_closed_orders("BTC/USDT:USDT"))
closing = ex.create_order("BTC/USDT:USDT", "limit", "sell", 0.001, 55000, {"reduceOnly": True})
fetched = ex.fetch_order(closing["id"], "BTC/USDT:USDT")
seen["reduce_only"] = {"placed": closing["reduceOnly"], "fetched": fetched["reduceOnly"]}
ex.cancel_order(closing["id"], "BTC/USDT:USDT")
seen["funding_history"] = [[f["timestamp"], str(f["fundingRate"])] for f in ex.fetch_funding_rate_history("BTC/USDT:USDT")]
seen["mark_ohlcv"] = [[str(x) for x in c] for c in ex.fetch_mark_ohlcv("BTC/USDT:USDT", "1m", limit=3)]
rate = ex.fetch_funding_rate("BTC/USDT:USDT")
seen["funding_rate"] = {"markPrice": str(rate["markPrice"]), "indexPrice": str(rate["indexPrice"]),
                        "fundingRate": str(rate["fundingRate"]), "fundingTimestamp": rate["fundingTimestamp"]}
seen["income_types"] = sorted({i["incomeType"] for i in ex.fapiPrivateGetIncome()})
seen["wrong_secret"] = error_class(lambda: client("0" * 64).fetch_balance())
seen["unknown_symbol"] = error_class(lambda: ex.fapiPublicGetDepth({"symbol": "NOPEUSDT"}))
seen["requested"] = requested
print(json.dumps(seen))
