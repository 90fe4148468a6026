-- broadcast_loop: broadcast.lua as apps wrote it before topics, a Lua
-- table of connections and a loop of ws:send over it, kept so that the
-- benchmark can compare the two fan-outs in the same run (rows
-- fanout-1k-publish and fanout-1k-loop). Every message goes to every other
-- connection on the route, with its kind kept.
local app = {}
local members = {} -- ws -> true: every open connection on this route

function app.on_connect(ws)
  members[ws] = true
end

function app.on_message(ws, data, kind)
  for peer in pairs(members) do
    if peer ~= ws then
      peer:send(data, kind)
    end
  end
end

function app.on_close(ws)
  members[ws] = nil
end

return app
