-- wrk: etcd v3 JSON gateway, PUT (OP=put) or GET (OP=range) of random keys
-- bench:00000000..bench:00099999 with VALUE_SIZE-byte values.
local keys = tonumber(os.getenv("KEYS") or "100000")
local op = os.getenv("OP") or "put"
local size = tonumber(os.getenv("VALUE_SIZE") or "100")
local chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
local function b64(s)
  return ((s:gsub(".", function(x)
    local r, b = "", x:byte()
    for i = 8, 1, -1 do r = r .. (b % 2 ^ i - b % 2 ^ (i - 1) > 0 and "1" or "0") end
    return r
  end) .. "0000"):gsub("%d%d%d?%d?%d?%d?", function(x)
    if #x < 6 then return "" end
    local c = 0
    for i = 1, 6 do c = c + (x:sub(i, i) == "1" and 2 ^ (6 - i) or 0) end
    return chars:sub(c + 1, c + 1)
  end) .. ({ "", "==", "=" })[#s % 3 + 1])
end
local value = b64(string.rep("x", size))
math.randomseed(os.time())
request = function()
  local key = b64(string.format("bench:%08d", math.random(0, keys - 1)))
  local body
  if op == "put" then
    body = '{"key":"' .. key .. '","value":"' .. value .. '"}'
    return wrk.format("POST", "/v3/kv/put", { ["Content-Type"] = "application/json" }, body)
  end
  body = '{"key":"' .. key .. '"}'
  return wrk.format("POST", "/v3/kv/range", { ["Content-Type"] = "application/json" }, body)
end
