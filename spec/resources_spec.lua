-- Resource bounds, through the real binary: many connections on one loop,
-- a client that stops reading, a subscriber that cannot keep up. Sizes are
-- asserted, never timings.
local testing = require "moonport.testing"

local ECHO = [[
local app = {}
function app.on_message(ws, data, kind) ws:send(data, kind) end
return app
]]

local FLOOD = [[
local app = {}
local chunk = string.rep("y", 1024 * 1024)
function app.on_message(ws, data)
  for i = 1, 200 do
    if not ws:send(chunk, "binary") then
      require("moonport").log("info", "flood stopped after", i, "messages")
      return
    end
  end
end
return app
]]

local count = testing.count

describe("resources", function()
  it("serves 3000 concurrent connections on one loop, and closes them all", function()
    local server = assert(testing.start { apps = { echo = ECHO }, args = { "--log-level", "info" } })
    local p = io.popen("/usr/bin/python3 spec/support/many_clients.py 127.0.0.1 " .. server.port
                       .. " 3000 2>&1")
    local out = p:read("*a")
    p:close()
    assert.matches("3000 connected, 3000 echoed, 3000 closed", out, 1, true)
    local disconnects
    for _ = 1, 50 do
      disconnects = count(server:stdout(), "WSDISCONNECT /echo\" id=%d+ code=1000")
      if disconnects == 3000 then break end
      testing.sleep(0.1)
    end
    assert.are.equal(3000, disconnects)
    assert.is_true(server:alive())
    assert.are.equal(0, server:stop())
    server:cleanup()
  end)

  it("stops reading a client that does not read its echoes; memory stays bounded", function()
    local server = assert(testing.start {
      apps = { echo = ECHO },
      config = [[return { apps = "apps", limits = { send_buffer = 262144 } }]],
    })
    local ws = assert(server:connect("/echo"))
    ws.timeout = 1 -- a send that blocks this long means the server stopped reading
    local before = server:rss_kib()
    local chunk = string.rep("x", 65536)
    local sent, limit = 0, 256 * 1024 * 1024
    while sent < limit do
      local ok = ws:send_frame { opcode = "binary", payload = chunk, key = "\0\0\0\0" }
      if not ok then break end
      sent = sent + #chunk
    end
    -- Kernel buffers on both sides hold some megabytes; the server itself
    -- must hold no more than about send_buffer.
    assert.is_true(sent < limit, "the server kept reading " .. sent .. " bytes")
    local grown = server:rss_kib() - before
    assert.is_true(grown < 32 * 1024, "server RSS grew by " .. grown .. " KiB")
    -- Reading now drains the queue; every echo that arrives is intact.
    local frames = 0
    while true do
      local f = ws:receive(1)
      if not f then break end
      assert.are.equal(2, f.opcode)
      assert.are.equal(65536, #f.payload)
      assert.is_true(f.payload == chunk)
      frames = frames + 1
    end
    assert.is_true(frames > 4, "only " .. frames .. " echoes came back")
    assert.is_true(server:alive())
    local ws2 = assert(server:connect("/echo"))
    ws2:send("still here")
    assert.are.equal("still here", (ws2:receive_message(5)))
    server:stop()
    server:cleanup()
  end)

  -- An echo server whose freed memory is freed: under ASan it would sit in
  -- the quarantine instead, so that is off.
  local function start_echo()
    return assert(testing.start {
      apps = { echo = ECHO },
      env = 'ASAN_OPTIONS="${ASAN_OPTIONS:-}:quarantine_size_mb=0"',
    })
  end

  -- build/bench/loadgen's echo load with args for 3 s; fails the test unless
  -- every echo came back intact, and returns how many did.
  local function echo_load(server, args)
    local dir = testing.temp_dir()
    local rc = os.execute("build/bench/loadgen echo " .. args .. " -d 3 -w 0 --json --url ws://127.0.0.1:"
                          .. server.port .. "/echo > " .. dir .. "/out 2>&1")
    local out = testing.read_file(dir .. "/out")
    os.execute("rm -rf " .. testing.quote(dir))
    assert.is_true(rc == true or rc == 0, out)
    local echoed = tonumber(out:match('"checked": (%d+)'))
    assert.is_true(echoed and echoed > 1000, out)
    return echoed
  end

  it("echoes 16 KiB messages under load with RSS growth bounded", function()
    -- With 400 messages of 16 KiB in flight the server must stay well under
    -- their sum plus what it had, whatever the collector's pacing.
    local server = start_echo()
    local before = server:rss_kib()
    local echoed = echo_load(server, "-c 100 -p 4 -s 16384 --binary")
    local grown = server:rss_kib() - before
    io.stderr:write(string.format("\n[resources_spec] 16 KiB echo, %d messages: RSS grew %d KiB\n",
                                  echoed, grown))
    assert.is_true(grown < 64 * 1024, "server RSS grew by " .. grown .. " KiB")
    assert.is_true(server:alive())
    assert.are.equal(0, server:stop())
    server:cleanup()
  end)

  it("gives back the memory large messages took once small ones follow", function()
    -- 64 KiB messages grow the collector's slack (and glibc keeps freed
    -- heap mapped meanwhile); 64 B messages afterwards shrink it, and the
    -- freed heap goes back to the system. ASan's allocator keeps what it
    -- frees whatever moonport asks of glibc's, so under ASan only the bound
    -- is checked.
    local server = start_echo()
    local asan = (os.getenv("MOONPORT_BIN") or ""):match("asan")
    local before = server:rss_kib()
    echo_load(server, "-c 100 -p 4 -s 65536 --binary")
    local peak = server:rss_kib()
    echo_load(server, "-c 100 -p 16 -s 64 --text")
    local after = server:rss_kib()
    io.stderr:write(string.format("\n[resources_spec] RSS %d KiB, after 64 KiB echoes %d, after 64 B echoes %d\n",
                                  before, peak, after))
    assert.is_true(peak - before < 96 * 1024, "server RSS grew by " .. (peak - before) .. " KiB")
    if not asan then
      assert.is_true(after - before < (peak - before) / 2,
                     string.format("RSS %d KiB, %d after 64 KiB echoes, still %d", before, peak, after))
    end
    assert.is_true(server:alive())
    assert.are.equal(0, server:stop())
    server:cleanup()
  end)

  it("refuses connections beyond limits.max_connections, with one log line a second", function()
    local server = assert(testing.start {
      apps = { echo = ECHO },
      config = [[return { apps = "apps", limits = { max_connections = 3 } }]],
    })
    local open = {}
    for i = 1, 3 do
      open[i] = assert(server:connect("/echo"))
    end
    -- The fourth and fifth are accepted by the kernel, then closed at once.
    for _ = 1, 2 do
      local ws, err = server:connect("/echo")
      assert.is_nil(ws)
      assert.is_string(err)
    end
    assert.truthy(server:wait_log("refused 1 connection%(s%): limits.max_connections %(3%) reached", 5))
    open[1]:send("one")
    assert.are.equal("one", (open[1]:receive_message(5)))
    open[3]:close(1000)
    assert.are.equal(1000, (open[3]:expect_close(5)))
    open[3]:shutdown() -- the client closes its socket, as clients do
    -- A slot is free again once that connection is gone.
    local ws
    for _ = 1, 50 do
      ws = server:connect("/echo")
      if ws then break end
      testing.sleep(0.1)
    end
    assert.truthy(ws, "no slot came free")
    ws:send("again")
    assert.are.equal("again", (ws:receive_message(5)))
    server:stop()
    server:cleanup()
  end)

  it("drops a connection whose output queue passes max_send_buffer, and logs it", function()
    local server = assert(testing.start {
      apps = { flood = FLOOD, echo = ECHO },
      config = [[return { apps = "apps", limits = { send_buffer = 1048576, max_send_buffer = 8388608 } }]],
    })
    local ws = assert(server:connect("/flood"))
    ws:send("go")
    assert.truthy(server:wait_log("over limits.max_send_buffer: dropping the connection", 5))
    -- 8 queued messages of 1 MiB + a 10-byte header pass 8 MiB: the 8th send fails.
    assert.truthy(server:wait_log("flood stopped after 8 messages", 5))
    -- What was queued before the limit may arrive; then the socket ends.
    assert.is_true(ws:is_closed(10))
    assert.truthy(server:wait_log("WSDISCONNECT /flood\" id=%d+ code=1006", 5))
    local ws2 = assert(server:connect("/echo"))
    ws2:send("alive")
    assert.are.equal("alive", (ws2:receive_message(5)))
    server:stop()
    server:cleanup()
  end)
end)
