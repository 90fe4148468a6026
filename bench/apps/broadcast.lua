-- broadcast: every message goes to every other connection on the route,
-- with its kind kept. The benchmark's fan-out app: subscribers connect and
-- only listen; a publisher connects and sends; the sender never gets its
-- own message back, so the publisher can tell a wrong app from a busy one.
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
