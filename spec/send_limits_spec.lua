-- ws:send of short messages at the edges of the output limits, through the
-- real binary. Short text and binary sends take a fast path into the
-- output block being filled (conn.c, conn_send_frame_quick) while the
-- queue stays under both limits; these burst past limits.send_buffer and
-- limits.max_send_buffer inside one handler (nothing is written to the
-- socket until it returns), so the exact send that crosses each limit is
-- known: every frame here is 2 header bytes and 100 of payload.
local testing = require "moonport.testing"

local APP = [[
local moonport = require "moonport"
local app = {}
function app.on_message(ws, data)
  local n, kind = data:match("^burst (%d+) (%a+)$")
  local results = {}
  for i = 1, tonumber(n) do
    local ok, err = ws:send(string.format("%03d", i) .. ("x"):rep(97), kind)
    results[i] = ok and "t" or err
  end
  local queued, over = ws:buffered()
  moonport.log("info", "burst", kind, table.concat(results, ","), "buffered", tostring(queued),
               "over", tostring(over))
end
function app.on_drain(ws)
  ws:send("drained")
end
function app.on_close(ws, code)
  moonport.log("info", "closed", code)
end
return app
]]

describe("short sends at the output limits", function()
  local server

  setup(function()
    server = assert(testing.start {
      apps = { burst = APP },
      config = "return { apps = 'apps', limits = { send_buffer = 1024, max_send_buffer = 4096 } }",
    })
  end)
  teardown(function() server:cleanup() end)

  for _, kind in ipairs { "text", "binary" } do
    it("queues past send_buffer, pauses and drains (" .. kind .. ")", function()
      local ws = assert(server:connect("/burst"))
      assert(ws:send("burst 30 " .. kind))
      -- 30 frames of 102 bytes: 3,060 queued, over 1,024, under 4,096.
      local want = ": burst " .. kind .. " " .. ("t,"):rep(29) .. "t buffered 3060 over true\n"
      assert(server:wait_log(want, 5), server:stderr())
      for i = 1, 30 do
        local data, k = ws:receive_message(5)
        assert.are.equal(string.format("%03d", i) .. ("x"):rep(97), data)
        assert.are.equal(kind, k)
      end
      assert.are.equal("drained", (ws:receive_message(5)))
      ws:close(1000)
      assert(server:wait_log("closed 1000", 5))
    end)
  end

  it("drops the connection at the send that passes max_send_buffer", function()
    local ws = assert(server:connect("/burst"))
    assert(ws:send("burst 45 binary"))
    -- The 41st frame takes the queue to 4,182 bytes, over 4,096: that send
    -- returns nil, "closed", and so does every one after it.
    local want = ": burst binary " .. ("t,"):rep(40) .. ("closed,"):rep(4) .. "closed buffered nil over closed\n"
    assert(server:wait_log(want, 5), server:stderr())
    assert(server:wait_log("over limits.max_send_buffer", 5))
  end)
end)
