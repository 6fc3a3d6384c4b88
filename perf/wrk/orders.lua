-- One-lot GTC orders around 50,000 on BTC-PERP, keys from keys.txt, round robin.
local keys = {}
for line in io.lines(os.getenv("KEYS") or "keys.txt") do keys[#keys + 1] = line end
local n = 0
request = function()
  n = n + 1
  local key = keys[(n % #keys) + 1]
  local side = (n % 2 == 0) and "BUY" or "SELL"
  local price = 50000 + ((n % 3) - 1) * 0.1
  local body = string.format('{"symbol":"BTC-PERP","side":"%s","type":"LIMIT","price":"%.1f","quantity":"0.001","leverage":10}', side, price)
  return wrk.format("POST", "/v1/orders", {["content-type"] = "application/json", ["x-api-key"] = key}, body)
end
