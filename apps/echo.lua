-- echo: sends every message back to its sender, with the same kind
-- (text stays text, binary stays binary). The smallest useful app.
local app = {}

function app.on_message(ws, data, kind)
  ws:send(data, kind)
end

return app
