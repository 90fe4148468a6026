-- What an app author sees when something goes wrong, through the real
-- binary: argument errors that name the method and the app's own line (also
-- behind a tail call, "return ws:reject(...)", the README's style), an
-- on_close that never runs inside another handler's ws:send, and log lines
-- that say which app and which connection wrote them.
local testing = require "moonport.testing"

-- The line of `source` that carries the marker comment "-- @name".
local function line_of(source, name)
    local n = 0
    for line in (source .. "\n"):gmatch("([^\n]*)\n") do
        n = n + 1
        if line:find("-- @" .. name, 1, true) then
            return n
        end
    end
    error("no marker " .. name)
end

-- The code of the server's close frame, answered so the server need not
-- wait for our close.
local function closed_with(ws)
    while true do
        local f, err = ws:receive(5)
        if not f then
            return nil, err
        end
        if f.opcode == 8 then
            ws:close(f.code)
            ws:shutdown()
            return f.code
        end
    end
end

local function lit(s)
    return (s:gsub("[%^%$%(%)%%%.%[%]%*%+%-%?]", "%%%0"))
end

-- Misuse, picked by ?do=... in on_connect and by the message in on_message;
-- each bad call sits on a line marked for the spec, directly or as a tail
-- call.
local BAD = [[
local moonport = require "moonport"
local app = {}
local function refuse(ws)
  return ws:reject(99) -- @helper_tail
end
function app.on_connect(ws, req)
  local what = req.args["do"]
  if what == "accept_direct" then
    ws:accept {protocol = "notoffered"} -- @accept_direct
  elseif what == "accept_tail" then
    return ws:accept {protocol = "notoffered"} -- @accept_tail
  elseif what == "reject_direct" then
    ws:reject(200) -- @reject_direct
  elseif what == "reject_tail" then
    return ws:reject(200, "no") -- @reject_tail
  elseif what == "helper" then
    return refuse(ws)
  elseif what == "twice" then
    if req.args.x then
      return ws:reject(1) -- @twice_1
    end
    return ws:reject(2) -- @twice_2
  elseif what == "variable" then
    local status = tonumber(req.args.status)
    if req.args.x then
      return ws:reject(status) -- @variable_1
    end
    return ws:reject(status) -- @variable_2
  end
end
function app.on_message(ws, data)
  if data == "send_direct" then
    ws:send("x", "bogus") -- @send_direct
  elseif data == "send_tail" then
    return ws:send({}) -- @send_tail
  elseif data == "accept_late" then
    return ws:accept() -- @accept_late
  elseif data == "after" then
    moonport.after("soon", print) -- @after
  elseif data == "close_tail" then
    return ws:close(1005) -- @close_tail
  end
end
return app
]]

-- Floods a connection with 1 MiB messages until a send fails: its own
-- (?tag=... "self"), another one ("other TAG"), or another one from a timer
-- ("timer TAG"). Every step logs "mark SEQ what", so the spec can check the
-- order in which things ran.
local DROP = [[
local moonport = require "moonport"
local app = {}
local conns, seq = {}, 0
local function mark(what)
  seq = seq + 1
  moonport.log("info", "mark " .. seq .. " " .. what)
end
local chunk = string.rep("y", 1024 * 1024)
local function flood(target)
  local first = target:send(chunk, "binary")
  for i = 2, 100 do
    local ok, err = target:send(chunk, "binary")
    if not ok then
      return string.format("first=%s sends=%d last=%s,%s", tostring(first), i, tostring(ok),
                           tostring(err))
    end
  end
  return "never failed"
end
function app.on_connect(ws, req)
  ws.data.tag = req.args.tag
  conns[ws.data.tag] = ws
end
function app.on_message(ws, data)
  local what, tag = data:match("^(%a+) ?(.*)$")
  if what == "self" then
    mark(ws.data.tag .. " before send")
    mark(ws.data.tag .. " send returned " .. flood(ws))
    mark(ws.data.tag .. " handler end")
  elseif what == "other" then
    mark(ws.data.tag .. " sends to " .. tag)
    mark(ws.data.tag .. " send returned " .. flood(conns[tag]))
    ws:send("done")
    mark(ws.data.tag .. " handler end")
  elseif what == "timer" then
    moonport.after(0, function()
      mark("timer sends to " .. tag)
      mark("timer send returned " .. flood(conns[tag]))
      mark("timer callback end")
    end)
    ws:send("armed")
  end
end
function app.on_close(ws, code)
  local ok, err = ws:send("too late")
  mark("on_close " .. ws.data.tag .. " id=" .. ws.id .. " code=" .. code .. " send=" ..
       tostring(ok) .. "," .. tostring(err))
end
return app
]]

