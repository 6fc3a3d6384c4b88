"""An unmodified ccxt `binanceusdm` client across a crash of the exchange: stop-loss and
take-profit orders placed before a kill -9 are there after it, and behave.

Usage: ccxt_restart.py BASE_URL API_KEY API_SECRET PHASE
PHASE `place`: buys 0.002 at market, then places a stop-loss (49000) and a take-profit
(55000) that close the position; prints their ids and the position.
PHASE `after`: prints the open trigger orders and cancels the take-profit.
PHASE `check`: prints the trigger orders (open and closed), the position, and the orders.
"""
import json
import sys

import ccxt

base, key, secret, phase = sys.argv[1:5]
SYMBOL = "BTC/USDT:USDT"

ex = ccxt.binanceusdm({"apiKey": key, "secret": secret, "options": {"fetchCurrencies": False}})
for name, v in (("fapiPublic", "v1"), ("fapiPublicV2", "v2"), ("fapiPublicV3", "v3"),
                ("fapiPrivate", "v1"), ("fapiPrivateV2", "v2"), ("fapiPrivateV3", "v3")):
    ex.urls["api"][name] = f"{base}/fapi/{v}"
ex.load_markets()


def position():
    held = [p for p in ex.fetch_positions([SYMBOL]) if p["contracts"]]
    return [{"contracts": p["contracts"], "side": p["side"]} for p in held]


def triggers(orders):
    return sorted(({"id": o["id"], "status": o["status"], "triggerPrice": o["triggerPrice"]} for o in orders),
                  key=lambda o: o["triggerPrice"])


seen = {}
if phase == "place":
    ex.create_order(SYMBOL, "market", "buy", 0.002)
    stop = ex.create_order(SYMBOL, "market", "sell", 0.002, None, {"stopLossPrice": 49000, "reduceOnly": True})
    take = ex.create_order(SYMBOL, "market", "sell", 0.002, None, {"takeProfitPrice": 55000, "reduceOnly": True})
    seen = {"stop": stop["id"], "take": take["id"], "position": position()}
elif phase == "after":
    open_triggers = ex.fetch_open_orders(SYMBOL, None, None, {"trigger": True})
    seen = {"open": triggers(open_triggers), "position": position()}
    take = [o for o in open_triggers if o["triggerPrice"] == 55000]
    if take:
        ex.cancel_order(take[0]["id"], SYMBOL, {"trigger": True})
    seen["open_after_cancel"] = triggers(ex.fetch_open_orders(SYMBOL, None, None, {"trigger": True}))
elif phase == "check":
    closed = ex.fetch_closed_orders(SYMBOL, None, None, {"trigger": True})
    seen = {"closed": triggers(closed), "position": position(),
            "orders": [{"side": o["side"], "status": o["status"], "filled": o["filled"], "reduceOnly": o["reduceOnly"]}
                       for o in ex.fetch_closed_orders(SYMBOL)]}
print(json.dumps(seen))
