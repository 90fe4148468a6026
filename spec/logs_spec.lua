-- What the logs and the HTTP error answers say: the access log on its own
-- switch whatever the level, the counts in WSDISCONNECT, a line for a
-- handshake that times out, and the short reason in an error's body (never
-- anything the client sent).
local testing = require "moonport.testing"
local socket = require "socket"

local ECHO = [[
local app = {}
function app.on_message(ws, data, kind) ws:send(data, kind) end
return app
]]

-- Answers every message with two: the message, and "+" .. its length.
local TWICE = [[
local app = {}
function app.on_message(ws, data, kind)
  ws:send(data, kind)
  ws:send("+" .. #data)
end
return app
]]

local count = testing.count

-- Connect, exchange the given messages with the echo app, close cleanly.
local function session(server, path, messages, replies_per_message)
    local ws = assert(server:connect(path))
    for _, m in ipairs(messages) do
        assert(ws:send(m[1], m[2]))
        for _ = 1, replies_per_message or 1 do
            assert(ws:receive_message(5))
        end
    end
    assert(ws:close(1000))
    assert.equal(1000, (ws:expect_close(5)))
    ws:shutdown()
end

-- The raw upgrade request for path.
local function upgrade(path, key)
    return "GET " .. path .. " HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n" ..
        "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " ..
        (key or "dGhlIHNhbXBsZSBub25jZQ==") .. "\r\n\r\n"
end

describe("the access log", function()
    it("is written at --log-level error, while stderr keeps to errors", function()
        local server = assert(testing.start {apps = {echo = ECHO}, args = {"--log-level", "error"}})
        session(server, "/echo", {{"hi"}})
        local found = server:wait_log("\"WSDISCONNECT /echo\"", 5)
        local out, err = server:stdout(), server:stderr()
        server:cleanup()
        assert(found, "no WSDISCONNECT at --log-level error:\n" .. out)
        assert.equal(1, count(out, "\"WSCONNECT /echo\""), out)
        assert.is_nil(err:find("WSCONNECT", 1, true), "the access log went to stderr")
        -- The "listening on" line is always written: it is how a caller
        -- learns the port.
        local others = err:gsub("[^\n]*listening on ws://[^\n]*\n?", "")
        assert.is_nil(others:find(" info ", 1, true), "an info line at --log-level error: " .. err)
    end)

    it("log = { level = \"warn\", access = true } writes it", function()
        local server = assert(testing.start {apps = {echo = ECHO},
            config = 'return { apps = "apps", log = { level = "warn", access = true } }'})
        session(server, "/echo", {{"hi"}})
        local found = server:wait_log("\"WSDISCONNECT /echo\"", 5)
        local out = server:stdout()
        server:cleanup()
        assert(found, "no access log with level warn and access true:\n" .. out)
    end)

    it("log = { access = false } turns it off at any level", function()
        local server = assert(testing.start {apps = {echo = ECHO},
            config = 'return { apps = "apps", log = { level = "debug", access = false } }'})
        session(server, "/echo", {{"hi"}})
        -- A second session after the first has ended: the first one's
        -- disconnect line would have been written by now.
        session(server, "/echo", {{"hi"}})
        local out = server:stdout()
        server:cleanup()
        assert.equal("", out)
    end)

    it("WSDISCONNECT counts messages and payload bytes in each direction", function()
        local server = assert(testing.start {apps = {twice = TWICE}})
        -- In: 3 messages, 5 + 0 + 300 bytes. Out: each echoed, and "+5",
        -- "+0", "+300": 6 messages, 305 + 2 + 2 + 4 bytes.
        session(server, "/twice", {{"hello"}, {"", "binary"}, {string.rep("x", 300), "binary"}}, 2)
        local line = server:wait_log("\"WSDISCONNECT /twice\"[^\n]*", 5)
        server:cleanup()
        assert(line, "no WSDISCONNECT line")
        assert.truthy(line:find(" code=1000 ", 1, true), line)
        assert.truthy(line:find(" msgs_in=3 bytes_in=305 msgs_out=6 bytes_out=313", 1, true), line)
    end)

    it("counts the bytes as the app sees them when the messages were compressed", function()
        local server = assert(testing.start {apps = {echo = ECHO}})
        -- deflate_client.py's echo case sends six messages, most of them
        -- compressed: 1600 bytes of text, 5, 5000, 11, 0 and 131072 bytes.
        local status, out = testing.capture("python3 spec/support/deflate_client.py " ..
            server.port .. " /echo echo", 60)
        local line = server:wait_log("\"WSDISCONNECT /echo\"[^\n]*", 5)
        server:cleanup()
        assert(status == 0, out)
        assert(line, "no WSDISCONNECT line")
        local bytes = 1600 + 5 + 5000 + 11 + 0 + 131072
        assert.truthy(line:find((" msgs_in=6 bytes_in=%d msgs_out=6 bytes_out=%d"):format(bytes,
            bytes), 1, true), line)
    end)

    describe("a handshake that times out", function()
        local server
        setup(function()
            server = assert(testing.start {apps = {echo = ECHO},
                config = 'return { apps = "apps", timeouts = { handshake = 0.3 } }'})
        end)
        teardown(function() server:cleanup() end)

        it("gets an access-log line with the path, when the request line arrived", function()
            local sock = assert(socket.connect("127.0.0.1", server.port))
            assert(sock:send("GET /echo?token=x HTTP/1.1\r\nHost: 127.0.0.1\r\n"))
            local line = server:wait_log("[^\n]*\"WSTIMEOUT /echo\"[^\n]*", 5)
            sock:close()
            assert(line, "no WSTIMEOUT line:\n" .. server:stdout())
            assert.truthy(line:find("^%S+ 127%.0%.0%.1:%d+ \"WSTIMEOUT /echo\" id=%d+ " ..
                "reason=handshake not complete after 0%.3s$"), line)
        end)

        it("and with - for the path when nothing arrived", function()
            local sock = assert(socket.connect("127.0.0.1", server.port))
            local line = server:wait_log("[^\n]*\"WSTIMEOUT %-\"[^\n]*", 5)
            sock:close()
            assert(line, "no WSTIMEOUT line:\n" .. server:stdout())
        end)
    end)
end)

describe("HTTP error answers", function()
    local server
    setup(function() server = assert(testing.start {apps = {echo = ECHO}}) end)
    teardown(function() server:cleanup() end)

    local function answer(raw)
        local response, err = server:request(raw, 5)
        assert(response, "no HTTP answer: " .. tostring(err))
        return response
    end

    it("carry the short reason in the body, and the access log says the same", function()
        local r = answer(upgrade("/echo", "abc"))
        assert.equal(400, r.status)
        assert.equal("400 Bad Request: Sec-WebSocket-Key is not 16 bytes of base64\n", r.body)
        assert.truthy(server:wait_log("\"WSREJECT /echo\" id=%d+ status=400 " ..
            "reason=Sec%-WebSocket%-Key is not 16 bytes of base64", 5))
    end)

    it("never quote what the client sent", function()
        local evil = "<script>alert(1)</script>"
        local r = answer(upgrade("/echo", evil))
        assert.equal(400, r.status)
        assert.is_nil(r.body:find("script", 1, true), r.body)
        r = answer(upgrade("/nowhere-" .. "secret"))
        assert.equal(404, r.status)
        assert.equal("404 Not Found: no route\n", r.body)
        r = answer("GET /echo HTTP/1.1\r\nHost: x\r\nX-Evil: " .. evil .. "\x01\r\n\r\n")
        assert.equal(400, r.status)
        assert.is_nil(r.body:find("script", 1, true), r.body)
    end)

    it("name a bare LF line ending for what it is, in the body and the log", function()
        local r = answer("GET /echo HTTP/1.1\r\nHost: x\nUpgrade: websocket\r\n\r\n")
        assert.equal(400, r.status)
        assert.equal("400 Bad Request: a line ends in a bare LF; HTTP lines end with CRLF\n", r.body)
        -- The path was read before the mistake: the log line names it.
        assert.truthy(server:wait_log("\"WSREJECT /echo\" id=%d+ status=400 reason=a line ends " ..
            "in a bare LF", 5), server:stdout())
    end)

    it("a bare LF split across two writes is still named", function()
        local sock = assert(socket.connect("127.0.0.1", server.port))
        assert(sock:send("GET /echo HTTP/1.1\r\nHost: x"))
        socket.sleep(0.1)
        assert(sock:send("\nUpgrade: websocket\r\n\r\n"))
        sock:settimeout(5)
        local data = assert(sock:receive("*a"))
        sock:close()
        assert.truthy(data:find("a line ends in a bare LF", 1, true), data)
    end)

    it("other malformed heads keep llhttp's reason behind a plain prefix", function()
        local r = answer("GET /echo HTTP/1.1\r\nHost: x\r\nX-A: b\x01c\r\n\r\n")
        assert.equal(400, r.status)
        assert.truthy(r.body:find("^400 Bad Request: malformed request head: %S"), r.body)
    end)
end)
