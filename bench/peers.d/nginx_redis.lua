-- nginx_redis: `make bench-redis`'s OpenResty handler (nginx-extras with
-- lua-resty-websocket and lua-resty-redis, Debian's lua-nginx-websocket and
-- lua-nginx-redis): each message waits for one Redis GET, then goes back
-- to its sender, as bench/apps/redis_get.lua does in moonport. A cosocket
-- belongs to its request, so each WebSocket connection holds its own Redis
-- connection (the OpenResty way; moonport pipelines every handler's GET on
-- one). Redis is 127.0.0.1:$BENCH_REDIS_PORT.
local server = require "nginx.websocket.server"
local redis = require "nginx.redis"

local M = {}
local PORT = tonumber(os.getenv("BENCH_REDIS_PORT") or "6379")

function M.get()
  local wb, err = server:new({ timeout = 3600 * 1000, max_payload_len = 16 * 1024 * 1024 })
  if not wb then
    ngx.log(ngx.ERR, "websocket handshake: ", err)
    return ngx.exit(400)
  end
  local red = redis:new()
  red:set_timeout(5000)
  local ok
  ok, err = red:connect("127.0.0.1", PORT)
  if not ok then
    ngx.log(ngx.ERR, "redis connect: ", err)
    return ngx.exit(444)
  end
  while true do
    local data, typ, code = wb:recv_frame()
    if not data then
      return ngx.exit(444)
    end
    if typ == "text" or typ == "binary" then
      local v
      v, err = red:get("bench:key")
      if v ~= "moonport" then
        ngx.log(ngx.ERR, "redis: ", err or tostring(v))
        return ngx.exit(444)
      end
      if typ == "text" then
        ok, err = wb:send_text(data)
      else
        ok, err = wb:send_binary(data)
      end
      if not ok then
        return ngx.exit(444)
      end
    elseif typ == "ping" then
      wb:send_pong(data)
    elseif typ == "close" then
      red:set_keepalive(10000, 1000)
      wb:send_close(code or 1000, "")
      return ngx.exit(ngx.OK)
    end
  end
end

return M
