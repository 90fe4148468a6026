-- Keepalive: a server-side ping after timeouts.ping of silence from the
-- client, and a close with 1001 after timeouts.idle. Dead peers (a laptop
-- lid closed, a NAT that forgot the flow) do not hold a connection forever.
local testing = require "moonport.testing"

local ECHO = [[
local app = {}
function app.on_message(ws, data, kind) ws:send(data, kind) end
function app.on_close(ws, code, reason)
  require("moonport").log("info", "on_close", code, reason)
end
return app
]]

local function start(timeouts)
  return assert(testing.start {
    apps = { echo = ECHO },
    -- A short close timeout: stop() need not wait for clients left open.
    config = "return { apps = 'apps', timeouts = " .. timeouts:gsub("^{", "{ close = 0.5,") .. " }",
  })
end

describe("keepalive", function()
  local server
  after_each(function()
    if server then
      assert.is_true(server:alive())
      server:stop()
      server:cleanup()
      server = nil
    end
  end)

  it("pings a silent client, then closes it with 1001 after timeouts.idle", function()
    server = start("{ ping = 0.3, idle = 1.2 }")
    local ws = assert(server:connect("/echo"))
    local f = assert(ws:receive(2))
    assert.are.equal(9, f.opcode) -- ping
    assert.are.equal("", f.payload)
    -- No pong: the connection stays silent, so it is closed.
    local close = assert(ws:receive(3))
    assert.are.equal(8, close.opcode)
    assert.are.equal(1001, close.code)
    assert.are.equal("idle timeout", close.reason)
    assert.truthy(server:wait_log("nothing from the client for [%d.]+s: closing with 1001", 2))
    ws:close(1001) -- a live client answers, and the closing handshake ends
    assert.is_true(ws:is_closed(2))
    assert.truthy(server:wait_log("on_close 1001", 2))
  end)

  it("keeps a client that answers the pings", function()
    server = start("{ ping = 0.2, idle = 0.8 }")
    local ws = assert(server:connect("/echo"))
    local deadline = os.time() + 3
    local pings = 0
    while os.time() < deadline do
      local f = ws:receive(0.5)
      if f and f.opcode == 9 then
        pings = pings + 1
        ws:send_frame { opcode = "pong", payload = f.payload }
      end
      assert.is_not.equal(8, f and f.opcode, "the server closed a live client")
    end
    assert.is_true(pings >= 2, "only " .. pings .. " pings")
    ws:send("still open")
    assert.are.equal("still open", (ws:receive_message(2)))
  end)

  it("does not ping a client that keeps talking", function()
    server = start("{ ping = 0.5, idle = 1 }")
    local ws = assert(server:connect("/echo"))
    for i = 1, 12 do
      ws:send("m" .. i)
      local f = assert(ws:receive(1))
      assert.are.equal(1, f.opcode, "frame " .. i .. " was not the echo")
      assert.are.equal("m" .. i, f.payload)
      testing.sleep(0.2)
    end
  end)

  it("does neither when both are 0", function()
    server = start("{ ping = 0, idle = 0 }")
    local ws = assert(server:connect("/echo"))
    local f, err = ws:receive(1.5)
    assert.is_nil(f)
    assert.are.equal("timeout", err)
    ws:send("hello")
    assert.are.equal("hello", (ws:receive_message(2)))
  end)
end)
