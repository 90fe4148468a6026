-- The closing handshake (RFC 6455 sections 5.5.1, 7 and 7.4), against the
-- real server and its echo app. After every case the server must still
-- serve a new connection.
local testing = require "moonport.testing"

local ECHO = [[
local app = {}
function app.on_message(ws, data, kind) ws:send(data, kind) end
return app
]]

local function close_payload(code, reason)
    return string.char(math.floor(code / 256), code % 256) .. (reason or "")
end

describe("closing handshake", function()
    local server

    setup(function()
        local err, stderr
        server, err, stderr = testing.start {apps = {echo = ECHO}}
        assert(server, tostring(err) .. "\n" .. tostring(stderr))
    end)

    teardown(function()
        if server then
            server:cleanup()
        end
    end)

    local function open()
        local ws, err = server:connect("/echo")
        assert(ws, tostring(err))
        return ws
    end

    -- A new connection still echoes: the server survived the last case.
    local function assert_server_serves()
        assert.is_true(server:alive(), "the server died")
        local ws = open()
        assert(ws:send("still there?"))
        assert.equal("still there?", ws:receive_message(5))
        ws:shutdown()
    end

    -- Sends a close frame with this raw payload and returns what the server
    -- closes with: code, reason, and whether it then closed TCP.
    local function close_with(payload)
        local ws = open()
        assert(ws:send_frame {opcode = "close", payload = payload})
        local code, reason, tcp_closed = ws:expect_close(5)
        ws:shutdown()
        return code, reason, tcp_closed
    end

    local function assert_close_reply(payload, expected)
        local code, reason, tcp_closed = close_with(payload)
        assert.equal(expected, code, "close code (" .. tostring(reason) .. ")")
        assert.is_true(tcp_closed, "the server did not close TCP after its close frame")
        assert_server_serves()
    end

    it("5.5.1: a close with 1000 gets a close with 1000, then the server closes TCP", function()
        assert_close_reply(close_payload(1000, "bye"), 1000)
    end)

    it("5.5.1: an empty close gets an empty close (or 1000), then the server closes TCP", function()
        -- RFC 6455 5.5.1 lets the answer carry no code; 1000 is also
        -- accepted here. Either way no other code.
        local code, reason, tcp_closed = close_with("")
        assert.is_true(code == nil or code == 1000,
            "answered an empty close with " .. tostring(code) .. " " .. tostring(reason))
        assert.is_true(tcp_closed, "the server did not close TCP after its close frame")
        assert_server_serves()
    end)

    describe("7.4.1-7.4.2: valid codes are echoed", function()
        local valid = {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014,
            3000, 3999, 4000, 4999}
        for _, code in ipairs(valid) do
            it("close code " .. code .. " is echoed", function()
                assert_close_reply(close_payload(code), code)
            end)
        end
    end)

    describe("7.4.1-7.4.2: invalid codes fail with 1002", function()
        local invalid = {0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535}
        for _, code in ipairs(invalid) do
            it("close code " .. code .. " fails with 1002", function()
                assert_close_reply(close_payload(code), 1002)
            end)
        end
    end)

    it("5.5.1: a 1-byte close payload fails with 1002", function()
        assert_close_reply("\3", 1002)
    end)

    it("5.5.1, 8.1: a close reason that is not UTF-8 fails with 1007", function()
        assert_close_reply(close_payload(1000, "bad \255 reason"), 1007)
    end)

    it("5.5.1, 8.1: a close reason cut inside a UTF-8 sequence fails with 1007", function()
        assert_close_reply(close_payload(1000, "euro \226\130"), 1007)
    end)

    it("5.5.1: a valid UTF-8 close reason is accepted", function()
        assert_close_reply(close_payload(4000, "caf\195\169 \226\130\172"), 4000)
    end)

    it("5.5: a close reason of 123 bytes (a 125-byte payload) is accepted", function()
        assert_close_reply(close_payload(1000, string.rep("r", 123)), 1000)
    end)

    it("5.5: a 126-byte close payload is a control frame over 125 bytes: 1002", function()
        assert_close_reply(close_payload(1000, string.rep("r", 124)), 1002)
    end)

    it("5.4: a close between the fragments of a message is answered", function()
        local ws = open()
        ws:send_frame {opcode = "text", fin = false, payload = "never finished"}
        ws:close(1000)
        local code, _, tcp_closed = ws:expect_close(5)
        ws:shutdown()
        assert.equal(1000, code)
        assert.is_true(tcp_closed)
        assert_server_serves()
    end)

    it("1.4: data sent before the close is echoed before the close reply", function()
        local ws = open()
        ws:send("last words")
        ws:close(1001)
        assert.equal("last words", ws:receive_message(5))
        local code, _, tcp_closed = ws:expect_close(5)
        ws:shutdown()
        assert.equal(1001, code)
        assert.is_true(tcp_closed)
        assert_server_serves()
    end)

    it("7.1.1: a client that shuts TCP down without a close frame leaves the server serving",
        function()
            local ws = open()
            ws:send("half")
            ws:shutdown()
            assert_server_serves()
        end)

    it("the access log records the client's close code", function()
        local ws = open()
        ws:close(4321)
        assert.equal(4321, (ws:expect_close(5)))
        ws:shutdown()
        assert.truthy(server:wait_log('"WSDISCONNECT /echo" id=%d+ code=4321 duration=[%d.]+s', 5))
    end)

    it("the server is still alive", function()
        assert_server_serves()
    end)
end)

