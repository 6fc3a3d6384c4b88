#!/usr/bin/env python3
"""Attacks on the money rules of a running exchange, from API.md alone, over HTTP.

    python3 scripts/attack_money.py http://127.0.0.1:8080 <admin key> [--stale-secs N]

Each attack runs with users of its own (names carry a run id, so a server can be attacked
again) and, after it, checks what API.md promises: every user's `total`, `available`
and `locked` at least zero with `total = available + locked`, and the exchange's books
balanced to the unit (`GET /admin/v1/summary`: deposits = balances + unrealizedPnl +
fees + insuranceFund). The attacks:

1. far limits: SELL orders priced far below deep bids (and BUYs far above deep asks) by
   users with almost nothing, inside and outside the price band;
2. reduce-only closes at a loss as deep as the margin, and past it;
3. one party moving the mark: trades and quotes between two of its accounts 14 % above
   the index for a few seconds, an honest 20x position watching;
4. mass liquidation with an empty book: 200 leveraged longs, the index dropped through
   their liquidation prices, nobody bidding;
5. (with --stale-secs N, the server's EXCHANGE_INDEX_MAX_AGE_SECS) a stale index: no
   funding and /health degraded until a fresh index is posted.

Exits 1 on the first broken promise, printing it; 0 when every check held.
"""

import json
import sys
import time
import urllib.error
import urllib.request
from decimal import Decimal

BASE = sys.argv[1].rstrip("/") if len(sys.argv) > 1 else "http://127.0.0.1:8080"
ADMIN = sys.argv[2] if len(sys.argv) > 2 else "secret"
STALE = int(sys.argv[sys.argv.index("--stale-secs") + 1]) if "--stale-secs" in sys.argv else None
RUN = str(int(time.time() * 1000) % 10**9)
USERS = {}
CHECKS = 0


