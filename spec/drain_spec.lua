-- Backpressure the app can see, through the real binary: a client that does
-- not read makes its connection's output queue go over limits.send_buffer;
-- ws:send keeps queueing and returns true, ws:buffered() says the queue is
-- over, and once the client reads it back down, on_drain(ws) runs once. A
-- send that takes the queue past limits.max_send_buffer returns nil,
-- "closed", and on_close runs after the handler that sent, never inside the
-- send. The clients here are raw (moonport.client): they read only when the
-- spec says so.
local testing = require "moonport.testing"

local SEND_BUFFER = 65536

-- "fill N": N sends of one 1 MiB string (queued by reference, so the
--   server holds it once), then a log line with what each send returned
--   and what ws:buffered() said after the last.
-- "small": one short message, and the same log line.
-- "peek ID": ws:buffered() and the on_drain count of connection ID, to this
--   connection: "buffered N over BOOL drains K".
-- "overflow": 1 MiB sends until one fails (max_send_buffer is set low in
--   the server that uses it); logs each result, and on_close logs its own
--   line: the spec checks that it comes after "overflow end".
-- on_drain sends "drained K" (so it reaches the client after everything
-- queued before it) and logs the same; with ?boom it raises instead.
local APP = [[
local moonport = require "moonport"
local app = {}
local conns = {}
local MiB = string.rep("m", 1024 * 1024)
local seq = 0
local function mark(...)
  seq = seq + 1
  moonport.log("info", "mark", seq, ...)
end
function app.on_connect(ws, req)
  conns[ws.id] = ws
  ws.data.drains = 0
  ws.data.boom = req.args.boom
end
local function report(ws, results)
  local n, over = ws:buffered()
  mark("sent", ws.id, table.concat(results, ","), "buffered", n, "over", tostring(over))
end
function app.on_message(ws, data)
  local cmd, arg = data:match("^(%S+) ?(.*)$")
  if cmd == "fill" then
    local results = {}
    for i = 1, tonumber(arg) do results[i] = tostring(ws:send(MiB, "binary")) end
    report(ws, results)
  elseif cmd == "small" then
    report(ws, {tostring(ws:send("small"))})
  elseif cmd == "peek" then
    local other = conns[tonumber(arg)]
    local n, over = other:buffered()
    ws:send(string.format("buffered %s over %s drains %d", tostring(n), tostring(over),
                          other.data.drains))
  elseif cmd == "overflow" then
    local results = {}
    while true do
      local ok, err = ws:send(MiB, "binary")
      results[#results + 1] = tostring(ok) .. (err and ("/" .. err) or "")
      if not ok then break end
    end
    local n, err = ws:buffered()
    mark("overflow", table.concat(results, ","), "buffered after", tostring(n), tostring(err))
    mark("overflow end")
  end
end
function app.on_drain(ws)
  if ws.data.boom then error("boom in on_drain") end
  ws.data.drains = ws.data.drains + 1
  local n, over = ws:buffered()
  mark("on_drain", ws.id, "count", ws.data.drains, "buffered", n, "over", tostring(over))
  ws:send("drained " .. ws.data.drains)
end
function app.on_close(ws, code)
  conns[ws.id] = nil
  mark("on_close", ws.id, code)
end
return app
]]

-- The next text message, skipping binary ones; counts the binary bytes.
local function next_text(ws, timeout)
  local bytes = 0
  while true do
    local data, kind = ws:receive_message(timeout or 10)
    assert(data, "no message: " .. tostring(kind))
    if kind == "text" then
      return data, bytes
    end
    bytes = bytes + #data
  end
end

-- The id of the connection ws, from the access log.
local function id_of(server, n)
  local ids = {}
  for id in server:stdout():gmatch('"WSCONNECT /drain" id=(%d+)') do
    ids[#ids + 1] = id
  end
  return ids[n]
end

describe("on_drain and send's results under backpressure", function()
  local server

  setup(function()
    server = assert(testing.start {
      apps = { drain = APP },
      config = "return { apps = 'apps', limits = { send_buffer = " .. SEND_BUFFER .. " } }",
    })
  end)
  teardown(function() server:cleanup() end)

  local function peek(watcher, id)
    assert(watcher:send("peek " .. id))
    local msg = assert(watcher:receive_message(5))
    local n, over, drains = msg:match("^buffered (%d+) over (%a+) drains (%d+)$")
    assert(n, msg)
    return tonumber(n), over == "true", tonumber(drains)
  end

  it("runs on_drain once, after a client that did not read reads its queue down", function()
    local slow = assert(server:connect("/drain"))
    local id = assert(id_of(server, 1))
    local watcher = assert(server:connect("/drain"))
    -- 40 MiB: more than the kernel's socket buffers take without the client
    -- reading, so most of it stays in the server's queue.
    assert(slow:send("fill 40"))
    local line = server:wait_log("mark %d+ sent " .. id .. " [^\n]*", 10)
    assert(line, server:stderr())
    -- Every send queued and returned true, over send_buffer or not; the
    -- queue is over it, and buffered() says so.
    assert.truthy(line:find("sent " .. id .. " " .. ("true,"):rep(39) .. "true buffered ", 1, true),
                  line)
    assert.truthy(line:find(" over true$"), line)
    -- Nothing was read: the queue is still over half of send_buffer, and
    -- on_drain has not run.
    local n, over, drains = peek(watcher, id)
    assert.is_true(n > SEND_BUFFER, "only " .. n .. " bytes queued")
    assert.is_true(over)
    assert.are.equal(0, drains)
    -- Read it all: the 40 MiB, then what on_drain sent, after them.
    local text, bytes = next_text(slow, 30)
    assert.are.equal(40 * 1024 * 1024, bytes)
    assert.are.equal("drained 1", text)
    n, over, drains = peek(watcher, id)
    assert.are.equal(0, n)
    assert.is_false(over)
    assert.are.equal(1, drains)
    local drained = server:stderr():match("mark %d+ on_drain " .. id .. " [^\n]*")
    assert(drained, server:stderr())
    -- on_drain ran with the queue at half of send_buffer or less, no longer
    -- over, and its log line names the connection.
    local at = tonumber(drained:match("buffered (%d+)"))
    assert.is_true(at <= SEND_BUFFER / 2, drained)
    assert.truthy(drained:find("over false", 1, true), drained)
    assert.truthy(server:stderr():find("app drain conn " .. id .. ": mark %d+ on_drain"))
    -- Once: no second on_drain after more traffic that stays under.
    assert(slow:send("small"))
    assert.are.equal("small", (next_text(slow)))
    n, over, drains = peek(watcher, id)
    assert.are.equal(1, drains)
    -- A second time over: a second on_drain.
    assert(slow:send("fill 40"))
    text, bytes = next_text(slow, 30)
    assert.are.equal(40 * 1024 * 1024, bytes)
    assert.are.equal("drained 2", text)
    slow:close(1000)
    watcher:close(1000)
    assert.are.equal(1, testing.count(server:stderr(), "on_drain " .. id .. " count 1 "))
    assert.are.equal(1, testing.count(server:stderr(), "on_drain " .. id .. " count 2 "))
  end)

  it("never runs on_drain for a connection whose queue never went over send_buffer", function()
    local ws = assert(server:connect("/drain"))
    local id = assert(id_of(server, 3))
    for _ = 1, 20 do
      assert(ws:send("small"))
      assert.are.equal("small", (next_text(ws)))
    end
    local line = server:wait_log("mark %d+ sent " .. id .. " [^\n]*", 5)
    assert.truthy(line:find("sent " .. id .. " true buffered %d+ over false$"), line)
    local watcher = assert(server:connect("/drain"))
    local n, over, drains = peek(watcher, id)
    assert.are.equal(0, n)
    assert.is_false(over)
    assert.are.equal(0, drains)
    ws:close(1000)
    watcher:close(1000)
    assert.truthy(server:wait_log("mark %d+ on_close " .. id .. " ", 5))
    assert.is_nil(server:stderr():find("on_drain " .. id .. " ", 1, true))
  end)

  it("logs an error in on_drain with its traceback and closes with 1011", function()
    local ws = assert(server:connect("/drain?boom=1"))
    local id = assert(id_of(server, 5))
    assert(ws:send("fill 40"))
    local bytes = 0
    while true do
      local f = assert(ws:receive(30))
      if f.opcode == 8 then
        assert.are.equal(1011, f.code)
        break
      end
      bytes = bytes + #f.payload
    end
    assert.are.equal(40 * 1024 * 1024, bytes)
    ws:close(1011)
    local err = server:wait_log("conn " .. id .. ": error in on_drain: [^\n]*boom in on_drain", 5)
    assert(err, server:stderr())
    assert.truthy(server:stderr():find("stack traceback", 1, true))
    assert.truthy(server:wait_log("mark %d+ on_close " .. id .. " 1011", 5))
    assert.is_true(server:alive())
  end)
end)

describe("on_drain over wss://", function()
  it("runs once, after the client reads, through OpenSSL's writes", function()
    local dir = testing.temp_dir()
    local cert, key = testing.make_cert(dir, "drain")
    local server = assert(testing.start {
      apps = { drain = APP },
      tls = { cert = cert, key = key },
      config = "return { apps = 'apps', limits = { send_buffer = " .. SEND_BUFFER .. " } }",
    })
    local ws = assert(server:connect("/drain"))
    local id = assert(id_of(server, 1))
    assert(ws:send("fill 16"))
    local text, bytes = next_text(ws, 60)
    assert.are.equal(16 * 1024 * 1024, bytes)
    assert.are.equal("drained 1", text)
    assert.truthy(server:wait_log("sent " .. id .. " [^\n]* over true", 5))
    ws:close(1000)
    assert.truthy(server:wait_log("mark %d+ on_close " .. id .. " ", 5))
    assert.are.equal(1, testing.count(server:stderr(), "on_drain " .. id .. " count"))
    server:stop()
    server:cleanup()
    os.execute("rm -rf " .. testing.quote(dir))
  end)
end)

describe("ws:send past limits.max_send_buffer", function()
  it("returns nil, \"closed\"; on_close runs after the handler, not inside send", function()
    local server = assert(testing.start {
      apps = { drain = APP },
      config = "return { apps = 'apps', limits = { send_buffer = 65536, " ..
               "max_send_buffer = 4 * 1024 * 1024 } }",
    })
    local ws = assert(server:connect("/drain"))
    local id = assert(id_of(server, 1))
    assert(ws:send("overflow"))
    local line = server:wait_log("mark %d+ overflow [^\n]*", 5)
    assert(line, server:stderr())
    -- 4 sends of 1 MiB (and their headers) fit under 4 MiB; the 4th passes it.
    assert.truthy(line:find("overflow true,true,true,nil/closed buffered after nil closed", 1,
                            true), line)
    assert.truthy(server:wait_log("over limits.max_send_buffer: dropping the connection", 5))
    local closed = server:wait_log("mark (%d+) on_close " .. id .. " 1006", 5)
    local ended = server:stderr():match("mark (%d+) overflow end")
    assert(closed and ended, server:stderr())
    assert.is_true(tonumber(ended) < tonumber(closed), server:stderr())
    assert.is_nil(server:stderr():find("on_drain " .. id .. " ", 1, true))
    assert.is_true(ws:is_closed(10))
    server:stop()
    server:cleanup()
  end)
end)

-- The README's example: a producer that holds back while the queue is over
-- send_buffer and goes on in on_drain. Its queue never holds more than
-- send_buffer and one chunk, however much it sends to a slow reader.
local PUMP = [[
local moonport = require "moonport"
local app = {}
local CHUNK = string.rep("x", 64 * 1024)
local function pump(ws)                -- send until done, or until the queue is over
  while ws.data.left > 0 do
    ws:send(CHUNK, "binary")
    ws.data.left = ws.data.left - 1
    local n, over = ws:buffered()
    ws.data.most = math.max(ws.data.most or 0, n)
    if over then return end            -- on_drain calls pump again
  end
end
function app.on_message(ws, data)      -- "N": send me N chunks
  if data == "most" then return ws:send(tostring(ws.data.most)) end
  ws.data.left = tonumber(data) or 0
  pump(ws)
end
app.on_drain = pump
return app
]]

describe("the README's on_drain example", function()
  it("sends everything to a slow reader with a bounded queue", function()
    local server = assert(testing.start {
      apps = { pump = PUMP },
      config = "return { apps = 'apps', limits = { send_buffer = " .. SEND_BUFFER .. " } }",
    })
    local ws = assert(server:connect("/pump"))
    assert(ws:send("400")) -- 25 MiB
    local bytes = 0
    for _ = 1, 400 do
      local data, kind = ws:receive_message(10)
      assert.are.equal("binary", kind, tostring(data))
      bytes = bytes + #data
    end
    assert.are.equal(400 * 65536, bytes)
    assert(ws:send("most"))
    local most = tonumber((ws:receive_message(5)))
    assert.is_true(most <= SEND_BUFFER + 65536 + 14, "the queue held " .. most)
    ws:close(1000)
    server:stop()
    server:cleanup()
  end)
end)