-- The timeouts of the closing handshake (timeouts.close), each connection
-- counted from when its own close began, whatever the others do.
describe("close timeouts (timeouts.close = 0.5)", function()
    local BYE = [[
local moonport = require "moonport"
return {
    on_message = function(ws, data)
        if data == "bye" then ws:close(4000, "bye") else ws:send(data) end
    end,
    on_close = function(ws, code)
        moonport.log("info", "bye on_close " .. tostring(ws.id) .. " " .. tostring(code))
    end,
}
]]
    local server
    setup(function()
        server = assert(testing.start {
            apps = {bye = BYE},
            config = "return { apps = 'apps', timeouts = { close = 0.5 } }",
        })
    end)
    teardown(function() server:cleanup() end)

    -- Reads frames until the server closes TCP; returns the frames' opcodes.
    local function read_until_eof(ws, limit)
        local ops = {}
        while true do
            local f, err = ws:receive(limit)
            if not f then
                return ops, err
            end
            ops[#ops + 1] = f.opcode
        end
    end

    it("a peer that never answers our close frame is dropped, and on_close gets 1006", function()
        local ws = assert(server:connect("/bye"))
        assert(ws:send("bye"))
        local ops, err = read_until_eof(ws, 5)
        assert.same({8}, ops) -- our close frame, then the socket closes
        assert.are_not.equal("timeout", err)
        assert(server:wait_log("no close frame from the peer after 0.5s", 5))
        assert(server:wait_log("bye on_close %d+ 1006", 5))
    end)

    it("a peer that answers the close but never closes TCP is dropped after the linger", function()
        local ws = assert(server:connect("/bye"))
        assert(ws:send_frame {opcode = "close", payload = "\3\232"}) -- 1000
        local ops, err = read_until_eof(ws, 5)
        assert.same({8}, ops)
        assert.are_not.equal("timeout", err, "the server kept the socket open")
    end)

    it("times each connection out from its own close, in order", function()
        local conns = {}
        for i = 1, 3 do
            conns[i] = assert(server:connect("/bye"))
            assert(conns[i]:send("bye"))
            testing.sleep(0.15)
        end
        -- None answers; every one is dropped, and the log has them in order.
        for i = 1, 3 do
            local ops, err = read_until_eof(conns[i], 5)
            assert.same({8}, ops)
            assert.are_not.equal("timeout", err)
        end
        local ids = {}
        for id in server:stderr():gmatch("bye on_close (%d+) 1006") do
            ids[#ids + 1] = tonumber(id)
        end
        assert.is_true(#ids >= 3)
        for i = 2, #ids do
            assert.is_true(ids[i] > ids[i - 1], "closed out of order: " .. table.concat(ids, " "))
        end
    end)

    it("still serves", function()
        local ws = assert(server:connect("/bye"))
        assert(ws:send("hello"))
        assert.equal("hello", (ws:receive_message(5)))
        ws:close()
    end)
end)
