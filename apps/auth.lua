-- auth: a handshake must carry the right token in its query string
-- (/auth?token=...), or it is refused with 401 and no upgrade happens.
-- The token comes from the MOONPORT_AUTH_TOKEN environment variable
-- (default "let-me-in"). Accepted clients get a greeting, then an echo.
local app = {}

local TOKEN = os.getenv("MOONPORT_AUTH_TOKEN") or "let-me-in"

function app.on_connect(ws, req)
  if req.args.token ~= TOKEN then
    return ws:reject(401, "a valid token is required\n",
                     { ["WWW-Authenticate"] = 'Token realm="moonport"' })
  end
  ws.data.user = req.args.user or "anonymous"
  ws:send("welcome, " .. ws.data.user)
end

function app.on_message(ws, data, kind)
  ws:send(data, kind)
end

return app
