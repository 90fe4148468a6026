-- chat: one room per route. Everyone connected sees everyone's messages,
-- and a notice when someone joins or leaves. Served at /chat from apps/, or
-- at /rooms/:room from a config route, where each room is its own.
-- Connect with ?name=alice to pick a name.
-- Each room is a topic: the server keeps who is in it (README "Topics"),
-- so the app keeps no table of connections, and a hot reload of this file
-- keeps everyone in their room.
local moonport = require "moonport"

local app = {}

local function topic(room)
  return "chat/" .. room
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
  -- Subscribed before the notice goes out, so the newcomer sees its own
  -- join too (messages queued in on_connect leave right after the 101).
  ws:subscribe(topic(room))
  moonport.publish(topic(room), "* " .. ws.data.name .. " joined")
end

function app.on_message(ws, data, kind)
  if kind ~= "text" then
    return ws:close(1003, "text only")
  end
  -- moonport.publish, not ws:publish: the sender sees its own message too.
  moonport.publish(topic(ws.data.room), ws.data.name .. ": " .. data)
end

function app.on_close(ws, code)
  -- ws has left its room already: the notice goes to the others.
  moonport.publish(topic(ws.data.room), "* " .. ws.data.name .. " left")
  moonport.log("debug", "chat:", ws.data.name, "left", ws.data.room, "with", code)
end

return app