-- Logs from every kind of place an app's code runs.
local LOGS = [[
local moonport = require "moonport"
moonport.log("info", "loaded at module level")
local app = {}
function app.on_connect(ws) moonport.log("info", "hello from on_connect of " .. ws.id) end
function app.on_message(ws, data)
  moonport.log("info", "message " .. data .. " on " .. ws.id)
  moonport.after(0, function() moonport.log("info", "timer armed by " .. data) end)
end
function app.on_close(ws) moonport.log("info", "on_close of " .. ws.id) end
return app
]]

describe("app errors", function()
    describe("argument errors", function()
        local server
        setup(function()
            server = assert(testing.start {apps = {bad = BAD}})
        end)
        teardown(function()
            assert.are.equal(0, server:stop())
            server:cleanup()
        end)

        -- The error line the server logged for the case `name`, which must
        -- say bad.lua:LINE (LINE: the marker's) and then `message`.
        local function expect_error(name, message)
            local where = "bad.lua:" .. line_of(BAD, name) .. ": "
            local line = server:wait_log("([^\n]*" .. lit(where .. message) .. "[^\n]*)", 5)
            assert(line, "no error at " .. where .. message .. " in:\n" .. server:stderr())
            return line
        end

        local function handshake_fails(query)
            local ws, err = server:connect("/bad?do=" .. query)
            assert.is_nil(ws)
            assert.truthy(tostring(err):find("500", 1, true), tostring(err))
        end

        it("ws:accept names itself, counts its table as #1, and gives the app's line", function()
            handshake_fails("accept_direct")
            local line = expect_error("accept_direct", "bad argument #1 to 'ws:accept' " ..
                "(protocol \"notoffered\" was not offered by the client)")
            assert.truthy(line:find("error in on_connect", 1, true), line)
        end)

        it("the README's style, return ws:accept{...}, still gives the app's line", function()
            handshake_fails("accept_tail")
            expect_error("accept_tail", "bad argument #1 to 'ws:accept' " ..
                "(protocol \"notoffered\" was not offered by the client)")
        end)

        it("ws:reject, called directly and as a tail call", function()
            handshake_fails("reject_direct")
            expect_error("reject_direct",
                "bad argument #1 to 'ws:reject' (status must be from 400 to 599)")
            handshake_fails("reject_tail")
            expect_error("reject_tail",
                "bad argument #1 to 'ws:reject' (status must be from 400 to 599)")
        end)

        it("a tail call to a helper that tail-calls the method finds the helper's line",
            function()
                handshake_fails("helper")
                expect_error("helper_tail",
                    "bad argument #1 to 'ws:reject' (status must be from 400 to 599)")
            end)

        it("tail calls of the same method are told apart by their constant arguments",
            function()
                handshake_fails("twice")
                local line = expect_error("twice_2",
                    "bad argument #1 to 'ws:reject' (status must be from 400 to 599)")
                assert.is_nil(line:find("one of lines", 1, true), line)
            end)

        it("tail calls that nothing tells apart: every candidate line is named", function()
            handshake_fails("variable&status=7")
            local line = expect_error("variable_1",
                "bad argument #1 to 'ws:reject' (status must be from 400 to 599)")
            local lines = line_of(BAD, "variable_1") .. ", " .. line_of(BAD, "variable_2")
            assert.truthy(line:find("(a tail call from one of lines " .. lines .. ")", 1, true),
                line)
        end)

        it("ws:send, directly and as a tail call, from on_message", function()
            local ws = assert(server:connect("/bad"))
            ws:send("send_direct")
            assert.equal(1011, (closed_with(ws)))
            expect_error("send_direct",
                "bad argument #2 to 'ws:send' (kind must be \"text\" or \"binary\")")
            ws = assert(server:connect("/bad"))
            ws:send("send_tail")
            assert.equal(1011, (closed_with(ws)))
            expect_error("send_tail", "bad argument #1 to 'ws:send' (string expected, got table)")
        end)

        it("ws:close, and a method called outside on_connect, as tail calls", function()
            local ws = assert(server:connect("/bad"))
            ws:send("close_tail")
            assert.equal(1011, (closed_with(ws)))
            expect_error("close_tail",
                "bad argument #1 to 'ws:close' (not a close code an endpoint may send)")
            ws = assert(server:connect("/bad"))
            ws:send("accept_late")
            assert.equal(1011, (closed_with(ws)))
            expect_error("accept_late", "ws:accept can only be called in on_connect")
        end)

        it("moonport functions name themselves as moonport.after", function()
            local ws = assert(server:connect("/bad"))
            ws:send("after")
            assert.equal(1011, (closed_with(ws)))
            expect_error("after", "bad argument #1 to 'moonport.after' (number expected, got string)")
        end)

        it("no error says '?' or counts self", function()
            local err = server:stderr()
            assert.is_nil(err:find("to '?'", 1, true), err)
            assert.is_nil(err:find("#2 to 'ws:accept'", 1, true), err)
            assert.is_true(server:alive())
        end)
    end)
    describe("an on_close caused by a send", function()
        local server
        before_each(function()
            server = assert(testing.start {
                apps = {drop = DROP},
                config = [[return { apps = "apps", limits = { send_buffer = 1048576, ]] ..
                    [[max_send_buffer = 4194304 } }]],
            })
        end)
        after_each(function()
            assert.is_true(server:alive())
            assert.are.equal(0, server:stop())
            server:cleanup()
        end)

        -- The sequence number of the mark line that contains `what`.
        local function seq_of(what)
            local n = server:wait_log("mark (%d+) " .. lit(what), 5)
            assert(n, "no mark " .. what .. " in:\n" .. server:stderr())
            return tonumber(n)
        end

        local function assert_once(what)
            local _, n = server:stderr():gsub(lit(what), "")
            assert.equal(1, n, what .. " in:\n" .. server:stderr())
        end

        it("runs after the handler whose send dropped its own connection", function()
            local a = assert(server:connect("/drop?tag=A"))
            a:send("self") -- and never read: the queue grows
            local closed = seq_of("on_close A id=")
            assert.is_true(seq_of("A handler end") < closed, server:stderr())
            -- Over send_buffer, a send is queued: true. The send that passes
            -- max_send_buffer drops the connection and returns nil, "closed".
            seq_of("A send returned first=true sends=4 last=nil,closed")
            -- on_close gets the same ws (ws.data kept); its methods return
            -- nil, "closed".
            seq_of("on_close A id=")
            assert.truthy(server:wait_log("on_close A id=%d+ code=1006 send=nil,closed", 5))
            assert_once("on_close A id=")
            a:shutdown()
        end)

        it("runs after the handler that sent to another connection", function()
            local b = assert(server:connect("/drop?tag=B"))
            local a = assert(server:connect("/drop?tag=A2"))
            a:send("other B")
            assert.equal("done", (a:receive_message(5)))
            local closed = seq_of("on_close B id=")
            local sent = seq_of("A2 send returned first=true sends=4 last=nil,closed")
            local ended = seq_of("A2 handler end")
            assert.is_true(sent < ended and ended < closed, server:stderr())
            assert_once("on_close B id=")
            a:close()
            a:expect_close(5)
            a:shutdown()
            b:shutdown()
        end)

        it("runs after the timer callback that dropped the connection", function()
            local c = assert(server:connect("/drop?tag=C"))
            local a = assert(server:connect("/drop?tag=A3"))
            a:send("timer C")
            assert.equal("armed", (a:receive_message(5)))
            local closed = seq_of("on_close C id=")
            assert.is_true(seq_of("timer callback end") < closed, server:stderr())
            assert_once("on_close C id=")
            a:close()
            a:expect_close(5)
            a:shutdown()
            c:shutdown()
        end)
    end)

    describe("moonport.log", function()
        local server
        setup(function()
            server = assert(testing.start {apps = {logs = LOGS}})
        end)
        teardown(function()
            assert.are.equal(0, server:stop())
            server:cleanup()
        end)

        local function logged(line)
            local found = server:wait_log(lit(line), 5)
            assert(found, "no line " .. line .. " in:\n" .. server:stderr())
        end

        it("names the app, and the connection when a handler of one logs", function()
            logged("app logs: loaded at module level")
            local ws = assert(server:connect("/logs"))
            local id = server:wait_log("hello from on_connect of (%d+)", 5)
            assert(id, server:stderr())
            logged("app logs conn " .. id .. ": hello from on_connect of " .. id)
            ws:send("m1")
            logged("app logs conn " .. id .. ": message m1 on " .. id)
            ws:close()
            logged("app logs conn " .. id .. ": on_close of " .. id)
        end)

        it("a timer's lines name the app that armed it, and no connection", function()
            local ws = assert(server:connect("/logs"))
            ws:send("m2")
            logged("app logs: timer armed by m2")
            ws:close()
        end)

        it("on_reload's lines name the app", function()
            -- The new version: the same handlers, and on_reload.
            server:write_app("logs", (LOGS:gsub("return app\n$",
                "function app.on_reload() moonport.log('info', 'reloaded') end\nreturn app\n")))
            logged("app logs: reloaded")
            assert.is_nil(server:stderr():find("%f[%w]app: "), server:stderr())
        end)
    end)
end)
