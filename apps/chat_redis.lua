-- chat_redis: the chat of apps/chat.lua, with a memory. Each message is
-- stored in Redis (a list per room, trimmed to the last 100) before it goes
-- out, and whoever joins first gets the last ten, then the live messages.
-- Connect with ?name=alice; served at /chat_redis from apps/, or at
-- /rooms/:room from a config route. Redis is $MOONPORT_CHAT_REDIS
-- (default redis://127.0.0.1:6379).
--
-- The handlers wait for Redis (README "Waiting"); every other connection is
-- served meanwhile. One client for the worker: its commands share one
-- connection, and Redis answers them in the order they were sent, which
-- gives a newcomer every message exactly once: a message stored before its
-- LRANGE is in the history and was published before the newcomer
-- subscribed (its reply came first); one stored after it is published
-- after the newcomer subscribed. (With --workers N each worker has its own
-- connection: a message at the very moment of a join may then show twice
-- or not at all.)
local moonport = require "moonport"

local redis = moonport.redis(os.getenv("MOONPORT_CHAT_REDIS") or "redis://127.0.0.1:6379")
local KEEP, SHOW = 100, 10

local app = {}

local function topic(room)
  return "chat/" .. room
end

local function key(room)
  return "moonport:chat:" .. room
end

function app.on_connect(ws, req)
  local name = req.args.name
  if type(name) ~= "string" or name == "" then
    name = "guest" .. ws.id
  end
  local room = req.params.room or "lobby"
  if #room > 64 then
    return ws:reject(400, "room name too long\n")
  end
  ws.data.name = name:sub(1, 32)
  ws.data.room = room
  -- The history first, then the live messages (see above for why none is
  -- lost or repeated); they leave right after the 101.
  local history, err = redis:lrange(key(room), -SHOW, -1)
  if history then
    for _, line in ipairs(history) do
      ws:send(line)
    end
  else
    moonport.log("warn", "chat_redis: no history for", room, err)
    ws:send("* history unavailable")
  end
  ws:subscribe(topic(room))
  moonport.publish(topic(room), "* " .. ws.data.name .. " joined")
end

function app.on_message(ws, data, kind)
  if kind ~= "text" then
    return ws:close(1003, "text only")
  end
  local line = ws.data.name .. ": " .. data
  -- Trim, then append, in one wait: the message counts as stored once the
  -- RPUSH is answered, and goes out then.
  local p = redis:pipeline()
  p:ltrim(key(ws.data.room), -(KEEP - 1), -1)
  p:rpush(key(ws.data.room), line)
  local ok, err = p:commit()
  if not ok then
    moonport.log("warn", "chat_redis: not stored:", err)
  end
  moonport.publish(topic(ws.data.room), line)
end

function app.on_close(ws, code)
  moonport.publish(topic(ws.data.room), "* " .. ws.data.name .. " left")
end

return app
