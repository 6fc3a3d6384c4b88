# A WebSocket client that subscribes to trades:BTC-PERP and never reads (a 4 KiB receive
# buffer); reports how long after its subscription the server cut it off
# (exchange_stream_connections_cut_total moves) and the exchange's RSS.
#   python3 perf/never_reads.py HOST:PORT EXCHANGE_PID
# Run it while orders trade, e.g. `target/release/load --addr HOST:PORT --rate 2000
# --duration 20` against an exchange started with EXCHANGE_ADMIN_KEY=bench-admin
# (about 1,000 trades/s); perf/RESULTS.md has the latest figures.
import os, socket, sys, time, base64, json, urllib.request
addr, pid = sys.argv[1], int(sys.argv[2])
host, port = addr.split(":")
def metric(name):
    text = urllib.request.urlopen(f"http://{addr}/metrics").read().decode()
    return sum(float(l.split()[-1]) for l in text.splitlines() if l.split("{")[0].split(" ")[0] == name)
def rss():
    for l in open(f"/proc/{pid}/status"):
        if l.startswith("VmRSS"): return int(l.split()[1])
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
s.connect((host, int(port)))
key = base64.b64encode(os.urandom(16)).decode()
s.sendall(f"GET /v1/stream HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n".encode())
head = b""
while b"\r\n\r\n" not in head: head += s.recv(1)
assert b" 101 " in head, head
payload = json.dumps({"op": "subscribe", "channels": ["trades:BTC-PERP"]}).encode()
mask = os.urandom(4)
s.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
start = time.time(); cut0 = metric("exchange_stream_connections_cut_total")
print(f"subscribed; exchange RSS {rss()} KiB; never reading from now", flush=True)
while time.time() - start < 30:
    time.sleep(0.25)
    cut = metric("exchange_stream_connections_cut_total") - cut0
    if cut > 0:
        print(f"cut off after {time.time() - start:.2f} s; exchange RSS {rss()} KiB", flush=True)
        time.sleep(1); print(f"one second later: exchange RSS {rss()} KiB; open streams {metric('exchange_stream_connections')}")
        text = urllib.request.urlopen(f"http://{addr}/metrics").read().decode()
        print([l for l in text.splitlines() if l.startswith("exchange_stream_connections_cut_total")])
        break
else:
    print("not cut off within 30 s")
