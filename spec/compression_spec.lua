-- permessage-deflate (RFC 7692), through the real binary: the negotiation
-- (section 7), compressed messages both ways (section 6 and 7.2), and
-- what a broken or hostile compressed message gets. Frames are built by
-- spec/support/deflate_client.py with Python's zlib, so the bytes on the
-- wire are exactly the case's; python3-websockets, which compresses on its
-- own, checks a broadcast.
local testing = require "moonport.testing"

local APPS = {
  echo = [[
local app = {}
function app.on_message(ws, data, kind) ws:send(data, kind) end
return app
]],
  -- Every message goes to every connection of the route.
  fan = [[
local all = {}
return {
  on_connect = function(ws) all[ws] = true end,
  on_message = function(ws, data, kind)
    for other in pairs(all) do other:send(data, kind) end
  end,
  on_close = function(ws) all[ws] = nil end,
}
]],
}

local function run(cmd)
    return testing.capture(cmd, 60)
end

describe("permessage-deflate", function()
  local server
  setup(function()
    server = assert(testing.start {
      apps = APPS,
      config = [[return { apps = "apps", limits = { max_message = 1048576 } }]],
    })
  end)
  teardown(function() server:cleanup() end)

  -- The handshake's answer to an offer, and the connection if it opened.
  local function offer(value)
    local ws, response, refused = server:connect("/echo", {
      headers = value and { ["Sec-WebSocket-Extensions"] = value } or nil,
    })
    if not ws then return refused end
    ws:close()
    return response, ws
  end

  describe("negotiation (RFC 7692 section 7)", function()
    it("adds no extension when none is offered", function()
      local response = offer(nil)
      assert.are.equal(101, response.status)
      assert.is_nil(response.headers["sec-websocket-extensions"])
    end)

    it("accepts a plain offer, answering with both no_context_takeover parameters", function()
      assert.are.equal("permessage-deflate; server_no_context_takeover; client_no_context_takeover",
        offer("permessage-deflate").headers["sec-websocket-extensions"])
    end)

    it("answers client_max_window_bits with a value when the offer has it without one", function()
      assert.are.equal("permessage-deflate; server_no_context_takeover; client_no_context_takeover; "
        .. "client_max_window_bits=15",
        offer("permessage-deflate; client_max_window_bits").headers["sec-websocket-extensions"])
    end)

    it("keeps to the server_max_window_bits a client asks for", function()
      assert.matches("server_max_window_bits=10",
        offer("permessage-deflate; server_max_window_bits=10").headers["sec-websocket-extensions"])
    end)

    it("accepts server_max_window_bits=8, which zlib cannot deflate with", function()
      assert.are.equal("permessage-deflate; server_no_context_takeover; client_no_context_takeover; "
        .. "server_max_window_bits=8",
        offer("permessage-deflate; server_max_window_bits=8").headers["sec-websocket-extensions"])
    end)

    it("takes the next offer when one is declined", function()
      assert.are.equal("permessage-deflate; server_no_context_takeover; client_no_context_takeover",
        offer("permessage-deflate; server_max_window_bits=7, permessage-deflate")
          .headers["sec-websocket-extensions"])
    end)

    it("declines offers with unknown or repeated parameters or bad values", function()
      for _, bad in ipairs {
        "permessage-deflate; foo",
        "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
        "permessage-deflate; client_max_window_bits=16",
        "permessage-deflate; server_max_window_bits",
        "permessage-deflate; server_no_context_takeover=1",
      } do
        local response = offer(bad)
        assert.are.equal(101, response.status, bad)
        assert.is_nil(response.headers["sec-websocket-extensions"], bad)
      end
    end)

    it("ignores other extensions", function()
      assert.is_nil(offer("x-webkit-deflate-frame, foo; bar=1").headers["sec-websocket-extensions"])
    end)

    it("answers 400 to a header that breaks the extension grammar (RFC 6455 9.1)", function()
      local response, ws = offer("permessage-deflate; =15")
      assert.is_nil(ws)
      assert.are.equal(400, response.status)
      assert(server:wait_log("malformed Sec%-WebSocket%-Extensions", 5))
    end)
  end)

  describe("messages", function()
    local function case(name, path)
      local status, out = run("/usr/bin/python3 spec/support/deflate_client.py " .. server.port
        .. " " .. (path or "/echo") .. " " .. name)
      assert.are.equal(0, status, out)
      assert.matches("deflate_client " .. name .. ": 0 failed", out, 1, true)
    end

    it("echoes compressed text, binary, empty, fragmented and plain messages (6, 7.2)", function()
      case("echo")
    end)

    it("compresses with the window the client allowed (7.1.2.1)", function()
      case("server_window")
    end)

    it("keeps to an 8-bit window by coding Huffman only (7.1.2.1)", function()
      case("server_window8")
    end)

    it("fails RSV1 on a continuation frame with 1002 (6.1)", function()
      case("rsv1_continuation")
    end)

    it("fails RSV1 on a control frame with 1002 (6.1)", function()
      case("rsv1_control")
    end)

    it("fails corrupt compressed data with 1007", function()
      case("corrupt")
    end)

    it("fails compressed text that is not UTF-8 once inflated with 1007", function()
      case("bad_utf8")
    end)

    it("fails a message that inflates past limits.max_message with 1009, memory bounded", function()
      local before = server:rss_kib()
      case("bomb")
      assert.is_true(server:rss_kib() - before < 16 * 1024,
        "RSS grew by " .. (server:rss_kib() - before) .. " KiB")
    end)

    it("holds the client to client_no_context_takeover: 1007 otherwise", function()
      case("context_takeover")
    end)

    it("sends a broadcast to python3-websockets clients that inflate it", function()
      local script = [[
import asyncio, sys, websockets
async def main(port):
    url = "ws://127.0.0.1:%d/fan" % port
    clients = [await websockets.connect(url) for _ in range(4)]
    assert all(c.extensions for c in clients), "no extension agreed"
    text = "tick " * 400
    await clients[0].send(text)
    for c in clients:
        assert await c.recv() == text
    for c in clients:
        await c.close()
    print("fan ok")
asyncio.run(main(int(sys.argv[1])))
]]
      local file = server.dir .. "/fan.py"
      testing.write_file(file, script)
      local status, out = run("/usr/bin/python3 " .. testing.quote(file) .. " " .. server.port)
      assert.are.equal(0, status, out)
      assert.matches("fan ok", out, 1, true)
    end)

    it("still serves after all of these", function()
      local ws = assert(server:connect("/echo"))
      ws:send("still here")
      assert.are.equal("still here", (ws:receive_message(5)))
      ws:close()
      assert.is_true(server:alive())
    end)
  end)

  it("is not agreed when compression = false in the config", function()
    local off = assert(testing.start { apps = APPS, config = [[return { apps = "apps", compression = false }]] })
    local ws, response = off:connect("/echo", {
      headers = { ["Sec-WebSocket-Extensions"] = "permessage-deflate" },
    })
    assert.truthy(ws)
    assert.is_nil(response.headers["sec-websocket-extensions"])
    ws:close()
    off:cleanup()
  end)
end)
