-- The app API contract (README "Writing an app"), against the real server:
-- what an app is handed (req, ws), what its handlers' choices do to the
-- wire, how its errors are contained, and the moonport module. Each case
-- talks to small purpose-built apps through real sockets, and the server
-- must still serve afterwards.
local testing = require "moonport.testing"
local socket = require "socket"

local APPS = {}

-- Sends back, in on_connect, everything it was handed as Lua source the
-- spec can load: the req table, whether ws.request is that same table, and
-- ws.id.
APPS.reqinfo = [[
local app = {}
local function ser(v)
    local t = type(v)
    if t == "string" then
        return string.format("%q", v)
    elseif t == "number" or t == "boolean" then
        return tostring(v)
    elseif t == "table" then
        local parts = {}
        for k, x in pairs(v) do
            parts[#parts + 1] = "[" .. ser(k) .. "]=" .. ser(x)
        end
        return "{" .. table.concat(parts, ",") .. "}"
    end
    return string.format("%q", "<" .. t .. ">")
end
function app.on_connect(ws, req)
    ws:send(ser {req = req, same = rawequal(ws.request, req), id = ws.id}, "binary")
end
return app
]]

-- The handshake decisions, picked by ?do=..., tagged by ?tag=... so the
-- spec can find each connection's on_close line in the log.
APPS.gate = [[
local moonport = require "moonport"
local app = {}
function app.on_connect(ws, req)
    ws.data.tag = req.args.tag or "-"
    local what = req.args["do"]
    if what == "reject" then
        ws:reject(451, "go away\n", {["X-Reason"] = "testing"})
    elseif what == "reject_default" then
        ws:reject()
    elseif what == "close" then
        ws:close()
    elseif what == "accept" then
        ws:accept {protocol = "chat.v2", headers = {["X-Hello"] = "1"}}
    elseif what == "raise" then
        error("gate exploded")
    elseif what == "send" then
        ws:send("hello from on_connect")
        ws:send("and again")
    end
end
function app.on_message(ws, data, kind)
    ws:send(data, kind)
end
function app.on_close(ws, code, reason)
    moonport.log("info", "gate on_close tag=" .. ws.data.tag .. " code=" .. tostring(code) ..
        " reason=" .. tostring(reason) .. ";")
end
return app
]]

-- Every message comes back as binary "KIND:DATA": what on_message got.
APPS.kinds = [[
return {
    on_message = function(ws, data, kind)
        ws:send(tostring(kind) .. ":" .. data, "binary")
    end,
}
]]

-- Commands ("name arg") that exercise the ws object from on_message.
-- ?park=NAME keeps the connection in a module table after it ends.
APPS.cmd = [[
local moonport = require "moonport"
local app = {}
local parked = {}
local cmds = {}

local function results(...)
    local out = {}
    for i = 1, select("#", ...) do
        out[#out + 1] = tostring((select(i, ...)))
    end
    return table.concat(out, ",")
end

function cmds.id(ws) ws:send(type(ws.id) .. " " .. tostring(ws.id)) end
function cmds.count(ws)
    ws.data.n = (ws.data.n or 0) + 1
    ws:send(tostring(ws.data.n))
end
function cmds.setfoo(ws)
    local ok, err = pcall(function() ws.foo = 1 end)
    ws:send((ok and "no error" or "raised: " .. tostring(err)) .. " foo=" .. tostring(ws.foo))
end
function cmds.bogus(ws) ws:send("x", "bogus") end
function cmds.badutf8(ws)
    local ok, a, b = pcall(ws.send, ws, "\255\254", "text")
    if ok then
        ws:send("returned " .. results(a, b))
    else
        ws:send("raised: " .. tostring(a))
    end
end
function cmds.binutf8(ws) ws:send("\255\254", "binary") end
function cmds.raise(ws) error("boom in on_message") end
function cmds.ping(ws, arg) ws:ping(arg) end
function cmds.close(ws) ws:close(4000, "done") end
function cmds.closesend(ws)
    ws:close(4000, "done")
    moonport.log("info", "cmd send after own close: " .. results(ws:send("too late")))
end
function cmds.echo(ws, arg) ws:send(arg) end
function cmds.poke(ws, name)
    local p = parked[name]
    if not p then return ws:send("nothing parked as " .. name) end
    ws:send("send=" .. results(p:send("late")))
end
function cmds.pokeall(ws, name)
    local p = parked[name]
    if not p then return ws:send("nothing parked as " .. name) end
    ws:send("ping=" .. results(p:ping("x")) .. " close=" .. results(p:close(1000)))
end

function app.on_connect(ws, req)
    ws.data.tag = req.args.tag or ("#" .. tostring(ws.id))
    if req.args.park then parked[req.args.park] = ws end
end
function app.on_message(ws, data)
    local name, arg = data:match("^(%S+) ?(.*)$")
    local f = cmds[name or ""]
    if not f then return ws:send("unknown command " .. data) end
    f(ws, arg)
end
function app.on_close(ws, code, reason)
    moonport.log("info", "cmd on_close tag=" .. ws.data.tag .. " code=" .. tostring(code) ..
        " reason=" .. tostring(reason) .. ";")
end
return app
]]

-- No on_connect, so nothing reads the request while the connection lasts:
-- "park" keeps the ws object, "later" reads the parked one's ws.request
-- after that connection has ended.
APPS.late = [[
local moonport = require "moonport"
local parked
return {
    on_message = function(ws, data)
        if data == "park" then
            parked = ws
            ws:send("parked")
        elseif data == "later" then
            local r = parked.request
            ws:send(table.concat({r.path, r.query, r.args.x, r.headers["x-late"],
                r.headers.upgrade, r.client.host, tostring(r.client.port),
                tostring(r.server.port), tostring(rawequal(r, parked.request))}, " "))
        end
    end,
    on_close = function(ws) moonport.log("info", "late on_close " .. tostring(ws.id)) end,
}
]]

APPS.badclose = [[
return {
    on_message = function(ws, data) ws:send(data) end,
    on_close = function() error("boom in on_close") end,
}
]]

-- Two apps, one global name: each file has its own globals.
APPS.glob_a = [[
shared = "a"
local app = {}
function app.on_connect(ws) ws:send("shared=" .. tostring(shared)) end
function app.on_message(ws, data)
    shared_later = data
    ws:send("shared_later=" .. tostring(shared_later))
end
return app
]]

APPS.glob_b = [[
local app = {}
function app.on_connect(ws)
    ws:send("shared=" .. tostring(shared) .. " shared_later=" .. tostring(shared_later))
end
return app
]]

-- require "moonport": log, now, after, every, and a timer that raises.
APPS.host = [[
local moonport = require "moonport"
local app = {}
local cmds = {}
function cmds.log(ws, arg)
    moonport.log("info", "host-log:", arg, 42, true)
    ws:send("logged")
end
function cmds.now(ws) ws:send(string.format("%.6f", moonport.now())) end
function cmds.after(ws)
    local t0 = moonport.now()
    moonport.after(0.1, function()
        ws:send(string.format("after %.3f", moonport.now() - t0))
    end)
    -- Nothing holds the timer: a full collection must not stop it.
    collectgarbage("collect")
    ws:send("armed")
end
function cmds.every(ws)
    local n = 0
    ws.data.ticker = moonport.every(0.05, function()
        n = n + 1
        ws:send("tick " .. n)
    end)
    ws:send("armed")
end
function cmds.cancel(ws) ws:send("cancelled " .. tostring(ws.data.ticker:cancel())) end
function cmds.boom(ws)
    moonport.after(0.01, function() error("boom in timer") end)
    ws:send("armed")
end
function cmds.everyboom(ws)
    local n = 0
    moonport.every(0.03, function(timer)
        n = n + 1
        if n == 1 then error("boom in every") end
        ws:send("tick " .. n)
        if n == 3 then timer:cancel() end
    end)
    ws:send("armed")
end
function cmds.echo(ws, arg) ws:send(arg) end
function app.on_message(ws, data)
    local name, arg = data:match("^(%S+) ?(.*)$")
    cmds[name](ws, arg)
end
return app
]]

-- The same reqinfo file also serves a route with a capture.
local CONFIG = [[
return { routes = { ["/rooms/:room"] = "apps/reqinfo.lua" } }
]]

local function plain_count(haystack, needle)
    local n, init = 0, 1
    while true do
        local s, e = haystack:find(needle, init, true)
        if not s then
            return n
        end
        n, init = n + 1, e + 1
    end
end

-- A raw upgrade request for path with extra header lines, in order, as
-- given: { {name, value}, ... }.
local function upgrade_request(server, path, extra)
    local lines = {
        "GET " .. path .. " HTTP/1.1",
        "Host: 127.0.0.1:" .. server.port,
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
    }
    for _, h in ipairs(extra) do
        lines[#lines + 1] = h[1] .. ": " .. h[2]
    end
    return table.concat(lines, "\r\n") .. "\r\n\r\n"
end

describe("app API", function()
    -- Each block gets its own server (the errors block one per case), so a
    -- server that dies in one block cannot fail the cases of another.
    local server

    local function start_server()
        local err, stderr
        server, err, stderr = testing.start {apps = APPS, config = CONFIG}
        assert(server, tostring(err) .. "\n" .. tostring(stderr))
    end

    local function stop_server()
        if server then
            server:cleanup()
            server = nil
        end
    end

    local function server_per_block()
        setup(start_server)
        teardown(stop_server)
    end

    local function connect(path, opts)
        local ws, response, err_response = server:connect(path, opts)
        assert(ws, "connecting to " .. path .. ": " .. tostring(response) .. "\n" ..
            tostring(err_response and err_response.raw))
        return ws, response
    end

    -- A handshake the spec expects to be refused: the HTTP response.
    local function refused(path, opts)
        local ws, err, response = server:connect(path, opts)
        assert.is_nil(ws, path .. " was accepted")
        assert(response, "no HTTP answer for " .. path .. ": " .. tostring(err))
        return response
    end

    local function recv(ws, timeout)
        local data, kind, code, reason = ws:receive_message(timeout or 5)
        assert(data, "expected a message, got " .. tostring(kind) .. " " .. tostring(code) ..
            " " .. tostring(reason))
        return data, kind
    end

    local function ask(ws, text)
        assert(ws:send(text))
        return recv(ws)
    end

    -- Ends with the closing handshake, so the server's on_close sees 1000.
    local function bye(ws)
        ws:close(1000)
        ws:expect_close(2)
        ws:shutdown()
    end

    -- Reads up to the server's close frame, answers it as a client must,
    -- and returns the code, the reason, and whether the server then closed
    -- TCP.
    local function closed_by_server(ws, timeout)
        local deadline = socket.gettime() + (timeout or 5)
        while true do
            local f, err = ws:receive(math.max(0, deadline - socket.gettime()))
            if not f then
                ws:shutdown()
                return nil, err
            end
            if f.opcode == 8 then
                ws:close(f.code)
                local tcp_closed = ws:is_closed(math.max(0.5, deadline - socket.gettime()))
                ws:shutdown()
                return f.code, f.reason, tcp_closed
            end
        end
    end

    local function assert_serves()
        assert.is_true(server:alive(), "the server died")
        local ws = connect("/kinds")
        assert.equal("text:still there?", ask(ws, "still there?"))
        bye(ws)
    end

    local function reqinfo(path, opts)
        local ws = connect(path, opts)
        local src = recv(ws)
        ws:shutdown()
        local chunk = assert(load("return " .. src, "reqinfo", "t", {}))
        return chunk()
    end

    describe("req in on_connect", function()
        server_per_block()

        it("has method, path and the raw query", function()
            local info = reqinfo("/reqinfo?a=1&b=x%20y&c=+")
            assert.equal("GET", info.req.method)
            assert.equal("/reqinfo", info.req.path)
            assert.equal("a=1&b=x%20y&c=+", info.req.query)
        end)

        it("has args decoded: ?a=1&b=x%20y&c=+ gives a=\"1\", b=\"x y\", c=\" \"", function()
            local info = reqinfo("/reqinfo?a=1&b=x%20y&c=+")
            assert.same({a = "1", b = "x y", c = " "}, info.req.args)
        end)

        it("has args: a key without '=' is true, a repeated key keeps the last value", function()
            local info = reqinfo("/reqinfo?flag&k=1&k=2")
            assert.same({flag = true, k = "2"}, info.req.args)
        end)

        it("has query \"\" and empty args without a query string", function()
            local info = reqinfo("/reqinfo")
            assert.equal("", info.req.query)
            assert.same({}, info.req.args)
        end)

        it("has params from the route's captures: /rooms/:room on /rooms/blue gives room=\"blue\"",
            function()
                local info = reqinfo("/rooms/blue")
                assert.same({room = "blue"}, info.req.params)
                assert.equal("/rooms/blue", info.req.path)
            end)

        it("has params percent-decoded: /rooms/blue%20sky gives room=\"blue sky\"", function()
            assert.same({room = "blue sky"}, reqinfo("/rooms/blue%20sky").req.params)
        end)

        it("has lowercase header names, repeated headers joined with \", \"", function()
            -- A raw request: every header line goes out exactly as written.
            local info = reqinfo("/reqinfo", {raw = upgrade_request(server, "/reqinfo", {
                {"X-Mixed-Case", "Value"},
                {"X-Multi", "a"},
                {"X-Multi", "b"},
                {"x-multi", "c"},
            })})
            local h = info.req.headers
            assert.equal("Value", h["x-mixed-case"])
            assert.is_nil(h["X-Mixed-Case"])
            assert.equal("a, b, c", h["x-multi"])
            assert.equal("websocket", h.upgrade)
            assert.equal("13", h["sec-websocket-version"])
            -- the handshake's one-time nonce is answered, not kept
            assert.is_nil(h["sec-websocket-key"])
        end)

        it("hides a header whose name has '_' (X_Forwarded_For) but shows X-Forwarded-For",
            function()
                local info = reqinfo("/reqinfo", {raw = upgrade_request(server, "/reqinfo", {
                    {"X_Forwarded_For", "6.6.6.6"},
                    {"X-Forwarded-For", "10.0.0.1"},
                })})
                local h = info.req.headers
                assert.equal("10.0.0.1", h["x-forwarded-for"])
                assert.is_nil(h["x_forwarded_for"])
                for name, value in pairs(h) do
                    assert.is_nil(name:find("_", 1, true), "header " .. name .. " reached the app")
                    assert.is_nil(value:find("6.6.6.6", 1, true),
                        "the underscore header's value reached the app as " .. name)
                end
            end)

        it("has client and server as {host, port} with numeric ports matching the socket",
            function()
                local ws = connect("/reqinfo")
                local _, local_port = ws.conn.sock:getsockname()
                local src = recv(ws)
                ws:shutdown()
                local info = assert(load("return " .. src, "reqinfo", "t", {}))()
                assert.same({host = "127.0.0.1", port = server.port}, info.req.server)
                assert.same({host = "127.0.0.1", port = tonumber(local_port)}, info.req.client)
                assert.equal("number", type(info.req.client.port))
                assert.equal("number", type(info.req.server.port))
            end)

        it("has scheme \"ws\"", function()
            assert.equal("ws", reqinfo("/reqinfo").req.scheme)
        end)

        it("has subprotocols in the order the client offered them", function()
            local info = reqinfo("/reqinfo", {protocols = {"zeta.v1", "alpha.v2", "chat"}})
            assert.same({"zeta.v1", "alpha.v2", "chat"}, info.req.subprotocols)
        end)

        it("has subprotocols {} when none is offered", function()
            assert.same({}, reqinfo("/reqinfo").req.subprotocols)
        end)

        it("is the same table as ws.request", function()
            assert.is_true(reqinfo("/reqinfo").same)
        end)

        it("still serves after these cases", function()
            assert_serves()
        end)
    end)

    describe("on_connect", function()
        server_per_block()

        it("accepts when it returns normally", function()
            local ws, response = connect("/gate?tag=plain")
            assert.equal(101, response.status)
            assert.equal("hello", ask(ws, "hello"))
            bye(ws)
        end)

        it("ws:reject(451, body, headers) answers 451 with that body and header, no upgrade",
            function()
                local r = refused("/gate?do=reject&tag=rej451")
                assert.equal(451, r.status)
                assert.truthy(r.raw:match("^HTTP/1%.1 451 "), r.raw)
                assert.equal("go away\n", r.body)
                assert.equal("testing", r.headers["x-reason"])
                assert.is_nil(r.headers.upgrade)
                assert.is_nil(r.headers["sec-websocket-accept"])
                assert_serves()
            end)

        it("ws:reject() answers 403 by default", function()
            local r = refused("/gate?do=reject_default&tag=rej403")
            assert.equal(403, r.status)
            assert.is_nil(r.headers["sec-websocket-accept"])
        end)

        it("ws:close() in on_connect rejects with 403", function()
            local r = refused("/gate?do=close&tag=closed403")
            assert.equal(403, r.status)
            assert.is_nil(r.headers["sec-websocket-accept"])
        end)

        it("ws:accept{protocol, headers} answers 101 with Sec-WebSocket-Protocol and X-Hello",
            function()
                local ws, response = connect("/gate?do=accept&tag=acc",
                    {protocols = {"chat.v1", "chat.v2"}})
                assert.equal(101, response.status)
                assert.equal("chat.v2", response.headers["sec-websocket-protocol"])
                assert.equal("1", response.headers["x-hello"])
                assert.equal("ok", ask(ws, "ok"))
                bye(ws)
            end)

        it("sends no Sec-WebSocket-Protocol when the app picks none", function()
            local ws, response = connect("/gate?tag=noproto", {protocols = {"chat.v1"}})
            assert.is_nil(response.headers["sec-websocket-protocol"])
            bye(ws)
        end)

        it("answers 500 when the app accepts a protocol the client did not offer", function()
            local r = refused("/gate?do=accept&tag=unoffered", {protocols = {"chat.v1"}})
            assert.equal(500, r.status)
            assert_serves()
        end)

        it("answers 500 to an error raised in on_connect, and logs it with a traceback",
            function()
                local r = refused("/gate?do=raise&tag=raised")
                assert.equal(500, r.status)
                local err = server:stderr()
                local at = err:find("gate exploded", 1, true)
                assert(at, "the error is not in stderr:\n" .. err)
                assert.truthy(err:find("stack traceback", at, true),
                    "no traceback after the error:\n" .. err)
                assert_serves()
            end)

        it("delivers ws:send made in on_connect right after the 101, in order", function()
            local ws, response = connect("/gate?do=send&tag=early")
            assert.equal(101, response.status)
            local first = ws:receive(5)
            assert(first, "nothing after the 101")
            assert.equal(1, first.opcode)
            assert.equal("hello from on_connect", first.payload)
            assert.equal("and again", recv(ws))
            bye(ws)
        end)

        it("still serves after these cases", function()
            assert_serves()
        end)
    end)

    describe("on_message", function()
        server_per_block()

        it("gets (ws, data, \"text\") for a text message", function()
            local ws = connect("/kinds")
            local data, kind = ask(ws, "héllo")
            assert.equal("text:héllo", data)
            assert.equal("binary", kind)
            bye(ws)
        end)

        it("gets (ws, data, \"binary\") for a binary message, bytes unchanged", function()
            local ws = connect("/kinds")
            local payload = "\0\1\2\255\254 bin"
            assert(ws:send(payload, "binary"))
            assert.equal("binary:" .. payload, recv(ws))
            bye(ws)
        end)

        it("gets a fragmented text message whole, in one call", function()
            local ws = connect("/kinds")
            assert(ws:send_frame {opcode = "text", fin = false, payload = "Hel"})
            assert(ws:send_frame {opcode = "continuation", fin = false, payload = "lo, "})
            assert(ws:ping("between fragments"))
            assert(ws:send_frame {opcode = "continuation", fin = true, payload = "world"})
            assert.equal("text:Hello, world", recv(ws))
            bye(ws)
        end)

        it("gets a fragmented binary message whole, in one call", function()
            local ws = connect("/kinds")
            assert(ws:send_frame {opcode = "binary", fin = false, payload = "\0\1"})
            assert(ws:send_frame {opcode = "continuation", fin = false, payload = ""})
            assert(ws:send_frame {opcode = "continuation", fin = true, payload = "\2\3"})
            assert.equal("binary:\0\1\2\3", recv(ws))
            bye(ws)
        end)

        it("still serves after these cases", function()
            assert_serves()
        end)
    end)

    describe("on_close", function()
        server_per_block()

        it("is called once with the peer's code and reason (4001 \"bye\")", function()
            local ws = connect("/gate?tag=once")
            assert(ws:close(4001, "bye"))
            local code = ws:expect_close(5)
            assert.equal(4001, code)
            ws:shutdown()
            assert(server:wait_log("gate on_close tag=once code=4001 reason=bye;", 5),
                "no on_close with 4001 \"bye\":\n" .. server:stderr())
            -- A later connection's on_close is a barrier: anything the first
            -- one would still log has been logged by then.
            bye(connect("/gate?tag=once-barrier"))
            assert(server:wait_log("gate on_close tag=once%-barrier ", 5))
            assert.equal(1, plain_count(server:stderr(), "gate on_close tag=once "))
        end)

        it("is called with 1006 when TCP drops without a close frame", function()
            local ws = connect("/gate?tag=dropped")
            assert.equal("x", ask(ws, "x"))
            ws:shutdown()
            local code = server:wait_log("gate on_close tag=dropped code=(%d+)", 5)
            assert.equal("1006", code)
        end)

        it("is not called for rejected handshakes (ws:reject, on_connect error)", function()
            refused("/gate?do=reject&tag=norej1")
            refused("/gate?do=reject_default&tag=norej2")
            refused("/gate?do=raise&tag=norej3")
            bye(connect("/gate?tag=norej-barrier"))
            assert(server:wait_log("gate on_close tag=norej%-barrier ", 5))
            local err = server:stderr()
            assert.is_nil(err:find("tag=norej1 ", 1, true), err)
            assert.is_nil(err:find("tag=norej2 ", 1, true), err)
            assert.is_nil(err:find("tag=norej3 ", 1, true), err)
        end)

        it("still serves after these cases", function()
            assert_serves()
        end)
    end)

    describe("errors", function()
        before_each(start_server)
        after_each(stop_server)

        it("an error in on_message closes that connection with 1011, logs traceback, route " ..
            "and connection id, and other connections keep working", function()
            local other = connect("/kinds")
            local victim = connect("/cmd?tag=victim")
            local id = ask(victim, "id"):match("^number (%d+)$")
            assert(id, "no id")
            assert(victim:send("raise"))
            assert.equal(1011, (closed_by_server(victim)))

            -- The other connection first: it must not pay for the victim's error.
            assert.equal("text:after", ask(other, "after"))
            bye(other)
            assert_serves()

            local line = server:wait_log("([^\n]*boom in on_message[^\n]*)", 5)
            assert(line, "the error is not in stderr:\n" .. server:stderr())
            assert.truthy(line:find("/cmd", 1, true), "no route in: " .. line)
            assert.truthy(line:find("conn " .. id .. "%f[%D]"), "no connection id in: " .. line)
            local err = server:stderr()
            local at = err:find("boom in on_message", 1, true)
            assert.truthy(err:find("stack traceback", at, true), "no traceback:\n" .. err)
        end)

        it("on_close still runs after an on_message error (code 1011)", function()
            local ws = connect("/cmd?tag=raised-then-closed")
            assert(ws:send("raise"))
            assert.equal(1011, (closed_by_server(ws)))
            assert(server:wait_log("cmd on_close tag=raised%-then%-closed code=", 5),
                "on_close did not run:\n" .. server:stderr())
        end)

        it("ws:send(data, \"bogus\") raises an argument error: the connection gets 1011",
            function()
                local ws = connect("/cmd?tag=bogus")
                assert(ws:send("bogus"))
                assert.equal(1011, (closed_by_server(ws)))
                local line = server:wait_log("([^\n]*error in on_message[^\n]*bad argument[^\n]*)", 5)
                assert(line, "no argument error logged:\n" .. server:stderr())
            end)

        it("an error in on_close is logged and the server lives", function()
            local ws = connect("/badclose")
            assert.equal("hi", ask(ws, "hi"))
            bye(ws)
            assert(server:wait_log("boom in on_close", 5), "not logged:\n" .. server:stderr())
            assert_serves()
        end)
    end)

    describe("the ws object", function()
        server_per_block()

        it("ws:send after the connection closed returns nil, \"closed\"", function()
            local parked = connect("/cmd?tag=parked1&park=p1")
            bye(parked)
            assert(server:wait_log("cmd on_close tag=parked1 ", 5))
            local ws = connect("/cmd")
            assert.equal("send=nil,closed", ask(ws, "poke p1"))
            bye(ws)
        end)

        it("ws.request read only after the connection ended is still the whole request",
            function()
                local parked = connect("/late?x=1", {raw = upgrade_request(server, "/late?x=1", {
                    {"X-Late", "yes"},
                })})
                local _, local_port = parked.conn.sock:getsockname()
                assert.equal("parked", ask(parked, "park"))
                bye(parked)
                assert(server:wait_log("late on_close ", 5))
                local ws = connect("/late")
                assert.equal(string.format("/late x=1 1 yes websocket 127.0.0.1 %s %d true",
                    local_port, server.port), ask(ws, "later"))
                bye(ws)
            end)

        it("ws:ping and ws:close after the connection closed return nil, \"closed\"", function()
            local parked = connect("/cmd?tag=parked2&park=p2")
            bye(parked)
            assert(server:wait_log("cmd on_close tag=parked2 ", 5))
            local ws = connect("/cmd")
            assert.equal("ping=nil,closed close=nil,closed", ask(ws, "pokeall p2"))
            bye(ws)
        end)

        it("ws:send of invalid UTF-8 as text raises; as binary it is sent", function()
            local ws = connect("/cmd")
            local reply = ask(ws, "badutf8")
            assert.truthy(reply:match("^raised: "), reply)
            local data, kind = ask(ws, "binutf8")
            assert.equal("\255\254", data)
            assert.equal("binary", kind)
            bye(ws)
        end)

        it("ws.id is a number, unique per connection", function()
            local seen, conns = {}, {}
            for i = 1, 4 do
                conns[i] = connect("/cmd")
                local id = ask(conns[i], "id"):match("^number (%d+)$")
                assert(id, "ws.id is not a number")
                assert.is_nil(seen[id], "ws.id " .. id .. " given twice")
                seen[id] = true
            end
            for _, ws in ipairs(conns) do
                bye(ws)
            end
        end)

        it("ws.data is per connection and survives across messages", function()
            local a, b = connect("/cmd"), connect("/cmd")
            assert.equal("1", ask(a, "count"))
            assert.equal("2", ask(a, "count"))
            assert.equal("1", ask(b, "count"))
            assert.equal("3", ask(a, "count"))
            bye(a)
            bye(b)
        end)

        it("ws.foo = 1 raises, and ws.foo stays nil", function()
            local ws = connect("/cmd")
            local reply = ask(ws, "setfoo")
            assert.truthy(reply:match("^raised: "), reply)
            assert.truthy(reply:match(" foo=nil$"), reply)
            bye(ws)
        end)

        it("ws:ping(data) makes the client receive a ping with that payload", function()
            local ws = connect("/cmd")
            assert(ws:send("ping hello-ping"))
            local f = ws:receive(5)
            assert(f, "no frame")
            assert.equal(9, f.opcode)
            assert.equal("hello-ping", f.payload)
            assert.equal("still", ask(ws, "echo still"))
            bye(ws)
        end)

        it("ws:close(4000, \"done\") makes the client receive close 4000 \"done\"", function()
            local ws = connect("/cmd?tag=srvclose")
            assert(ws:send("close"))
            local f = ws:receive(5)
            assert(f, "no frame")
            assert.equal(8, f.opcode)
            assert.equal(4000, f.code)
            assert.equal("done", f.reason)
            assert(ws:close(4000))
            assert.is_true(ws:is_closed(5), "the server did not close TCP")
            ws:shutdown()
        end)

        it("still serves after these cases", function()
            assert_serves()
        end)
    end)

    describe("after the server's close frame", function()
        server_per_block()

        it("ws:send returns nil, \"closed\" right after ws:close", function()
            local ws = connect("/cmd?tag=closesend")
            assert(ws:send("closesend"))
            assert.equal(4000, (closed_by_server(ws)))
            local result = server:wait_log("cmd send after own close: ([^\n]*)", 5)
            assert.equal("nil,closed", result)
        end)
    end)

    describe("isolation", function()
        server_per_block()

        it("each app file has its own globals: B does not see A's `shared`", function()
            local a = connect("/glob_a")
            assert.equal("shared=a", recv(a))
            assert.equal("shared_later=x", ask(a, "x"))
            local b = connect("/glob_b")
            assert.equal("shared=nil shared_later=nil", recv(b))
            bye(a)
            bye(b)
        end)

        it("still serves after these cases", function()
            assert_serves()
        end)
    end)

    describe("require \"moonport\"", function()
        server_per_block()

        it("log(level, ...) writes the arguments, joined by spaces, to stderr", function()
            local ws = connect("/host")
            assert.equal("logged", ask(ws, "log hello"))
            assert(server:wait_log("info%s+[^\n]*host%-log: hello 42 true", 5),
                "not in stderr:\n" .. server:stderr())
            assert.is_nil(server:stdout():find("host-log", 1, true), "app log went to stdout")
            bye(ws)
        end)

        it("now() increases with time", function()
            local ws = connect("/host")
            local t1 = tonumber((ask(ws, "now")))
            socket.sleep(0.05)
            local t2 = tonumber((ask(ws, "now")))
            assert(t1 and t2, "now() is not a number")
            assert.is_true(t2 > t1, t1 .. " then " .. t2)
            assert.is_true(t2 - t1 >= 0.04, "only " .. (t2 - t1) .. " s passed")
            bye(ws)
        end)

        it("after(0.1, fn) fires once, after about 0.1 s, even if nothing holds the timer", function()
            local ws = connect("/host")
            assert.equal("armed", ask(ws, "after"))
            local msg = recv(ws, 2)
            local elapsed = tonumber(msg:match("^after ([%d.]+)$"))
            assert(elapsed, msg)
            assert.is_true(elapsed >= 0.09, "fired after " .. elapsed .. " s")
            local again, err = ws:receive_message(0.4)
            assert.is_nil(again, "fired again: " .. tostring(again))
            assert.equal("timeout", err)
            bye(ws)
        end)

        it("every(0.05, fn) fires repeatedly, and :cancel() stops it", function()
            local ws = connect("/host")
            local t0 = socket.gettime()
            assert.equal("armed", ask(ws, "every"))
            assert.equal("tick 1", recv(ws, 2))
            assert.equal("tick 2", recv(ws, 2))
            assert.equal("tick 3", recv(ws, 2))
            assert.is_true(socket.gettime() - t0 >= 0.12, "three ticks came too fast")
            assert(ws:send("cancel"))
            local msg
            repeat
                msg = recv(ws, 2)
            until not msg:match("^tick ")
            assert.equal("cancelled true", msg)
            local again, err = ws:receive_message(0.3)
            assert.is_nil(again, "still ticking: " .. tostring(again))
            assert.equal("timeout", err)
            bye(ws)
        end)

        it("an every() timer keeps running after its callback raised", function()
            local ws = connect("/host")
            assert.equal("armed", ask(ws, "everyboom"))
            assert.equal("tick 2", recv(ws, 2))
            assert.equal("tick 3", recv(ws, 2))
            assert(server:wait_log("boom in every", 5), "not logged:\n" .. server:stderr())
            bye(ws)
        end)

        it("an error in a timer callback is logged and the server keeps serving", function()
            local ws = connect("/host")
            assert.equal("armed", ask(ws, "boom"))
            assert(server:wait_log("boom in timer", 5), "not logged:\n" .. server:stderr())
            local err = server:stderr()
            assert.truthy(err:find("stack traceback", err:find("boom in timer", 1, true), true),
                "no traceback:\n" .. err)
            assert.equal("same connection", ask(ws, "echo same connection"))
            bye(ws)
            assert_serves()
        end)

        it("still serves after these cases", function()
            assert_serves()
        end)
    end)
end)
