-- chat: one room per route. Everyone connected sees everyone's messages,
-- and a notice when someone joins or leaves. Served at /chat from apps/, or
-- at /rooms/:room from a config route, where each room is its own.
-- Connect with ?name=alice to pick a name.
local moonport = require "moonport"

local app = {}
local rooms = {}   -- room name -> { [ws] = true }: the app's shared state

local function broadcast(room, text)
  for peer in pairs(rooms[room] or {}) do
    peer:send(text)
  end
end

function app.on_connect(ws, req)
  local name = req.args.name
  if type(name) ~= "string" or name == "" then
    name = "guest" .. ws.id
  end
  ws.data.name = name:sub(1, 32)
  ws.data.room = req.params.room or "lobby"
  -- Sends made in on_connect leave right after the 101, so the newcomer
  -- sees its own join notice too.
  local room = ws.data.room
  rooms[room] = rooms[room] or {}
  rooms[room][ws] = true
  broadcast(room, "* " .. ws.data.name .. " joined")
end

function app.on_message(ws, data, kind)
  if kind ~= "text" then
    return ws:close(1003, "text only")
  end
  broadcast(ws.data.room, ws.data.name .. ": " .. data)
end

function app.on_close(ws, code)
  local room = ws.data.room
  local members = rooms[room]
  if members then
    members[ws] = nil
    broadcast(room, "* " .. ws.data.name .. " left")
    if next(members) == nil then rooms[room] = nil end
  end
  moonport.log("debug", "chat:", ws.data.name, "left", room, "with", code)
end

return app
