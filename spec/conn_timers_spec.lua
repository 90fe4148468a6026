-- ws:after and ws:every through the real binary: timers that belong to a
-- connection. They call fn(ws, timer), return the same kind of timer as
-- moonport.after/every (timer:cancel()), log as the connection's app and
-- name the connection, keep an `every` going after an error, and end with
-- the connection: no callback runs once the server has sent its close
-- frame, nor once on_close has started, however the connection ends. On a
-- closed connection they return nil, "closed"; misuse raises, naming
-- 'ws:after' or 'ws:every'. They survive a reload of the app, running the
-- function they were given.
local testing = require "moonport.testing"

-- Every step of interest logs "mark SEQ ...", so the spec can order them.
local function app_source(version)
    return [[
local moonport = require "moonport"
local VERSION = "]] .. version .. [["
local app = {}
-- One count for every version of the app: marks stay in order across a reload.
local function mark(...)
  _G.timers_spec_seq = (_G.timers_spec_seq or 0) + 1
  moonport.log("info", "mark", _G.timers_spec_seq, ...)
end
local closed_ws = {}
local cmds = {}
function cmds.after(ws, s)
  local timer
  timer = ws:after(tonumber(s), function(w, t)
    mark("after fired", w.id, "same ws", tostring(w == ws), "same timer", tostring(t == timer))
    w:send("after fired")
  end)
  -- Nothing but the server holds the timer: a full collection must not stop it.
  collectgarbage("collect")
  local host = moonport.after(3600, function() end)
  ws:send("armed " .. type(timer) .. " " .. tostring(getmetatable(timer) == getmetatable(host)))
  host:cancel()
end
function cmds.every(ws, arg)
  local s, n = arg:match("(%S+) (%S+)")
  local k = 0
  ws.data.ticker = ws:every(tonumber(s), function(w, t)
    k = k + 1
    w:send("tick " .. k)
    if k == tonumber(n) then w:send("self cancel " .. tostring(t:cancel())) end
  end)
  ws:send("armed")
end
function cmds.cancel(ws)
  ws:send("cancelled " .. tostring(ws.data.ticker:cancel()) .. " " ..
          tostring(ws.data.ticker:cancel()))
end
function cmds.tick(ws, s)
  ws:every(tonumber(s), function(w) mark("tick " .. VERSION, w.id) end)
  ws:send("armed")
end
function cmds.close(ws)
  mark("closing", ws.id)
  ws:close(4000, "bye")
end
function cmds.log(ws)
  ws:after(0, function() moonport.log("info", "hello from a ws timer") end)
  moonport.after(0, function() moonport.log("info", "hello from a host timer") end)
  ws:send("armed")
end
function cmds.boom(ws)
  ws:after(0, function() error("boom in ws timer") end)
  ws:send("armed")
end
function cmds.everyboom(ws)
  local k = 0
  ws:every(0.02, function(w, t)
    k = k + 1
    if k == 1 then error("boom in ws every") end
    w:send("tick " .. k)
    if k == 3 then t:cancel() end
  end)
  ws:send("armed")
end
function cmds.misuse(ws)
  local out = {}
  local function try(f, ...)
    local ok, err = pcall(f, ...)
    out[#out + 1] = ok and "no error" or tostring(err)
  end
  local f = function() end
  try(ws.after, ws, "soon", f)
  try(ws.every, ws, 0, f)
  try(ws.after, ws, -1, f)
  try(ws.every, ws, 1)
  try(ws.after, nil, 1, f)
  try(ws.every, ws, 0 / 0, f)
  ws:send(table.concat(out, "\n"))
end
function cmds.stale(ws, id)
  local old = closed_ws[tonumber(id)]
  local t1, e1 = old:after(0, function() mark("stale timer ran") end)
  local t2, e2 = old:every(0.01, function() mark("stale timer ran") end)
  ws:send(string.format("stale %s %s %s %s", tostring(t1), tostring(e1), tostring(t2),
                        tostring(e2)))
end
function cmds.many(ws, n)
  for _ = 1, tonumber(n) do ws:after(0, function() end) end
  ws:after(0.01, function(w) w:send("many done") end)
end
function cmds.mem(ws)
  collectgarbage("collect")
  collectgarbage("collect")
  ws:send(string.format("%d", collectgarbage("count")))
end
function cmds.version(ws) ws:send(VERSION) end
function app.on_connect(ws, req)
  if req.args.reject then
    ws:after(0, function() mark("rejected connection's timer ran") end)
    ws:every(0.01, function() mark("rejected connection's timer ran") end)
    return ws:reject(403)
  end
  if req.args.early then
    ws:after(0, function(w) w:send("early timer") end)
  end
end
function app.on_message(ws, data)
  local name, arg = data:match("^(%S+) ?(.*)$")
  cmds[name](ws, arg)
end
function app.on_close(ws, code)
  closed_ws[ws.id] = ws
  local t, err = ws:after(0, function() mark("timer made in on_close ran") end)
  mark("on_close", ws.id, code, "after gives", tostring(t), tostring(err))
end
return app
]]
end

local function ask(ws, msg)
    assert(ws:send(msg))
    local data, err = ws:receive_message(5)
    assert(data, "no answer to " .. msg .. ": " .. tostring(err))
    return data
end

-- The marks in the log: { seq = n, text = "..." } in order.
local function marks(server)
    local list = {}
    for seq, text in server:stderr():gmatch("mark (%d+) ([^\n]*)") do
        list[#list + 1] = { seq = tonumber(seq), text = text }
    end
    return list
end

local function id_of(server, n)
    local ids = {}
    for id in server:stdout():gmatch('"WSCONNECT /timers" id=(%d+)') do
        ids[#ids + 1] = id
    end
    return ids[n]
end

describe("ws:after and ws:every", function()
    local server, connected = nil, 0

    setup(function()
        server = assert(testing.start { apps = { timers = app_source("v1") } })
    end)
    teardown(function() server:cleanup() end)

    -- A connection and its id.
    local function connect(query)
        local ws = assert(server:connect("/timers" .. (query or "")))
        connected = connected + 1
        local id = assert(id_of(server, connected))
        return ws, id
    end

    local function bye(ws)
        ws:close(1000)
        ws:expect_close(5)
    end

    it("after(s, fn) calls fn(ws, timer) once; the timer is a moonport timer", function()
        local ws, id = connect()
        assert.are.equal("armed userdata true", ask(ws, "after 0.05"))
        assert.are.equal("after fired", (ws:receive_message(5)))
        local fired = server:wait_log("mark %d+ (after fired " .. id .. " [^\n]*)", 5)
        assert.are.equal("after fired " .. id .. " same ws true same timer true", fired)
        local again, err = ws:receive_message(0.3)
        assert.is_nil(again, "fired again: " .. tostring(again))
        assert.are.equal("timeout", err)
        bye(ws)
    end)

    it("every(s, fn) repeats until cancelled, from inside or outside", function()
        local ws = connect()
        assert.are.equal("armed", ask(ws, "every 0.02 3"))
        assert.are.equal("tick 1", (ws:receive_message(5)))
        assert.are.equal("tick 2", (ws:receive_message(5)))
        assert.are.equal("tick 3", (ws:receive_message(5)))
        assert.are.equal("self cancel true", (ws:receive_message(5)))
        local again, err = ws:receive_message(0.2)
        assert.is_nil(again, "still ticking: " .. tostring(again))
        assert.are.equal("timeout", err)
        -- Cancelled from a handler: true while armed, false after.
        assert.are.equal("armed", ask(ws, "every 0.02 1000"))
        assert.are.equal("tick 1", (ws:receive_message(5)))
        assert(ws:send("cancel"))
        local msg
        repeat
            msg = assert(ws:receive_message(5))
        until not msg:match("^tick ")
        assert.are.equal("cancelled true false", msg)
        again, err = ws:receive_message(0.2)
        assert.is_nil(again, "still ticking: " .. tostring(again))
        assert.are.equal("timeout", err)
        bye(ws)
    end)

    it("logs from a callback name the app and the connection", function()
        local ws, id = connect()
        assert.are.equal("armed", ask(ws, "log"))
        assert(server:wait_log("app timers conn " .. id .. ": hello from a ws timer", 5),
               server:stderr())
        -- A host timer armed by the same handler names no connection.
        assert(server:wait_log("app timers: hello from a host timer", 5), server:stderr())
        bye(ws)
    end)

    it("logs an error with its traceback, like other timer errors; the connection stays", function()
        local ws, id = connect()
        assert.are.equal("armed", ask(ws, "boom"))
        local line = server:wait_log("[^\n]*boom in ws timer[^\n]*", 5)
        assert(line, server:stderr())
        assert.truthy(line:find("app timers conn " .. id .. ": error in a timer callback: ", 1,
                                true), line)
        assert.truthy(line:find("timers.lua:%d+: boom in ws timer"), line)
        local err = server:stderr()
        assert.truthy(err:find("stack traceback", err:find("boom in ws timer", 1, true), true))
        assert.are.equal("armed", ask(ws, "every 0.02 1"))
        assert.are.equal("tick 1", (ws:receive_message(5)))
        bye(ws)
    end)

    it("an every timer keeps running after its callback raised", function()
        local ws = connect()
        assert.are.equal("armed", ask(ws, "everyboom"))
        assert.are.equal("tick 2", (ws:receive_message(5)))
        assert.are.equal("tick 3", (ws:receive_message(5)))
        assert(server:wait_log("error in a timer callback: [^\n]*boom in ws every", 5))
        bye(ws)
    end)

    it("raises on misuse, naming ws:after or ws:every and the app's line", function()
        local ws = connect()
        local errs = {}
        for line in (ask(ws, "misuse") .. "\n"):gmatch("([^\n]*)\n") do
            errs[#errs + 1] = line
        end
        local want = {
            "bad argument #1 to 'ws:after' (number expected, got string)",
            "bad argument #1 to 'ws:every' (an every() interval must be more than 0)",
            "bad argument #1 to 'ws:after' (seconds must be 0 or more)",
            "bad argument #2 to 'ws:every' (function expected, got no value)",
            "calling 'ws:after' on bad self (ws expected, got nil; call it as ws:after(...))",
            "bad argument #1 to 'ws:every' (seconds must be 0 or more)", -- NaN
        }
        assert.are.equal(#want, #errs, table.concat(errs, "\n"))
        for i, w in ipairs(want) do
            assert.truthy(errs[i]:find("timers.lua:%d+: "), errs[i])
            assert.truthy(errs[i]:find(w, 1, true), errs[i] .. "\nwanted: " .. w)
        end
        bye(ws)
    end)

    -- The cases that end a connection while an every timer ticks every 5 ms.
    local function no_tick_after(how)
        local ws, id = connect()
        assert.are.equal("armed", ask(ws, "tick 0.005"))
        assert(server:wait_log("mark %d+ tick v1 " .. id .. "\n.-mark %d+ tick v1 " .. id ..
                               "\n.-mark %d+ tick v1 " .. id .. "\n", 5), "fewer than 3 ticks")
        local code = how(ws)
        assert(server:wait_log("mark %d+ on_close " .. id .. " " .. code, 5), server:stderr())
        -- Give a wrong tick the time to show.
        testing.sleep(0.2)
        local closing, closed, last_tick
        for _, m in ipairs(marks(server)) do
            if m.text == "closing " .. id then closing = m.seq end
            if m.text:find("^on_close " .. id .. " ") then closed = m.seq end
            if m.text == "tick v1 " .. id then last_tick = m.seq end
        end
        assert.is_true(last_tick < closed, "a tick after on_close:\n" .. server:stderr())
        if closing then
            assert.is_true(last_tick < closing, "a tick after the close frame went out")
        end
        -- on_close itself cannot arm one.
        local line = server:stderr():match("mark %d+ on_close " .. id .. " [^\n]*")
        assert.truthy(line:find("after gives nil closed", 1, true), line)
        assert.is_nil(server:stderr():find("timer made in on_close ran", 1, true))
        return id
    end

    it("are cancelled when the client closes: no callback after on_close has started", function()
        no_tick_after(function(ws)
            ws:close(1000)
            ws:expect_close(5)
            return 1000
        end)
    end)

    it("stop when the server closes: none runs after its close frame", function()
        no_tick_after(function(ws)
            assert(ws:send("close"))
            local f
            repeat
                f = assert(ws:receive(5))
            until f.opcode == 8
            assert.are.equal(4000, f.code)
            ws:close(4000)
            ws:shutdown()
            return 4000
        end)
    end)

    it("are cancelled when the TCP connection just ends", function()
        local id = no_tick_after(function(ws)
            ws:shutdown()
            return 1006
        end)
        -- The ws object outlives its connection: its timers say "closed".
        local ws = connect()
        assert.are.equal("stale nil closed nil closed", ask(ws, "stale " .. id))
        testing.sleep(0.1)
        assert.is_nil(server:stderr():find("stale timer ran", 1, true))
        bye(ws)
    end)

    it("made in on_connect fire after the 101, and never for a rejected handshake", function()
        local ws = connect("?early=1")
        assert.are.equal("early timer", (ws:receive_message(5)))
        bye(ws)
        local rejected, err = server:connect("/timers?reject=1")
        assert.is_nil(rejected)
        assert.truthy(tostring(err):find("403"), tostring(err))
        -- The rejected connection's timers would have run at once (0 s), and
        -- its every timer each 10 ms.
        local probe = connect()
        assert.are.equal("armed", ask(probe, "every 0.02 3"))
        for k = 1, 3 do assert.are.equal("tick " .. k, (probe:receive_message(5))) end
        testing.sleep(0.1)
        assert.is_nil(server:stderr():find("rejected connection's timer ran", 1, true),
                      server:stderr())
        bye(probe)
    end)

    it("let go of timers that fired: many of them leave Lua memory flat", function()
        local ws = connect()
        local mem = {}
        for round = 1, 4 do
            assert(ws:send("many 20000"))
            assert.are.equal("many done", (ws:receive_message(10)))
            mem[round] = tonumber(ask(ws, "mem"))
        end
        -- 20,000 timers held would be megabytes; a set that lets go of them
        -- stays at the size its first round left.
        assert.is_true(mem[4] - mem[2] < 256, "Lua heap " .. table.concat(mem, ", ") .. " KiB")
        bye(ws)
    end)

    it("survive a reload of the app and run the function they were given", function()
        local ws, id = connect()
        assert.are.equal("armed", ask(ws, "tick 0.01"))
        assert(server:wait_log("mark %d+ tick v1 " .. id, 5))
        server:write_app("timers", app_source("v2"))
        assert(server:wait_log("reload timers %([^)]*%) v2 ok", 5), server:stderr())
        -- The connection's next event runs the new code...
        assert.are.equal("v2", ask(ws, "version"))
        -- ...and its timer, the old function: v1 ticks go on after the reload.
        local function v1_ticks()
            return testing.count(server:stderr(), "tick v1 " .. id .. "\n")
        end
        local before = v1_ticks()
        local deadline = os.time() + 5
        while v1_ticks() <= before + 2 and os.time() < deadline do testing.sleep(0.02) end
        assert.is_true(v1_ticks() > before + 2, "the timer stopped at the reload")
        -- A timer made now runs v2's function.
        assert.are.equal("armed", ask(ws, "tick 0.01"))
        assert(server:wait_log("mark %d+ tick v2 " .. id, 5))
        bye(ws)
        assert(server:wait_log("mark %d+ on_close " .. id, 5))
        testing.sleep(0.1)
        local closed = tonumber(server:stderr():match("mark (%d+) on_close " .. id .. " "))
        for _, m in ipairs(marks(server)) do
            if m.text:find("^tick v%d " .. id .. "$") then
                assert.is_true(m.seq < closed, "a tick after on_close")
            end
        end
    end)

    it("still serves", function()
        local ws = connect()
        assert.are.equal("v2", ask(ws, "version"))
        bye(ws)
        assert.is_true(server:alive())
    end)
end)
