-- redis_get: `make bench-redis`'s moonport app. Each message waits for one
-- Redis GET (moonport.redis: one connection for the worker, every
-- handler's GET pipelined on it), then goes back to its sender. The same
-- handler in OpenResty is bench/peers.d/nginx_redis.lua.
local moonport = require "moonport"

local redis = moonport.redis(os.getenv("MOONPORT_BENCH_REDIS") or "redis://127.0.0.1:6379")

local app = {}

function app.on_message(ws, data, kind)
  local v, err = redis:get("bench:key")
  if v ~= "moonport" then
    return ws:close(1011, "redis: " .. tostring(err or v))
  end
  ws:send(data, kind)
end

return app