def request(method, path, body=None, key=None, admin=False):
    headers = {"content-type": "application/json"}
    if key:
        headers["x-api-key"] = key
    if admin:
        headers["x-admin-key"] = ADMIN
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(BASE + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def fail(message):
    print(f"FAILED: {message}")
    sys.exit(1)


def check(condition, message):
    global CHECKS
    CHECKS += 1
    if not condition:
        fail(message)


def user(name, amount):
    name = f"{name}-{RUN}"
    status, body = request("POST", "/admin/v1/users", {"userId": name}, admin=True)
    check(status == 200, f"create {name}: {status} {body}")
    key = body["apiKey"]
    if Decimal(amount) > 0:
        status, body = request("POST", "/admin/v1/deposits", {"userId": name, "currency": "USDT", "amount": amount, "transferId": f"t-{name}"}, admin=True)
        check(status == 200, f"deposit {name}: {status} {body}")
    USERS[name] = key
    return key


def order(key, symbol, side, price, qty, leverage=1, **extra):
    body = {"symbol": symbol, "side": side, "type": "LIMIT" if price else "MARKET", "quantity": qty, "leverage": leverage}
    if price:
        body["price"] = price
    body.update(extra)
    return request("POST", "/v1/orders", body, key=key)


def index(symbol, price):
    status, body = request("POST", "/admin/v1/index-prices", {"symbol": symbol, "price": price}, admin=True)
    check(status == 200, f"index {symbol} {price}: {status} {body}")
    return body


def promises(after):
    """Every user solvent, the books balanced."""
    for name, key in USERS.items():
        status, b = request("GET", "/v1/balance", key=key)
        check(status == 200, f"{name} balance: {status} {b}")
        total, available, locked = (Decimal(b[f]) for f in ("total", "available", "locked"))
        check(total >= 0 and available >= 0 and locked >= 0, f"after {after}: {name} has {b}")
        check(total == available + locked, f"after {after}: {name} total != available + locked: {b}")
    status, s = request("GET", "/admin/v1/summary", admin=True)
    check(status == 200, f"summary: {status} {s}")
    deposits, balances, unrealized, fees, fund = (Decimal(s[f]) for f in ("deposits", "balances", "unrealizedPnl", "fees", "insuranceFund"))
    check(deposits == balances + unrealized + fees + fund, f"after {after}: the books do not balance: {s}")
    check(fund >= 0, f"after {after}: insurance fund below zero: {s}")
    print(f"ok: {after} ({len(USERS)} users solvent, books balanced)")


def clear_book():
    """Cancels every resting order the attacks left."""
    for key in USERS.values():
        request("DELETE", "/v1/orders", key=key)


def far_limits():
    index("BTC-PERP", "50000")
    deep = user("deep", "1000000")
    for price in ("51000", "50500", "50100"):
        check(order(deep, "BTC-PERP", "BUY", price, "0.5", 10)[0] == 200, "deep bid")
    for price in ("49000", "49500", "49900"):
        check(order(deep, "BTC-PERP", "SELL", price, "0.5", 10)[0] == 200, "deep ask")
    poor = user("poor", "0.0010005")
    some = user("some", "30")
    for key in (poor, some):
        for side, price in (("SELL", "0.1"), ("SELL", "42500"), ("SELL", "45000"), ("BUY", "57500"), ("BUY", "1000000"), ("SELL", None), ("BUY", None)):
            for tif in ("IOC", "GTC", "FOK"):
                extra = {"timeInForce": tif} if price else {}
                status, body = order(key, "BTC-PERP", side, price, "0.01", 100, **extra)
                check(status in (200, 400, 422), f"{side} {price} {tif}: {status} {body}")
    promises("far limits against deep bids and asks")


def reduce_only_at_a_loss():
    long = user("ro-long", "1515")
    maker = user("ro-maker", "100000")
    check(order(maker, "ETH-PERP", "SELL", "3000", "10", 20)[0] == 200, "eth ask")
    status, body = order(long, "ETH-PERP", "BUY", "3000", "10", 20)
    check(status == 200 and body["status"] == "FILLED", f"eth long: {status} {body}")
    for price in ("2850", "2800", "2852", "2900"):
        check(order(maker, "ETH-PERP", "BUY", price, "10", 20)[0] == 200, "eth bid")
        status, body = order(long, "ETH-PERP", "SELL", price, "10", 20, reduceOnly=True, timeInForce="IOC")
        check(status in (200, 422), f"reduce-only at {price}: {status} {body}")
        promises(f"a reduce-only close at {price}")
        request("DELETE", "/v1/orders?symbol=ETH-PERP", key=maker)


def mark_manipulation():
    clear_book()
    index("BTC-PERP", "50000")
    honest = user("honest", "3000")
    other = user("other", "60000")
    check(order(honest, "BTC-PERP", "SELL", "50000", "1", 20)[0] == 200, "honest short")
    status, body = order(other, "BTC-PERP", "BUY", "50000", "1", 1)
    check(status == 200 and body["status"] in ("FILLED", "PARTIALLY_FILLED"), f"counterparty: {status} {body}")
    a, b = user("party-a", "100000"), user("party-b", "100000")
    highest = Decimal(0)
    for _ in range(6):
        order(b, "BTC-PERP", "SELL", "57000", "0.001", 1)
        order(a, "BTC-PERP", "BUY", "57000", "0.001", 1)
        order(a, "BTC-PERP", "BUY", "56990", "1", 1)
        order(b, "BTC-PERP", "SELL", "57010", "1", 1)
        time.sleep(0.5)
        highest = max(highest, Decimal(index("BTC-PERP", "50000")["markPrice"]))
    check(highest < Decimal("50250"), f"one party moved the mark to {highest} (more than 0.5 %)")
    status, positions = request("GET", "/v1/positions", key=honest)
    check(any(p["symbol"] == "BTC-PERP" and Decimal(p["size"]) == 1 for p in positions), f"the honest short was closed: {positions}")
    for key in (a, b):
        request("DELETE", "/v1/orders", key=key)
    promises(f"one party trading and quoting 14 % over the index (mark at most {highest})")


def mass_liquidation():
    index("BTC-PERP", "50000")
    # Nobody bids: every resting order of the earlier attacks is cancelled.
    clear_book()
    whale = user("whale", "1000000")
    check(order(whale, "BTC-PERP", "SELL", "50000", "0.2", 1)[0] == 200, "whale ask")
    longs = [user(f"liq-{i}", "1.1") for i in range(200)]
    for key in longs:
        status, body = order(key, "BTC-PERP", "BUY", "50000", "0.001", 50, timeInForce="IOC")
        check(status == 200, f"long: {status} {body}")
    index("BTC-PERP", "47000")
    deadline = time.time() + 30
    while True:
        open_ = [k for k in longs if any(Decimal(p["size"]) != 0 for p in request("GET", "/v1/positions", key=k)[1] if p["symbol"] == "BTC-PERP")]
        if not open_:
            break
        check(time.time() < deadline, f"{len(open_)} of {len(longs)} longs still open 30 s after the drop")
        time.sleep(0.2)
    promises("200 longs liquidated into an empty book")


def stale_index(max_age):
    index("BTC-PERP", "50000")
    time.sleep(max_age + 1.5)
    status, health = request("GET", "/health")
    check(health.get("status") == "degraded" and health["components"].get("indexPrice") == "stale", f"health with a stale index: {health}")
    status, body = request("POST", "/admin/v1/funding", {"symbol": "BTC-PERP"}, admin=True)
    check(status == 409, f"funding on a stale index: {status} {body}")
    index("BTC-PERP", "50000")
    status, health = request("GET", "/health")
    check(health["components"].get("indexPrice") == "ok", f"health after a fresh index: {health}")
    promises("a stale index")


far_limits()
reduce_only_at_a_loss()
mark_manipulation()
mass_liquidation()
if STALE is not None:
    stale_index(STALE)
print(f"attack_money: {CHECKS} checks passed")
