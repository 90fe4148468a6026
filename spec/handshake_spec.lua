-- The opening handshake (RFC 6455 section 4, RFC 9110/9112 for the HTTP
-- around it), against the real server: what gets a 101 and what gets
-- exactly which HTTP error.
local client = require "moonport.client"
local testing = require "moonport.testing"

local ECHO = [[
local app = {}
function app.on_message(ws, data, kind) ws:send(data, kind) end
return app
]]

-- Sends back, for any message, the request headers the app was given, one
-- "name: value" line each, sorted: how a spec sees what reaches an app.
local HEADERS = [[
local app = {}
local seen = setmetatable({}, {__mode = "k"})
function app.on_connect(ws, req)
    seen[ws] = req and req.headers
end
function app.on_message(ws, data)
    local lines = {}
    for name, value in pairs(seen[ws] or {}) do
        lines[#lines + 1] = name:lower() .. ": " .. tostring(value)
    end
    table.sort(lines)
    ws:send(table.concat(lines, "\n"), "text")
end
return app
]]

local SAMPLE_KEY = "dGhlIHNhbXBsZSBub25jZQ=="

-- A well-formed upgrade request for path, with header lines replaced or
-- added by extra ({ {name, value}, ... }; a false value drops the line).
local function upgrade_request(path, extra, version_line)
    local lines = {
        {"Host", "127.0.0.1"},
        {"Upgrade", "websocket"},
        {"Connection", "Upgrade"},
        {"Sec-WebSocket-Key", SAMPLE_KEY},
        {"Sec-WebSocket-Version", "13"},
    }
    for _, h in ipairs(extra or {}) do
        local found = false
        for _, line in ipairs(lines) do
            if line[1]:lower() == h[1]:lower() then
                line[2], found = h[2], true
            end
        end
        if not found then
            lines[#lines + 1] = {h[1], h[2]}
        end
    end
    local out = {"GET " .. path .. " " .. (version_line or "HTTP/1.1")}
    for _, line in ipairs(lines) do
        if line[2] then
            out[#out + 1] = line[1] .. ": " .. line[2]
        end
    end
    return table.concat(out, "\r\n") .. "\r\n\r\n"
end

describe("handshake", function()
    local server

    setup(function()
        local err, stderr
        server, err, stderr = testing.start {apps = {echo = ECHO, headers = HEADERS, index = ECHO}}
        assert(server, tostring(err) .. "\n" .. tostring(stderr))
    end)

    teardown(function()
        if server then
            server:cleanup()
        end
    end)

    local function status_of(raw)
        local response, err = server:request(raw, 5)
        assert(response, "no HTTP answer: " .. tostring(err))
        return response.status, response
    end

    local function echo_works(ws)
        assert(ws:send("ping?"))
        local data, kind = ws:receive_message(5)
        assert.equal("ping?", data)
        assert.equal("text", kind)
    end

    describe("4.2.2: a valid upgrade", function()
        it("gets 101 and the RFC's sample accept key s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", function()
            assert.equal("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", client.accept_key(SAMPLE_KEY))
            local ws, response = server:connect("/echo", {key = SAMPLE_KEY})
            assert(ws, tostring(response))
            assert.equal(101, response.status)
            assert.equal("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", response.headers["sec-websocket-accept"])
            echo_works(ws)
            ws:shutdown()
        end)

        it("answers Upgrade: websocket and Connection: Upgrade", function()
            local ws, response = server:connect("/echo")
            assert(ws, tostring(response))
            assert.equal("websocket", response.headers.upgrade:lower())
            assert.equal("upgrade", response.headers.connection:lower())
            ws:shutdown()
        end)

        it("computes the accept key from any client key", function()
            for _ = 1, 5 do
                local ws, response = server:connect("/echo")
                assert(ws, tostring(response))
                ws:shutdown()
            end
        end)

        it("serves APPS_DIR/NAME.lua at /NAME and index.lua at /", function()
            local ws, err = server:connect("/")
            assert(ws, tostring(err))
            echo_works(ws)
            ws:shutdown()
            ws, err = server:connect("/echo")
            assert(ws, tostring(err))
            echo_works(ws)
            ws:shutdown()
        end)

        it("4.2.1: finds the upgrade token among others in Connection", function()
            local ws, err = server:connect("/echo", {headers = {Connection = "keep-alive, Upgrade"}})
            assert(ws, tostring(err))
            echo_works(ws)
            ws:shutdown()
        end)

        it("4.2.1: matches Upgrade and Connection values without regard to case", function()
            local ws, err = server:connect("/echo", {
                headers = {Upgrade = "WebSocket", Connection = "keep-alive, UPGRADE"},
            })
            assert(ws, tostring(err))
            echo_works(ws)
            ws:shutdown()
        end)

        it("RFC 9110 5.5: accepts a horizontal tab inside a header value", function()
            local ws, err = server:connect("/echo", {headers = {["X-Tabbed"] = "a\tb"}})
            assert(ws, tostring(err))
            ws:shutdown()
        end)
    end)

    describe("4.2.2: version other than 13", function()
        it("a missing Sec-WebSocket-Version gets 426 with Sec-WebSocket-Version: 13", function()
            local status, response = status_of(upgrade_request("/echo",
                {{"Sec-WebSocket-Version", false}}))
            assert.equal(426, status)
            assert.equal("13", response.headers["sec-websocket-version"])
        end)

        it("version 8 gets 426 with Sec-WebSocket-Version: 13", function()
            local status, response = status_of(upgrade_request("/echo",
                {{"Sec-WebSocket-Version", "8"}}))
            assert.equal(426, status)
            assert.equal("13", response.headers["sec-websocket-version"])
        end)

        it("version 14 gets 426 with Sec-WebSocket-Version: 13", function()
            local status, response = status_of(upgrade_request("/echo",
                {{"Sec-WebSocket-Version", "14"}}))
            assert.equal(426, status)
            assert.equal("13", response.headers["sec-websocket-version"])
        end)
    end)

    describe("4.2.1: Sec-WebSocket-Key", function()
        it("missing gets 400", function()
            assert.equal(400, status_of(upgrade_request("/echo", {{"Sec-WebSocket-Key", false}})))
        end)

        it("too short gets 400", function()
            assert.equal(400, status_of(upgrade_request("/echo", {{"Sec-WebSocket-Key", "c2hvcnQ="}})))
        end)

        it("24 characters that are not base64 get 400", function()
            assert.equal(400, status_of(upgrade_request("/echo",
                {{"Sec-WebSocket-Key", "!!!!!!!!!!!!!!!!!!!!!!=="}})))
        end)

        it("24 base64 characters decoding to 17 bytes get 400", function()
            assert.equal(400, status_of(upgrade_request("/echo",
                {{"Sec-WebSocket-Key", "AAAAAAAAAAAAAAAAAAAAAAA="}})))
        end)

        it("24 base64 characters decoding to 18 bytes get 400", function()
            assert.equal(400, status_of(upgrade_request("/echo",
                {{"Sec-WebSocket-Key", "AAAAAAAAAAAAAAAAAAAAAAAA"}})))
        end)

        it("a key of 16 bytes other than the sample one is accepted", function()
            local ws, err = server:connect("/echo", {key = "AAAAAAAAAAAAAAAAAAAAAA=="})
            assert(ws, tostring(err))
            ws:shutdown()
        end)
    end)

    describe("4.2.1: Upgrade and Connection", function()
        it("Upgrade other than websocket gets 400", function()
            assert.equal(400, status_of(upgrade_request("/echo", {{"Upgrade", "h2c"}})))
        end)

        it("a missing Upgrade (with a key) gets 400", function()
            assert.equal(400, status_of(upgrade_request("/echo", {{"Upgrade", false}})))
        end)

        it("Connection without the upgrade token gets 400", function()
            assert.equal(400, status_of(upgrade_request("/echo", {{"Connection", "keep-alive"}})))
        end)

        it("a missing Connection gets 400", function()
            assert.equal(400, status_of(upgrade_request("/echo", {{"Connection", false}})))
        end)

        it("HTTP/1.0 gets 400", function()
            assert.equal(400, status_of(upgrade_request("/echo", nil, "HTTP/1.0")))
        end)
    end)

    describe("routing and method", function()
        it("an unknown route gets 404", function()
            assert.equal(404, status_of(upgrade_request("/no-such-app")))
        end)

        it("4.2.1: a method other than GET gets 405", function()
            local raw = upgrade_request("/echo"):gsub("^GET", "POST")
            raw = raw:gsub("\r\n\r\n$", "\r\nContent-Length: 0\r\n\r\n")
            assert.equal(405, status_of(raw))
        end)

        it("a plain HTTP GET (no Upgrade, no key) to a route gets 426", function()
            assert.equal(426, status_of("GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"))
        end)
    end)

    describe("RFC 9112 limits on the head", function()
        local function with_headers(n, value)
            local extra = {}
            for i = 1, n do
                extra[#extra + 1] = {"X-Filler-" .. i, value or "x"}
            end
            return extra
        end

        it("100 header lines in all (the default max_headers) are accepted", function()
            -- upgrade_request has 5 lines of its own.
            local ws, err = server:connect("/echo", {
                key = SAMPLE_KEY,
                raw = upgrade_request("/echo", with_headers(95)),
            })
            assert(ws, tostring(err))
            echo_works(ws)
            ws:shutdown()
        end)

        it("101 header lines get 431", function()
            assert.equal(431, status_of(upgrade_request("/echo", with_headers(96))))
        end)

        it("a head of about 16000 bytes (under max_head 16384) is accepted", function()
            local raw = upgrade_request("/echo", {{"X-Big", string.rep("a", 16000 - 160)}})
            assert.is_true(#raw < 16100)
            local ws, err = server:connect("/echo", {raw = raw})
            assert(ws, tostring(err))
            ws:shutdown()
        end)

        it("a head over max_head (16384) gets 431", function()
            local raw = upgrade_request("/echo", {{"X-Big", string.rep("a", 16500)}})
            assert.equal(431, status_of(raw))
        end)

        it("a head over max_head spread over many short lines gets 431", function()
            assert.equal(431, status_of(upgrade_request("/echo", with_headers(80, string.rep("b", 250)))))
        end)
    end)

    describe("RFC 9110 5.1, 5.5: header syntax", function()
        local bad_names = {
            ["a space"] = "Bad Name",
            ["a parenthesis"] = "Bad(Name)",
            ["a colon-like separator @"] = "Bad@Name",
            ["a non-ASCII byte"] = "X-\195\156ber",
            ["a slash"] = "X/Y",
        }
        for what, name in pairs(bad_names) do
            it("a header name with " .. what .. " gets 400", function()
                assert.equal(400, status_of(upgrade_request("/echo", {{name, "v"}})))
            end)
        end

        local bad_bytes = {
            ["NUL"] = "\0",
            ["a lone CR"] = "\r",
            ["a lone LF"] = "\n",
            ["\\x0b"] = "\11",
            ["\\x0c"] = "\12",
            ["\\x1c"] = "\28",
            ["\\x1d"] = "\29",
            ["\\x1e"] = "\30",
            ["\\x7f"] = "\127",
        }
        for what, b in pairs(bad_bytes) do
            it("a header value with " .. what .. " gets 400", function()
                assert.equal(400, status_of(upgrade_request("/echo", {{"X-Bad", "a" .. b .. "b"}})))
            end)
        end

        it("headers with '_' in the name never reach the app", function()
            local ws, err = server:connect("/headers", {
                headers = {{"X_Forwarded_For", "1.2.3.4"}, {"X-Kept", "yes"}},
            })
            assert(ws, tostring(err))
            assert(ws:send("?"))
            local seen = assert(ws:receive_message(5))
            -- The control header proves the app really sees the headers.
            assert.truthy(seen:find("x-kept: yes", 1, true))
            assert.falsy(seen:lower():find("x_forwarded_for", 1, true))
            assert.falsy(seen:find("1.2.3.4", 1, true))
            ws:shutdown()
        end)
    end)

    describe("4.1: a head split across TCP segments", function()
        it("a head arriving one byte at a time gets 101", function()
            local socket = require "socket"
            local sock = assert(socket.tcp())
            sock:settimeout(5)
            assert(sock:connect(server.host, server.port))
            sock:setoption("tcp-nodelay", true)
            local raw = upgrade_request("/echo")
            for i = 1, #raw do
                assert(sock:send(raw:sub(i, i)))
                socket.sleep(0.001)
            end
            local status_line = assert(sock:receive("*l"))
            sock:close()
            assert.equal("HTTP/1.1 101", status_line:sub(1, 12))
        end)
    end)

    describe("4.1: frames pipelined behind the request", function()
        it("a frame in the same packet as the head is the first frame", function()
            local ws, err = server:connect("/echo", {
                extra = client.encode_frame {opcode = "text", payload = "early"},
            })
            assert(ws, tostring(err))
            assert.equal("early", ws:receive_message(5))
            echo_works(ws)
            ws:shutdown()
        end)

        it("several pipelined frames (a fragmented message, a ping, a binary one) are all processed",
            function()
                local extra = client.encode_frame {opcode = "text", fin = false, payload = "one "} ..
                    client.encode_frame {opcode = "ping", payload = "p"} ..
                    client.encode_frame {opcode = "continuation", payload = "two"} ..
                    client.encode_frame {opcode = "binary", payload = "\0\1\2"}
                local ws, err = server:connect("/echo", {extra = extra})
                assert(ws, tostring(err))
                local pong = assert(ws:receive(5))
                assert.equal(0xA, pong.opcode)
                assert.equal("p", pong.payload)
                local data, kind = ws:receive_message(5)
                assert.equal("one two", data)
                assert.equal("text", kind)
                data, kind = ws:receive_message(5)
                assert.equal("\0\1\2", data)
                assert.equal("binary", kind)
                ws:shutdown()
            end)

        it("pipelined frames that end inside a frame header are completed by the next packet",
            function()
                local ping = client.encode_frame {opcode = "ping", payload = "late"}
                local ws, err = server:connect("/echo", {
                    extra = client.encode_frame {opcode = "text", payload = "early"} ..
                        ping:sub(1, 3),
                })
                assert(ws, tostring(err))
                assert.equal("early", ws:receive_message(5))
                testing.sleep(0.005)
                assert(ws:send_raw(ping:sub(4)))
                local pong = assert(ws:receive(5))
                assert.equal(0xA, pong.opcode)
                assert.equal("late", pong.payload)
                echo_works(ws)
                ws:shutdown()
            end)
    end)

    it("the server is still alive", function()
        assert.is_true(server:alive())
        local ws, err = server:connect("/echo")
        assert(ws, tostring(err))
        echo_works(ws)
        ws:shutdown()
    end)
end)

describe("handshake timeout (timeouts.handshake = 1)", function()
    local server

    setup(function()
        local err, stderr
        server, err, stderr = testing.start {
            apps = {echo = ECHO},
            config = "return { timeouts = { handshake = 1 } }",
        }
        assert(server, tostring(err) .. "\n" .. tostring(stderr))
    end)

    teardown(function()
        if server then
            server:cleanup()
        end
    end)

    -- Connects and sends raw, then reads until the server closes. Returns
    -- what the server sent and when it closed (seconds after sending), or
    -- nil if it had not closed within limit seconds.
    local function wait_for_close(raw, limit)
        local socket = require "socket"
        local sock = assert(socket.tcp())
        sock:settimeout(5)
        assert(sock:connect(server.host, server.port))
        local t0 = socket.gettime()
        if raw ~= "" then
            assert(sock:send(raw))
        end
        local got = {}
        while socket.gettime() - t0 < limit do
            sock:settimeout(0.1)
            local data, err, partial = sock:receive(4096)
            got[#got + 1] = data or partial or ""
            if err and err ~= "timeout" then
                sock:close()
                return table.concat(got), socket.gettime() - t0
            end
        end
        sock:close()
        return table.concat(got), nil
    end

    it("4.1: a connection that sends nothing is closed after about 1 s, without a 101", function()
        local got, after = wait_for_close("", 4)
        assert(after, "the server did not close the connection within 4 s")
        assert.is_true(after > 0.7, "closed too early: " .. after)
        assert.falsy(got:find(" 101 ", 1, true))
    end)

    it("4.1: a head left unfinished is closed after about 1 s, without a 101", function()
        local got, after = wait_for_close(upgrade_request("/echo"):sub(1, 40), 4)
        assert(after, "the server did not close the connection within 4 s")
        assert.is_true(after > 0.7, "closed too early: " .. after)
        assert.falsy(got:find(" 101 ", 1, true))
    end)

    it("4.1: a head trickled a byte every 0.3 s is still cut after about 1 s in all", function()
        -- The timeout bounds the whole handshake, not the silence between
        -- bytes: otherwise a slow client could hold a connection forever.
        local socket = require "socket"
        local sock = assert(socket.tcp())
        sock:settimeout(5)
        assert(sock:connect(server.host, server.port))
        sock:setoption("tcp-nodelay", true)
        local raw = upgrade_request("/echo")
        local t0 = socket.gettime()
        local closed_after
        for i = 1, 15 do
            sock:send(raw:sub(i, i))
            sock:settimeout(0.3)
            local _, err = sock:receive(1)
            if err ~= "timeout" then
                closed_after = socket.gettime() - t0
                break
            end
        end
        sock:close()
        assert(closed_after, "still open after 4.5 s of trickling")
        assert.is_true(closed_after < 2.5, "closed only after " .. closed_after .. " s")
    end)

    it("a completed handshake is not cut by the handshake timeout", function()
        local ws, err = server:connect("/echo")
        assert(ws, tostring(err))
        testing.sleep(1.5)
        assert(ws:send("still here"))
        assert.equal("still here", ws:receive_message(5))
        ws:shutdown()
    end)

    it("the server is still alive", function()
        assert.is_true(server:alive())
        local ws, err = server:connect("/echo")
        assert(ws, tostring(err))
        ws:shutdown()
    end)
end)
