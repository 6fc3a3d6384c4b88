"""Unmodified ccxt.pro `binanceusdm` clients pointed at the exchange (BINANCE.md, sections
1 and 7): order book, trades, orders, my trades, balance and positions, each watched over
the exchange's WebSocket while two users trade over REST.

Usage: ccxt_pro_session.py BASE_URL KEY_A SECRET_A KEY_B SECRET_B
Prints one JSON object: what the watchers saw, and how long after the action that caused
it (seconds). Every HTTP request is recorded, so the test can check that nothing left for
binance.com.
"""
import asyncio
import json
import sys
import time

import ccxt.pro

base, key_a, secret_a, key_b, secret_b = sys.argv[1:6]
requested = []
SYMBOL = "BTC/USDT:USDT"


class Recording(ccxt.pro.binanceusdm):
    async def fetch(self, url, method="GET", headers=None, body=None):
        requested.append(f"{method} {url.split('?')[0]}")
        return await super().fetch(url, method, headers, body)


def client(key, secret):
    ex = Recording({"apiKey": key, "secret": secret, "options": {"fetchCurrencies": False}})
    for name, v in (("fapiPublic", "v1"), ("fapiPublicV2", "v2"), ("fapiPublicV3", "v3"),
                    ("fapiPrivate", "v1"), ("fapiPrivateV2", "v2"), ("fapiPrivateV3", "v3")):
        ex.urls["api"][name] = f"{base}/fapi/{v}"
    ex.urls["api"]["ws"]["linear"] = base.replace("http://", "ws://") + "/ws"
    return ex


async def until(watch, done, seconds=5.0):
    """Watches until `done` holds for what the watcher returns; the last return."""
    deadline = time.monotonic() + seconds
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"{watch.__name__ if hasattr(watch, '__name__') else watch} never saw it")
        seen = await asyncio.wait_for(watch(), left)
        if done(seen):
            return seen


async def main():
    a, b = client(key_a, secret_a), client(key_b, secret_b)
    seen = {}
    try:
        await a.load_markets()
        await b.load_markets()
        # The public watchers first: the book (snapshot, then diffs) and the trades.
        book = await asyncio.wait_for(a.watch_order_book(SYMBOL), 5)
        seen["book_first"] = {"bids": book["bids"][:3], "asks": book["asks"][:3], "nonce": book["nonce"]}
        start = time.monotonic()
        elapsed = lambda: round(time.monotonic() - start, 3)

        async def timed(name, coro):
            result = await coro
            seen[name + "_after"] = elapsed()
            return result

        tasks = {
            "book": timed("book", until(lambda: a.watch_order_book(SYMBOL), lambda ob: any(p == 49500 for p, _ in ob["bids"]))),
            "trades": timed("trades", until(lambda: b.watch_trades(SYMBOL), lambda ts: any(t["price"] == 49500 for t in ts))),
            "orders": timed("orders", until(lambda: a.watch_orders(SYMBOL), lambda os: any(o["status"] == "closed" for o in os))),
            "my_trades": timed("my_trades", until(lambda: a.watch_my_trades(SYMBOL), lambda ts: len(ts) > 0)),
            "balance": timed("balance", until(lambda: a.watch_balance(), lambda bal: "USDT" in bal.get("total", {}))),
            "positions": timed("positions", until(lambda: a.watch_positions([SYMBOL]), lambda ps: any(p.get("contracts") for p in ps))),
        }
        running = {name: asyncio.create_task(t) for name, t in tasks.items()}
        # Let every watcher subscribe (and the user stream open) before anything happens.
        await asyncio.sleep(1.5)
        # A's bid rests, and the book shows it; then B sells into it. Each watcher's time
        # counts from the action that it must see.
        start = time.monotonic()
        order = await a.create_order(SYMBOL, "limit", "buy", 0.002, 49500)
        results = {}
        try:
            results["book"] = await running.pop("book")
        except Exception as e:
            seen["book_error"] = f"{type(e).__name__}: {e}"
        start = time.monotonic()
        await b.create_order(SYMBOL, "market", "sell", 0.002)
        for name, task in running.items():
            try:
                results[name] = await task
            except Exception as e:  # reported, not hidden: the test names the watcher
                seen[name + "_error"] = f"{type(e).__name__}: {e}"
        if "book" in results:
            ob = results["book"]
            seen["book"] = {"bids": ob["bids"][:3], "asks": ob["asks"][:3]}
        if "trades" in results:
            seen["trades"] = [{"price": t["price"], "amount": t["amount"], "side": t["side"]} for t in results["trades"]]
        if "orders" in results:
            seen["orders"] = [{"id": o["id"], "status": o["status"], "filled": o["filled"], "price": o["price"]} for o in results["orders"]]
        if "my_trades" in results:
            seen["my_trades"] = [{"order": t["order"], "price": t["price"], "amount": t["amount"], "takerOrMaker": t["takerOrMaker"]} for t in results["my_trades"]]
        if "balance" in results:
            seen["balance_total"] = results["balance"]["total"].get("USDT")
        if "positions" in results:
            seen["positions"] = [{"symbol": p["symbol"], "contracts": p["contracts"], "side": p["side"], "entryPrice": p["entryPrice"]}
                                 for p in results["positions"] if p.get("contracts")]
        seen["order_id"] = order["id"]
    finally:
        await a.close()
        await b.close()
    seen["requests"] = sorted(set(requested))
    print(json.dumps(seen))


asyncio.run(main())
