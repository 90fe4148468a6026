-- broadcast: every message goes to every other connection on the route,
-- with its kind kept. The benchmark's fan-out app: subscribers connect and
-- only listen; a publisher connects and sends; the sender never gets its
-- own message back, so the publisher can tell a wrong app from a busy one.
-- Every connection is subscribed to one topic and ws:publish skips the
-- sender: the fan-out runs in C, one frame shared by every subscriber
-- (broadcast_loop.lua is the same app with a Lua loop, for comparison).
local app = {}

function app.on_connect(ws)
  ws:subscribe("broadcast")
end

function app.on_message(ws, data, kind)
  ws:publish("broadcast", data, kind)
end

return app
