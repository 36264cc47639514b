-- wrk: GET random keys bench:00000000..bench:00099999 from Ripple's v1 API.
local keys = tonumber(os.getenv("KEYS") or "100000")
math.randomseed(os.time())
request = function()
  return wrk.format("GET", string.format("/v1/kv/bench:%08d", math.random(0, keys - 1)))
end
