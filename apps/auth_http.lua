-- auth_http: on_connect asks an HTTP backend whether the client's token is
-- valid, and the handshake is refused with the backend's own status when it
-- is not. The token comes in the query string (/auth_http?token=...: a
-- browser's WebSocket cannot set an Authorization header) and goes to the
-- backend as "Authorization: Bearer <token>"; a 200 accepts, and its body
-- is the user's name. The backend is MOONPORT_AUTH_URL (default
-- http://127.0.0.1:8081/auth); while it waits for the answer, the server
-- serves everyone else. A backend that cannot be reached refuses with 503.
local moonport = require "moonport"

local AUTH_URL = os.getenv("MOONPORT_AUTH_URL") or "http://127.0.0.1:8081/auth"

local app = {}

function app.on_connect(ws, req)
  local token = req.args.token
  if not token or token == "" or token:find("[%c ]") then
    return ws:reject(401, "a token is required\n")
  end
  local res, err = moonport.http.request{
    url = AUTH_URL,
    headers = { Authorization = "Bearer " .. token },
    timeout = 2000, -- ms; within timeouts.handshake
  }
  if not res then
    moonport.log("warn", "auth backend:", err)
    return ws:reject(503, "authentication is unavailable\n")
  end
  if res.status ~= 200 then
    -- The backend's refusal as it gave it (401, 403...); a rejection must
    -- be a 4xx or 5xx, so anything else it answered is a 403.
    local status = res.status >= 400 and res.status <= 599 and res.status or 403
    return ws:reject(status, "not allowed\n")
  end
  ws.data.user = res.body
  ws:send("welcome, " .. res.body)
end

function app.on_message(ws, data, kind)
  ws:send(ws.data.user .. ": " .. data, kind)
end

return app
