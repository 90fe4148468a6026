-- Handlers that wait (README "Waiting: handlers that talk to the world"),
-- through the real binary: moonport.sleep suspends the handler and the loop
-- serves everyone else; per connection, events stay in order (messages that
-- arrive meanwhile are handed over after it, in order; on_close follows it,
-- once); on_connect may wait (the answer goes out when it returns, bounded
-- by timeouts.handshake: 504); an error after a wait closes with 1011 and
-- logs a traceback; a reload lets a waiting handler finish with its code;
-- timer callbacks and moonport.spawn may wait; misuse raises; 100,000 waits
-- leave no task, coroutine or registry ref behind.
local testing = require "moonport.testing"
local echo_load = require "support.echo_load"
local socket = require "socket"

local function app_source(version)
    return [[
local moonport = require "moonport"
local VERSION = "]] .. version .. [["
local app = {}
local function mark(...)
  _G.wait_spec_seq = (_G.wait_spec_seq or 0) + 1
  moonport.log("info", "mark", _G.wait_spec_seq, ...)
end
local flags = {}
local cmds = {}
function cmds.sleep(ws, arg)
  local s, tag = arg:match("(%S+) ?(.*)")
  local r = select("#", moonport.sleep(tonumber(s)))
  ws:send("woke " .. tag .. " " .. r)
end
function cmds.echo(ws, arg) ws:send(arg) end
-- Waits inside pcall, and inside a metamethod the VM calls, are fine.
function cmds.nested(ws)
  local ok = pcall(moonport.sleep, 0.01)
  local lazy = setmetatable({}, { __index = function(_, k) moonport.sleep(0.01); return k end })
  ws:send("nested " .. tostring(ok) .. " " .. lazy.x)
end
-- Wait until another connection's handler sets the flag: only possible if
-- the loop serves it while this one waits.
function cmds.waitflag(ws, name)
  while not flags[name] do moonport.sleep(0.005) end
  ws:send("flag " .. name .. " seen")
end
function cmds.setflag(ws, name)
  flags[name] = true
  ws:send("set " .. name)
end
function cmds.closewait(ws, s)
  mark("waiting", ws.id)
  moonport.sleep(tonumber(s))
  local ok, err = ws:send("after the wait")
  mark("resumed", ws.id, "send gives", tostring(ok), tostring(err))
end
function cmds.late(ws, tag)
  local ok, err = ws:send("late " .. tag)
  mark("late", tag, ws.id, "send gives", tostring(ok), tostring(err))
end
function cmds.closeme(ws, s)
  mark("closeme waits", ws.id)
  moonport.sleep(tonumber(s))
  ws:close(4002, "by the app")
end
function cmds.boom(ws)
  moonport.sleep(0.01)
  local t = nil
  return t.field -- an error after a wait
end
function cmds.version(ws, s)
  mark("version waits", ws.id)
  moonport.sleep(tonumber(s))
  ws:send("version " .. VERSION)
end
function cmds.timer(ws)
  ws:after(0, function(w)
    moonport.sleep(0.01)
    w:send("ws timer waited")
  end)
  moonport.after(0, function()
    moonport.sleep(0.01)
    ws:send("host timer waited")
  end)
end
function cmds.spawn(ws)
  local order = {}
  local r = moonport.spawn(function(a, b)
    order[#order + 1] = "spawned " .. a .. b
    moonport.sleep(0.01)
    ws:send("spawn waited " .. table.concat(order, ","))
  end, "x", "y")
  order[#order + 1] = "handler"
  ws:send("spawn returned " .. tostring(r))
end
function cmds.spawnlong(ws)
  moonport.spawn(moonport.sleep, 60)
  ws:send("spawned")
end
function cmds.spawnboom(ws)
  moonport.spawn(function()
    moonport.sleep(0)
    error("boom in spawn")
  end)
  ws:send("spawned")
end
function cmds.misuse(ws)
  local out = {}
  local function try(f, ...)
    local ok, err = pcall(f, ...)
    out[#out + 1] = ok and "no error" or tostring(err)
  end
  try(moonport.sleep, "soon")
  try(moonport.sleep, -1)
  try(moonport.sleep, 0 / 0)
  try(moonport.sleep, math.huge)
  try(moonport.spawn, nil)
  try(function() table.sort({3, 2, 1}, function(a, b) moonport.sleep(0); return a < b end) end)
  try(function()
    local co = coroutine.create(function() moonport.sleep(0) end)
    local ok, err = coroutine.resume(co)
    if not ok then error(err, 0) end
  end)
  try(require, "lib.waits_at_load")
  ws:send(table.concat(out, "\n"))
end
function cmds.yield(ws)
  coroutine.yield()
end
-- n waits in one handler, and n spawned functions that each wait once.
function cmds.many(ws, n)
  n = tonumber(n)
  for _ = 1, n do moonport.sleep(0) end
  local done = 0
  for batch = 1, n / 1000 do -- 1,000 at a time wait together
    for _ = 1, 1000 do
      moonport.spawn(function() moonport.sleep(0); done = done + 1 end)
    end
    while done < batch * 1000 do moonport.sleep(0.001) end
  end
  ws:send("many done")
end
function cmds.heap(ws)
  collectgarbage("collect")
  collectgarbage("collect")
  local refs = 0
  for _ in pairs(debug.getregistry()) do refs = refs + 1 end
  ws:send(string.format("%d %d", collectgarbage("count"), refs))
end
function app.on_connect(ws, req)
  local wait = tonumber(req.args.wait)
  if wait then
    mark("on_connect waits", ws.id)
    moonport.sleep(wait)
    local ok, err = ws:send("hello after the wait")
    mark("on_connect resumed", ws.id, "send gives", tostring(ok), tostring(err))
    if req.args.reject then return ws:reject(403, "no") end
  end
end
function app.on_message(ws, data)
  local name, arg = data:match("^(%S+) ?(.*)$")
  local cmd = cmds[name]
  if cmd then cmd(ws, arg) else ws:send(data) end
end
function cmds.bigwait(ws)
  local chunk = string.rep("x", 65536)
  for _ = 1, 512 do ws:send(chunk) end -- 32 MiB: over limits.send_buffer
  mark("bigwait waits", ws.id, tostring(select(2, ws:buffered())))
  moonport.sleep(2)
  mark("bigwait resumed", ws.id)
  ws:send("bigwait done")
end
function app.on_drain(ws)
  mark("on_drain", ws.id)
end
function app.on_close(ws, code)
  mark("on_close", ws.id, code)
end
return app
]]
end

local WAITS_AT_LOAD = [[
require("moonport").sleep(0)
return {}
]]

local function ask(ws, msg, timeout)
    assert(ws:send(msg))
    local data, err = ws:receive_message(timeout or 5)
    assert(data, "no answer to " .. msg .. ": " .. tostring(err))
    return data
end

local function marks(server)
    local list = {}
    for seq, text in server:stderr():gmatch("mark (%d+) ([^\n]*)") do
        list[#list + 1] = text
    end
    return list
end

local function id_of(server, n)
    local ids = {}
    for id in server:stdout():gmatch('"WSCONNECT /waits" id=(%d+)') do
        ids[#ids + 1] = id
    end
    return ids[n]
end

describe("handlers that wait", function()
    local server, connected = nil, 0

    setup(function()
        local err, out
        server, err, out = testing.start {
            apps = { waits = app_source("v1") },
            files = { ["apps/lib/waits_at_load.lua"] = WAITS_AT_LOAD },
            config = "return { timeouts = { handshake = 1 }, limits = { send_buffer = 65536 } }",
            args = { "--reload", "off" },
            -- Under ASan, freed memory waits in a quarantine: RSS would grow.
            env = 'ASAN_OPTIONS="${ASAN_OPTIONS:-}:quarantine_size_mb=0"',
        }
        assert(server, tostring(err) .. "\n" .. tostring(out))
    end)
    teardown(function() server:cleanup() end)

    local function connect(query)
        local ws = assert(server:connect("/waits" .. (query or "")))
        connected = connected + 1
        return ws, assert(id_of(server, connected))
    end

    it("moonport.sleep suspends the handler and returns nothing", function()
        local ws = connect()
        assert.are.equal("woke a 0", ask(ws, "sleep 0.05 a"))
        assert.are.equal("woke b 0", ask(ws, "sleep 0 b"))
        assert.are.equal("nested true x", ask(ws, "nested"))
        ws:close()
    end)

    it("serves other connections while a handler waits", function()
        local a, b = connect(), connect()
        assert(a:send("waitflag f1"))
        -- a's handler waits until b's sets the flag: a deadlock otherwise.
        assert.are.equal("set f1", ask(b, "setflag f1"))
        assert.are.equal("flag f1 seen", (a:receive_message(5)))
        a:close()
        b:close()
    end)

    it("keeps a connection's events in order while its handler waits", function()
        local ws = connect()
        assert(ws:send("sleep 0.2 first"))
        for i = 1, 5 do assert(ws:send("echo m" .. i)) end
        assert.are.equal("woke first 0", (ws:receive_message(5)))
        for i = 1, 5 do assert.are.equal("m" .. i, (ws:receive_message(5))) end
        -- A queued message that waits in turn holds the rest back again.
        assert(ws:send("sleep 0.1 one"))
        assert(ws:send("sleep 0.1 two"))
        assert(ws:send("echo three"))
        assert.are.equal("woke one 0", (ws:receive_message(5)))
        assert.are.equal("woke two 0", (ws:receive_message(5)))
        assert.are.equal("three", (ws:receive_message(5)))
        -- Past 64 waiting messages reading pauses, and resumes after.
        assert(ws:send("sleep 0.2 flood"))
        for i = 1, 500 do assert(ws:send("echo f" .. i)) end
        assert.are.equal("woke flood 0", (ws:receive_message(5)))
        for i = 1, 500 do assert.are.equal("f" .. i, (ws:receive_message(5))) end
        ws:close()
    end)

    it("runs on_close once, after a handler that waited through the close", function()
        local ws, id = connect()
        assert(ws:send("closewait 0.3"))
        server:wait_log("mark %d+ waiting " .. id, 5)
        ws:close(4001, "leaving")
        ws:expect_close(5)
        server:wait_log("mark %d+ on_close " .. id, 5)
        local seen = {}
        for _, m in ipairs(marks(server)) do
            if m:find(" " .. id .. " ", 1, true) or m:match(" " .. id .. "$") then
                seen[#seen + 1] = m
            end
        end
        assert.are.same({ "waiting " .. id, "resumed " .. id .. " send gives nil closed",
                          "on_close " .. id .. " 4001" }, seen)
    end)

    local function marks_of(id)
        local seen = {}
        for _, m in ipairs(marks(server)) do
            if m:find(" " .. id .. " ", 1, true) or m:match(" " .. id .. "$") then
                seen[#seen + 1] = m
            end
        end
        return seen
    end

    it("hands messages sent before the peer's close to on_message, then runs on_close", function()
        local ws, id = connect()
        assert(ws:send("closewait 0.3"))
        server:wait_log("mark %d+ waiting " .. id, 5)
        assert(ws:send("late a"))
        assert(ws:send("late b"))
        ws:close(4001, "leaving")
        ws:expect_close(5)
        server:wait_log("mark %d+ on_close " .. id, 5)
        assert.are.same({ "waiting " .. id, "resumed " .. id .. " send gives nil closed",
                          "late a " .. id .. " send gives nil closed",
                          "late b " .. id .. " send gives nil closed",
                          "on_close " .. id .. " 4001" }, marks_of(id))
    end)

    it("drops the messages behind a waiting handler that closes the connection itself", function()
        local ws, id = connect()
        assert(ws:send("closeme 0.3"))
        server:wait_log("mark %d+ closeme waits " .. id, 5)
        assert(ws:send("late c"))
        assert.are.equal(4002, (ws:expect_close(5)))
        server:wait_log("mark %d+ on_close " .. id, 5)
        -- "late c" never reaches on_message (the client here does not answer
        -- the close frame, so on_close gets 1006 when the socket ends).
        local seen = marks_of(id)
        assert.are.equal(2, #seen, table.concat(seen, "\n"))
        assert.are.equal("closeme waits " .. id, seen[1])
        assert.truthy(seen[2]:match("^on_close " .. id .. " %d+$"), seen[2])
    end)

    it("runs on_drain after a handler that waited while its queue drained", function()
        local ws, id = connect()
        assert(ws:send("bigwait"))
        server:wait_log("mark %d+ bigwait waits " .. id .. " true", 5)
        local n = 0
        while n < 512 do
            local data = assert(ws:receive_message(10))
            assert.are.equal(65536, #data)
            n = n + 1
        end
        assert.are.equal("bigwait done", (ws:receive_message(10)))
        server:wait_log("mark %d+ on_drain " .. id, 5)
        local seen = {}
        for _, m in ipairs(marks(server)) do
            if m:match(" " .. id .. "$") or m:match(" " .. id .. " ") then seen[#seen + 1] = m end
        end
        assert.are.same({ "bigwait waits " .. id .. " true", "bigwait resumed " .. id,
                          "on_drain " .. id }, seen)
        ws:close()
    end)

    it("lets on_connect wait, then accept or reject", function()
        local ws, id = connect("?wait=0.1")
        assert.are.equal("hello after the wait", (ws:receive_message(5)))
        assert.are.equal("m", ask(ws, "echo m"))
        ws:close()
        server:wait_log("mark %d+ on_connect resumed " .. id .. " send gives true nil", 5)
        local resp = server:request("GET /waits?wait=0.1&reject=1 HTTP/1.1\r\nHost: x\r\n" ..
            "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n" ..
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n", 5)
        assert.are.equal(403, resp and resp.status)
    end)

    it("answers 504 when on_connect waits past timeouts.handshake", function()
        local resp = server:request("GET /waits?wait=1.5 HTTP/1.1\r\nHost: x\r\n" ..
            "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n" ..
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n", 5)
        assert.are.equal(504, resp and resp.status)
        -- Its later calls on ws see a closed connection; no on_close (never
        -- accepted). The two tests before this one resumed two on_connects.
        assert.truthy(testing.eventually(function()
            local n = 0
            for _, m in ipairs(marks(server)) do
                if m:match("^on_connect resumed") then n = n + 1 end
            end
            return n == 3
        end, 5))
        local resumed = {}
        for _, m in ipairs(marks(server)) do
            if m:match("^on_connect resumed") then resumed[#resumed + 1] = m end
        end
        assert.truthy(resumed[3]:match("send gives nil closed$"), resumed[3])
    end)

    it("closes with 1011 and logs a traceback for an error after a wait", function()
        local ws, id = connect()
        assert(ws:send("boom"))
        local code = ws:expect_close(5)
        assert.are.equal(1011, code)
        local err = server:wait_log("conn " .. id .. ": error in on_message: ([^\n]*\n[^\n]*\n[^\n]*)", 5)
        assert.truthy(err:match("waits%.lua:%d+: attempt to index local 't'"), err)
        assert.truthy(err:match("stack traceback"), err)
    end)

    it("lets a waiting handler finish with the code it started with across a reload", function()
        local ws, id = connect()
        assert(ws:send("version 0.5"))
        -- the v1 handler is waiting before the reload starts, not only sent to
        server:wait_log("mark %d+ version waits " .. id, 5)
        server:write_app("waits", app_source("v2"))
        assert(server:signal("HUP"))
        server:wait_log("reload waits %(.-%) v2 ok", 5)
        assert.are.equal("version v1", (ws:receive_message(5)))
        assert.are.equal("version v2", ask(ws, "version 0"))
        ws:close()
    end)

    it("lets timer callbacks and spawned functions wait", function()
        local ws = connect()
        assert(ws:send("timer"))
        local got = {}
        got[(ws:receive_message(5))] = true
        got[(ws:receive_message(5))] = true
        assert.are.same({ ["ws timer waited"] = true, ["host timer waited"] = true }, got)
        assert.are.equal("spawn returned true", ask(ws, "spawn"))
        assert.are.equal("spawn waited spawned xy,handler", (ws:receive_message(5)))
        assert.are.equal("spawned", ask(ws, "spawnboom"))
        local err = server:wait_log("app waits: error in a spawned function: ([^\n]*\n[^\n]*\n[^\n]*)", 5)
        assert.truthy(err:match("waits%.lua:%d+: boom in spawn"), err)
        assert.truthy(err:match("stack traceback"), err)
        assert.are.equal("m", ask(ws, "echo m")) -- the connection is unharmed
        ws:close()
    end)

    it("raises on misuse, naming the function and why", function()
        local ws = connect()
        local out = {}
        for line in ask(ws, "misuse"):gmatch("[^\n]+") do out[#out + 1] = line end
        assert.truthy(out[1]:match("waits%.lua:%d+: bad argument #1 to 'moonport.sleep' %(number expected, got string%)"), out[1])
        assert.truthy(out[2]:match("bad argument #1 to 'moonport.sleep' %(seconds must be"), out[2])
        assert.truthy(out[3]:match("bad argument #1 to 'moonport.sleep' %(seconds must be"), out[3])
        assert.truthy(out[4]:match("bad argument #1 to 'moonport.sleep' %(seconds must be"), out[4])
        assert.truthy(out[5]:match("bad argument #1 to 'moonport.spawn' %(function expected, got nil%)"), out[5])
        assert.truthy(out[6]:match("waits%.lua:%d+: moonport.sleep: cannot wait here %(inside a function called from C"), out[6])
        assert.truthy(out[7]:match("waits%.lua:%d+: moonport.sleep: cannot wait here %(inside a coroutine the app made%)"), out[7])
        assert.truthy(out[8]:match("waits_at_load%.lua:1: moonport.sleep: cannot wait here"), out[8])
        -- A bare coroutine.yield in a handler is an error of that handler.
        assert(ws:send("yield"))
        assert.are.equal(1011, (ws:expect_close(5)))
        server:wait_log("error in on_message: a handler yielded without waiting", 5)
    end)

    it("leaves no task, coroutine or registry ref behind after 100,000 waits", function()
        local ws = connect()
        local function heap()
            local kib, refs = ask(ws, "heap"):match("(%d+) (%d+)")
            return tonumber(kib), tonumber(refs)
        end
        -- Rounds of 10,000 sleeps and 10,000 spawned functions that wait:
        -- RSS settles over the first rounds, then must stay where it is.
        local trail = {}
        local function round()
            assert.are.equal("many done", ask(ws, "many 10000", 60))
            trail[#trail + 1] = server:rss_kib()
        end
        for _ = 1, 3 do round() end
        local kib0, refs0 = heap()
        local settled = math.max(unpack(trail))
        for _ = 1, 10 do round() end
        local kib1, refs1 = heap()
        local last = math.max(unpack(trail, 4))
        io.stderr:write(string.format("\n[wait_spec] 130,000 sleeps and 130,000 spawns: Lua heap " ..
            "%d -> %d KiB, registry %d -> %d entries, RSS after each round (KiB): %s\n",
            kib0, kib1, refs0, refs1, table.concat(trail, " ")))
        assert.is_true(refs1 <= refs0 + 2, refs0 .. " -> " .. refs1)
        assert.is_true(kib1 <= kib0 + 256, kib0 .. " -> " .. kib1)
        assert.is_true(last <= settled + 1024, settled .. " -> " .. last)
        ws:close()
    end)

    it("keeps 1,000 other connections echoing while one handler waits 2 s", function()
        local function load(tag) echo_load(server, "/waits", "wait_spec", tag) end
        load("1,000 echoing, nobody waits")
        local ws = connect()
        assert(ws:send("sleep 2 long"))
        load("1,000 echoing, one handler waits 2 s")
        assert.are.equal("woke long 0", (ws:receive_message(5)))
        ws:close()
    end)

    it("exits cleanly while handlers, on_connect and spawned functions wait", function()
        local ws = connect()
        assert(ws:send("sleep 60 forever"))
        assert(ws:send("echo queued behind it"))
        assert.are.equal("spawned", ask(connect(), "spawnlong"))
        local raw = require("socket").tcp()
        assert(raw:connect("127.0.0.1", server.port))
        assert(raw:send("GET /waits?wait=60 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n" ..
            "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n" ..
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"))
        server:wait_log("mark %d+ on_connect waits", 5)
        local status = server:stop(10)
        raw:close()
        -- Under ASan, a task, a queued event or a sleeper left behind is a
        -- leak report and a non-zero status.
        assert.are.equal(0, status, server:stderr():sub(-3000))
    end)
end)
