#!/usr/bin/env python3
"""An outside check of `GET /v1/stream` against a running exchange, written from API.md
alone: a different language and WebSocket library (`websockets`) than the exchange and
its tests.

    python3 -m pip install websockets
    python3 scripts/check_streams.py [http://127.0.0.1:8080] [admin-key, default secret]

It creates two users, trades between them, and checks: `trades:BTC-PERP` carries every
trade in order with `seq` 1, 2, 3... and the data `GET /v1/trades` shows; a second
connection subscribing later counts its own `seq` from 1; `user` without a key is
refused; with a key, a user sees only their own orders and fills. Prints one line per
check and exits non-zero if any failed.
"""

import contextlib
import json
import sys
import time
import urllib.request
import uuid

from websockets.sync.client import connect

BASE = sys.argv[1].rstrip("/") if len(sys.argv) > 1 else "http://127.0.0.1:8080"
ADMIN = sys.argv[2] if len(sys.argv) > 2 else "secret"
WS = BASE.replace("http://", "ws://") + "/v1/stream"
failed = []


def http(method, path, body=None, headers=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(BASE + path, data=data, method=method, headers={"content-type": "application/json", **(headers or {})})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read() or b"null")


def check(name, ok, detail=""):
    print(("ok   " if ok else "FAIL ") + name + ("" if ok else f": {detail}"))
    if not ok:
        failed.append(name)


def user(name):
    key = http("POST", "/admin/v1/users", {"userId": name}, {"x-admin-key": ADMIN})["apiKey"]
    http("POST", "/admin/v1/deposits", {"userId": name, "currency": "USDT", "amount": "100000", "transferId": f"t-{name}"}, {"x-admin-key": ADMIN})
    return key


def order(key, side, price):
    body = {"symbol": "BTC-PERP", "side": side, "type": "LIMIT", "price": price, "quantity": "0.001", "leverage": 10}
    return http("POST", "/v1/orders", body, {"x-api-key": key})


def messages(ws, channel, count, seconds=5.0):
    """The next `count` messages on `channel` (others are skipped)."""
    out, deadline = [], time.monotonic() + seconds
    while len(out) < count:
        m = json.loads(ws.recv(timeout=max(0.01, deadline - time.monotonic())))
        if m.get("channel") == channel:
            out.append(m)
    return out


def subscribe(ws, channels):
    ws.send(json.dumps({"op": "subscribe", "channels": channels}))
    return json.loads(ws.recv(timeout=5))


def main():
    run = uuid.uuid4().hex[:8]
    alice, bob = user(f"alice-{run}"), user(f"bob-{run}")
    with contextlib.ExitStack() as stack:
        check_all(stack, alice, bob)
    print(f"streams: {'all checks passed' if not failed else str(len(failed)) + ' failed'}")
    sys.exit(1 if failed else 0)


def check_all(stack, alice, bob):
    def connect_ws(**kw):
        return stack.enter_context(connect(WS, **kw))

    public = connect_ws()
    check("subscribe answered", subscribe(public, ["trades:BTC-PERP"]) == {"op": "subscribed", "channels": ["trades:BTC-PERP"]})
    anonymous = connect_ws()
    refused = subscribe(anonymous, ["user"])
    check("user without a key refused", refused.get("op") == "error" and refused.get("code") == "UNAUTHORIZED", refused)
    own = connect_ws(additional_headers={"X-API-Key": alice})
    check("user with a key accepted", subscribe(own, ["user"]).get("op") == "subscribed")

    prices = [str(60000 + i) for i in range(10)]
    alice_orders = set()
    for p in prices[:5]:
        alice_orders.add(order(alice, "SELL", p)["orderId"])
        order(bob, "BUY", p)
    late = connect_ws()
    subscribe(late, ["trades:BTC-PERP"])
    first = messages(public, "trades:BTC-PERP", 5)
    for p in prices[5:]:
        alice_orders.add(order(alice, "SELL", p)["orderId"])
        order(bob, "BUY", p)
    rest = messages(public, "trades:BTC-PERP", 5)
    trades = first + rest
    check("trades in order, seq 1..10 without a gap", [m["seq"] for m in trades] == list(range(1, 11)), [m["seq"] for m in trades])
    check("trade prices as placed", [float(m["data"]["price"]) for m in trades] == [float(p) for p in prices])
    newest = http("GET", "/v1/trades?symbol=BTC-PERP&limit=1")[0]
    check("data as GET /v1/trades has it", trades[-1]["data"] == newest, (trades[-1]["data"], newest))
    later = messages(late, "trades:BTC-PERP", 5)
    check("a later subscriber counts from 1", [m["seq"] for m in later] == [1, 2, 3, 4, 5], [m["seq"] for m in later])
    check("and gets the same trades", [m["data"] for m in later] == [m["data"] for m in rest])

    # Alice's stream: her orders and fills only, seq without gaps.
    seen, deadline = [], time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            m = json.loads(own.recv(timeout=0.5))
        except TimeoutError:
            break
        if m.get("channel") == "user":
            seen.append(m)
    kinds = {m["data"]["type"] for m in seen}
    check("user channel has orders, fills and balances", {"order", "fill", "balance"} <= kinds, kinds)
    ids = {m["data"]["orderId"] for m in seen if m["data"]["type"] in ("order", "fill")}
    check("only the user's own orders and fills", ids == alice_orders, ids ^ alice_orders)
    check("user seq without a gap", [m["seq"] for m in seen] == list(range(1, len(seen) + 1)))


if __name__ == "__main__":
    main()
