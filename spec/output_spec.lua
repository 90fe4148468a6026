-- The output queue, through the real binary. Payloads of 4 KiB and more go
-- to the socket straight from the app's Lua string (no copy), between the
-- copied small frames: whatever the mix, the client must get every frame
-- whole and in the order the app sent them, also when the socket takes the
-- bytes in pieces, before and after the 101, and when the connection is
-- rejected or closed with such frames queued. The strings are let go once
-- written.
local testing = require "moonport.testing"

local APPS = {}

-- "mix": small and large, text and binary, a ping and a pong in between.
-- "flood N SIZE": N messages of SIZE bytes, each a different string.
-- "fan SIZE": one string to every connection of this app.
-- "bye SIZE": a large message, then ws:close(4001).
-- "mem": Lua memory in KiB after a full collection.
APPS.out = [[
local app = {}
local all = {}
local function pattern(n, seed)
  local unit = string.format("%08d", seed)
  return (unit:rep(math.ceil(n / 8))):sub(1, n)
end
function app.on_connect(ws, req)
  all[ws] = true
  if req.args.early then
    ws:send(pattern(tonumber(req.args.early), 7), "binary")
    ws:send("after the early one")
  end
  if req.args.reject then
    ws:send(pattern(100000, 8), "binary")
    ws:reject(403, "no\n")
  end
end
function app.on_message(ws, data)
  local cmd, a, b = data:match("^(%S+) ?(%S*) ?(%S*)$")
  if cmd == "mix" then
    ws:send("s1")
    ws:send(pattern(5000, 1), "binary")
    ws:send(pattern(4096, 2))
    ws:ping("p")
    ws:send("s2", "binary")
    ws:send(pattern(70000, 3), "binary")
    ws:send(pattern(4095, 4))
    ws:send(pattern(200000, 5))
    ws:send("s3")
  elseif cmd == "flood" then
    for i = 1, tonumber(a) do ws:send(pattern(tonumber(b), i), "binary") end
  elseif cmd == "fan" then
    local s = pattern(tonumber(a), 9)
    for other in pairs(all) do other:send(s, "binary") end
  elseif cmd == "bye" then
    ws:send(pattern(tonumber(a), 6), "binary")
    ws:close(4001, "done")
  elseif cmd == "mem" then
    collectgarbage("collect")
    collectgarbage("collect")
    ws:send(string.format("%d", collectgarbage("count")))
  end
end
function app.on_close(ws) all[ws] = nil end
return app
]]

local function pattern(n, seed)
  local unit = string.format("%08d", seed)
  return (unit:rep(math.ceil(n / 8))):sub(1, n)
end

local KIND = { [1] = "text", [2] = "binary", [8] = "close" }

-- The next data frame (the server never fragments), with the payloads of
-- ping frames on the way noted in pings.
local function next_message(ws, pings)
  while true do
    local f, err = ws:receive(10)
    assert(f, "no frame: " .. tostring(err))
    assert.is_true(f.fin)
    if f.opcode == 9 then
      pings[#pings + 1] = f.payload
    elseif f.opcode ~= 10 then
      return f.payload, KIND[f.opcode], f.code
    end
  end
end

local function expect(ws, want_data, want_kind, pings)
  local data, kind = next_message(ws, pings or {})
  assert.are.equal(want_kind, kind)
  assert.are.equal(#want_data, #data)
  assert.is_true(data == want_data, "payload differs")
end

describe("output queue", function()
  local server
  setup(function()
    server = assert(testing.start {
      apps = APPS,
      config = [[return { apps = "apps", limits = { send_buffer = 65536 } }]],
    })
  end)
  teardown(function() server:cleanup() end)

  it("keeps the order and bytes of small, large, text, binary and control frames", function()
    local ws = assert(server:connect("/out"))
    ws:send("mix")
    local pings = {}
    expect(ws, "s1", "text", pings)
    expect(ws, pattern(5000, 1), "binary", pings)
    expect(ws, pattern(4096, 2), "text", pings)
    expect(ws, "s2", "binary", pings)
    assert.are.same({"p"}, pings) -- the ping came between, in its place
    expect(ws, pattern(70000, 3), "binary", pings)
    expect(ws, pattern(4095, 4), "text", pings)
    expect(ws, pattern(200000, 5), "text", pings)
    expect(ws, "s3", "text", pings)
    ws:close()
  end)

  it("delivers 40 large messages whole to a client that reads only later", function()
    local ws = assert(server:connect("/out"))
    ws:send("flood 40 100000")
    testing.sleep(0.5) -- the socket fills; the server writes what it takes
    for i = 1, 40 do
      expect(ws, pattern(100000, i), "binary")
    end
    ws:send("mix") -- and the connection goes on
    expect(ws, "s1", "text")
    ws:close()
  end)

  it("sends one large string to many connections", function()
    local clients = {}
    for i = 1, 10 do clients[i] = assert(server:connect("/out")) end
    clients[1]:send("fan 300000")
    for i = 1, 10 do
      expect(clients[i], pattern(300000, 9), "binary")
      clients[i]:close()
    end
  end)

  it("sends large frames queued in on_connect after the 101", function()
    local ws = assert(server:connect("/out?early=50000"))
    expect(ws, pattern(50000, 7), "binary")
    expect(ws, "after the early one", "text")
    ws:close()
  end)

  it("drops large frames queued before a rejection: the answer is HTTP only", function()
    local ws, _, response = server:connect("/out?reject=1")
    assert.is_nil(ws)
    assert.are.equal(403, response.status)
    assert.are.equal("no\n", response.body)
  end)

  it("sends a large message and then the close frame", function()
    local ws = assert(server:connect("/out"))
    ws:send("bye 150000")
    expect(ws, pattern(150000, 6), "binary")
    local data, kind, code = next_message(ws, {})
    assert.are.equal("close", kind, tostring(data))
    assert.are.equal(4001, code)
  end)

  it("lets go of the strings it has written", function()
    local ws = assert(server:connect("/out"))
    ws:send("mem")
    local before = tonumber((next_message(ws, {})))
    for _ = 1, 20 do
      ws:send("flood 10 100000") -- 1 MB of distinct strings per round
      for i = 1, 10 do expect(ws, pattern(100000, i), "binary") end
    end
    ws:send("mem")
    local after = tonumber((next_message(ws, {})))
    -- 20 MB went out; a kept reference would keep all of it.
    assert.is_true(after - before < 4096, ("Lua memory %d -> %d KiB"):format(before, after))
    ws:close()
  end)

  it("still serves after all this", function()
    local ws = assert(server:connect("/out"))
    ws:send("mix")
    expect(ws, "s1", "text")
    ws:close()
    assert.is_true(server:alive())
  end)
end)
