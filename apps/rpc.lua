-- rpc: calls over JSON, with lua-cjson (`require "cjson"`). Each text
-- message is one call, {"id": 1, "method": "add", "params": [2, 3]}, and
-- gets one answer with the same id: {"id": 1, "result": 5}, or
-- {"id": 1, "error": "why"}. Methods: add (numbers), echo (any value),
-- count (messages this connection has sent, this one included), and tick
-- ([seconds, n]: answers "started", then pushes {"tick": 1} ... {"tick": n},
-- one every seconds, with ws:every; a new tick call replaces the running
-- one, and closing the connection ends it). A message that is not a JSON
-- object gets an error with id null; binary closes with 1003.
local cjson = require "cjson"

local app = {}

local methods = {}

function methods.add(ws, params)
  local sum = 0
  for i, n in ipairs(params) do
    if type(n) ~= "number" then
      error("add: param " .. i .. " is not a number", 0)
    end
    sum = sum + n
  end
  return sum
end

function methods.echo(ws, params)
  return params[1]
end

function methods.count(ws)
  return ws.data.calls
end

-- A push from the server, not an answer: the connection's own timer, which
-- moonport cancels when the connection closes.
function methods.tick(ws, params)
  local seconds, n = params[1], params[2]
  if type(seconds) ~= "number" or seconds < 0.01 then
    error("tick: seconds must be a number, at least 0.01", 0)
  end
  if type(n) ~= "number" or n < 1 or n > 1000 or n % 1 ~= 0 then
    error("tick: n must be a whole number from 1 to 1000", 0)
  end
  if ws.data.ticker then ws.data.ticker:cancel() end
  local count = 0
  ws.data.ticker = ws:every(seconds, function(ws, timer)
    count = count + 1
    ws:send(cjson.encode({ tick = count }))
    if count == n then timer:cancel() end
  end)
  return "started"
end

local function answer(ws, id, key, value)
  ws:send(cjson.encode({ id = id, [key] = value }))
end

function app.on_connect(ws)
  ws.data.calls = 0
end

function app.on_message(ws, data, kind)
  if kind ~= "text" then
    return ws:close(1003, "JSON text only")
  end
  ws.data.calls = ws.data.calls + 1
  -- cjson.decode raises on malformed JSON: a bad call is the client's
  -- mistake, answered as such, not an error of the app.
  local ok, call = pcall(cjson.decode, data)
  if not ok or type(call) ~= "table" then
    return answer(ws, cjson.null, "error", "not a JSON object")
  end
  local id = call.id
  if id == nil then id = cjson.null end
  local method = methods[call.method]
  if not method then
    return answer(ws, id, "error", "unknown method " .. tostring(call.method))
  end
  local params = type(call.params) == "table" and call.params or {}
  local done, result = pcall(method, ws, params)
  if not done then
    return answer(ws, id, "error", tostring(result))
  end
  if result == nil then result = cjson.null end
  answer(ws, id, "result", result)
end

return app
