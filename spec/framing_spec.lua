-- Base framing (RFC 6455 section 5), UTF-8 of text messages (8.1) and the
-- size limits, against the real server and its echo app. Every failure
-- must come back as a close frame with the right code, then a closed TCP
-- connection, and leave the server serving others.
local client = require "moonport.client"
local testing = require "moonport.testing"

local ECHO = [[
local app = {}
function app.on_message(ws, data, kind) ws:send(data, kind) end
return app
]]

local function start(config)
    local server, err, stderr = testing.start {apps = {echo = ECHO}, config = config}
    assert(server, tostring(err) .. "\n" .. tostring(stderr))
    return server
end

-- The server must fail the connection with code: a close frame carrying
-- it, then the end of the TCP stream.
local function assert_fails_with(ws, code)
    local got, reason, tcp_closed = ws:expect_close(5)
    assert.equal(code, got, "close code (" .. tostring(reason) .. ")")
    assert.is_true(tcp_closed, "the server did not close TCP after its close frame")
    ws:shutdown()
end

local function open(server)
    local ws, err = server:connect("/echo")
    assert(ws, tostring(err))
    return ws
end

local function assert_echo(ws, data, kind)
    local got, got_kind, code, reason = ws:receive_message(10)
    assert(got, "no echo: " .. tostring(got_kind) .. " " .. tostring(code) .. " " .. tostring(reason))
    assert.equal(#data, #got)
    assert.is_true(data == got, "the echo differs from what was sent")
    assert.equal(kind or "text", got_kind)
end

describe("framing", function()
    local server

    setup(function()
        server = start()
    end)

    teardown(function()
        if server then
            server:cleanup()
        end
    end)

    describe("5.1, 5.3: masking", function()
        it("5.1: an unmasked client frame fails with 1002", function()
            local ws = open(server)
            ws:send_frame {opcode = "text", payload = "hello", mask = false}
            assert_fails_with(ws, 1002)
        end)

        it("5.1: an unmasked client control frame fails with 1002", function()
            local ws = open(server)
            ws:send_frame {opcode = "ping", payload = "hello", mask = false}
            assert_fails_with(ws, 1002)
        end)

        it("5.3: an all-zero masking key is a valid mask", function()
            local ws = open(server)
            ws:send_frame {opcode = "text", payload = "zero key", key = "\0\0\0\0"}
            assert_echo(ws, "zero key")
            ws:shutdown()
        end)

        it("5.1: the server's frames are not masked and have no RSV bits", function()
            local ws = open(server)
            ws:send("look")
            local f = assert(ws:receive(5))
            assert.is_false(f.masked)
            assert.equal(0, f.rsv)
            assert.is_true(f.fin)
            assert.equal(1, f.opcode)
            assert.equal("look", f.payload)
            ws:shutdown()
        end)
    end)

    describe("5.2: reserved bits without an extension", function()
        for _, bit in ipairs {{"RSV1", 4}, {"RSV2", 2}, {"RSV3", 1}, {"all three", 7}} do
            it(bit[1] .. " set fails with 1002", function()
                local ws = open(server)
                ws:send_frame {opcode = "text", payload = "x", rsv = bit[2]}
                assert_fails_with(ws, 1002)
            end)
        end

        it("RSV1 on a ping fails with 1002", function()
            local ws = open(server)
            ws:send_frame {opcode = "ping", payload = "x", rsv = 4}
            assert_fails_with(ws, 1002)
        end)
    end)

    describe("5.2: reserved opcodes", function()
        for _, op in ipairs {3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF} do
            it(string.format("opcode 0x%X fails with 1002", op), function()
                local ws = open(server)
                ws:send_frame {opcode = op, payload = "x"}
                assert_fails_with(ws, 1002)
            end)
        end

        it("a reserved opcode inside a fragmented message fails with 1002", function()
            local ws = open(server)
            ws:send_frame {opcode = "text", fin = false, payload = "a"}
            ws:send_frame {opcode = 3, fin = false, payload = "b"}
            assert_fails_with(ws, 1002)
        end)
    end)

    describe("5.5: control frames", function()
        it("5.5.2-5.5.3: a ping is answered with a pong carrying the same payload", function()
            local ws = open(server)
            local payload = {}
            for i = 0, 124 do
                payload[#payload + 1] = string.char(i)
            end
            payload = table.concat(payload)
            ws:ping(payload)
            local f = assert(ws:receive(5))
            assert.equal(0xA, f.opcode)
            assert.is_true(f.fin)
            assert.equal(payload, f.payload)
            ws:shutdown()
        end)

        it("5.5.2: an empty ping gets an empty pong", function()
            local ws = open(server)
            ws:ping("")
            local f = assert(ws:receive(5))
            assert.equal(0xA, f.opcode)
            assert.equal("", f.payload)
            ws:shutdown()
        end)

        it("5.5.3: an unsolicited pong is ignored", function()
            local ws = open(server)
            ws:send_frame {opcode = "pong", payload = "unasked"}
            ws:send("after")
            assert_echo(ws, "after")
            ws:shutdown()
        end)

        it("5.5: a ping with a 126-byte payload fails with 1002", function()
            local ws = open(server)
            ws:ping(string.rep("p", 126))
            assert_fails_with(ws, 1002)
        end)

        it("5.5: a pong with a 126-byte payload fails with 1002", function()
            local ws = open(server)
            ws:send_frame {opcode = "pong", payload = string.rep("p", 126)}
            assert_fails_with(ws, 1002)
        end)

        it("5.5: a ping whose header claims 126 bytes fails with 1002 without its payload", function()
            local ws = open(server)
            ws:send_frame {opcode = "ping", payload = "", length = 126}
            assert_fails_with(ws, 1002)
        end)

        it("5.5: a fragmented ping (FIN clear) fails with 1002", function()
            local ws = open(server)
            ws:send_frame {opcode = "ping", fin = false, payload = "a"}
            assert_fails_with(ws, 1002)
        end)

        it("5.5: a fragmented close (FIN clear) fails with 1002", function()
            local ws = open(server)
            ws:send_frame {opcode = "close", fin = false, payload = "\3\232"}
            assert_fails_with(ws, 1002)
        end)
    end)

    describe("5.4: fragmentation", function()
        it("a text message in 100 fragments is echoed as one message", function()
            local ws = open(server)
            local parts = {}
            for i = 1, 100 do
                parts[i] = "part" .. i .. ";"
                ws:send_frame {opcode = i == 1 and "text" or "continuation", fin = i == 100,
                    payload = parts[i]}
            end
            assert_echo(ws, table.concat(parts))
            ws:shutdown()
        end)

        it("a binary message in 50 fragments is echoed as one binary message", function()
            local ws = open(server)
            local parts = {}
            for i = 1, 50 do
                parts[i] = string.char(i % 256, 0, 255, (i * 7) % 256)
                ws:send_frame {opcode = i == 1 and "binary" or "continuation", fin = i == 50,
                    payload = parts[i]}
            end
            assert_echo(ws, table.concat(parts), "binary")
            ws:shutdown()
        end)

        it("an empty first fragment is allowed", function()
            local ws = open(server)
            ws:send_frame {opcode = "text", fin = false, payload = ""}
            ws:send_frame {opcode = "continuation", fin = true, payload = "rest"}
            assert_echo(ws, "rest")
            ws:shutdown()
        end)

        it("empty middle and last fragments are allowed", function()
            local ws = open(server)
            ws:send_frame {opcode = "binary", fin = false, payload = "mid"}
            ws:send_frame {opcode = "continuation", fin = false, payload = ""}
            ws:send_frame {opcode = "continuation", fin = true, payload = ""}
            assert_echo(ws, "mid", "binary")
            ws:shutdown()
        end)

        it("a message made only of empty fragments is an empty message", function()
            local ws = open(server)
            ws:send_frame {opcode = "text", fin = false, payload = ""}
            ws:send_frame {opcode = "continuation", fin = true, payload = ""}
            assert_echo(ws, "")
            ws:shutdown()
        end)

        it("5.4: pings between fragments are answered at once, and the message still arrives whole",
            function()
                local ws = open(server)
                ws:send_frame {opcode = "text", fin = false, payload = "frag1 "}
                ws:ping("first")
                local f = assert(ws:receive(5))
                assert.equal(0xA, f.opcode)
                assert.equal("first", f.payload)
                ws:send_frame {opcode = "continuation", fin = false, payload = "frag2 "}
                ws:ping("second")
                f = assert(ws:receive(5))
                assert.equal(0xA, f.opcode)
                assert.equal("second", f.payload)
                ws:send_frame {opcode = "continuation", fin = true, payload = "frag3"}
                assert_echo(ws, "frag1 frag2 frag3")
                ws:shutdown()
            end)

        it("5.4: a pong between fragments is ignored", function()
            local ws = open(server)
            ws:send_frame {opcode = "binary", fin = false, payload = "a"}
            ws:send_frame {opcode = "pong", payload = "x"}
            ws:send_frame {opcode = "continuation", fin = true, payload = "b"}
            assert_echo(ws, "ab", "binary")
            ws:shutdown()
        end)

        it("a continuation frame with no message started fails with 1002", function()
            local ws = open(server)
            ws:send_frame {opcode = "continuation", fin = true, payload = "orphan"}
            assert_fails_with(ws, 1002)
        end)

        it("a continuation frame after a complete message fails with 1002", function()
            local ws = open(server)
            ws:send("done")
            assert_echo(ws, "done")
            ws:send_frame {opcode = "continuation", fin = false, payload = "late"}
            assert_fails_with(ws, 1002)
        end)

        it("a new text frame inside a fragmented message fails with 1002", function()
            local ws = open(server)
            ws:send_frame {opcode = "text", fin = false, payload = "start"}
            ws:send_frame {opcode = "text", fin = true, payload = "again"}
            assert_fails_with(ws, 1002)
        end)

        it("a new binary frame inside a fragmented text message fails with 1002", function()
            local ws = open(server)
            ws:send_frame {opcode = "text", fin = false, payload = "start"}
            ws:send_frame {opcode = "binary", fin = false, payload = "again"}
            assert_fails_with(ws, 1002)
        end)
    end)

    describe("8.1: UTF-8 of text messages", function()
        -- 1, 2, 3 and 4-byte sequences, including the edges of the ranges.
        local valid = "a\195\169\226\130\172\240\157\132\158z\194\128\223\191\224\160\128" ..
            "\237\159\191\238\128\128\239\191\191\240\144\128\128\244\143\191\191"

        it("a valid multi-byte text split at every byte across two fragments is echoed", function()
            local ws = open(server)
            -- Both fragments non-empty: empty fragments have their own test.
            for cut = 1, #valid - 1 do
                ws:send_frame {opcode = "text", fin = false, payload = valid:sub(1, cut)}
                ws:send_frame {opcode = "continuation", fin = true, payload = valid:sub(cut + 1)}
                assert_echo(ws, valid)
            end
            ws:shutdown()
        end)

        it("a valid multi-byte text sent one byte per fragment is echoed", function()
            local ws = open(server)
            for i = 1, #valid do
                ws:send_frame {opcode = i == 1 and "text" or "continuation", fin = i == #valid,
                    payload = valid:sub(i, i)}
            end
            assert_echo(ws, valid)
            ws:shutdown()
        end)

        it("binary messages are not checked for UTF-8", function()
            local ws = open(server)
            ws:send("\255\254\192\128\237\160\128", "binary")
            assert_echo(ws, "\255\254\192\128\237\160\128", "binary")
            ws:shutdown()
        end)

        local invalid = {
            ["a 0xFF byte"] = "ok \255",
            ["a lone continuation byte"] = "ok \128",
            ["an overlong 2-byte form (C0 AF)"] = "\192\175",
            ["an overlong 3-byte form (E0 80 AF)"] = "\224\128\175",
            ["an overlong 4-byte form (F0 80 80 AF)"] = "\240\128\128\175",
            ["a UTF-16 surrogate (ED A0 80)"] = "\237\160\128",
            ["a code point over U+10FFFF (F4 90 80 80)"] = "\244\144\128\128",
            ["a 5-byte form (F8 88 80 80 80)"] = "\248\136\128\128\128",
            ["a sequence cut by the end of the message (E2 82)"] = "ok \226\130",
            ["a lead byte followed by ASCII (E2 28 A1)"] = "\226\40\161",
        }
        for what, bad in pairs(invalid) do
            it("a text message with " .. what .. " fails with 1007", function()
                local ws = open(server)
                ws:send(bad)
                assert_fails_with(ws, 1007)
            end)
        end

        -- Fail fast: the close must come while the message is still open,
        -- so these never send the final fragment.
        it("invalid UTF-8 in the first fragment fails with 1007 before the message ends", function()
            local ws = open(server)
            ws:send_frame {opcode = "text", fin = false, payload = "good \255 bad"}
            assert_fails_with(ws, 1007)
        end)

        it("invalid UTF-8 in a middle fragment fails with 1007 before the message ends", function()
            local ws = open(server)
            ws:send_frame {opcode = "text", fin = false, payload = "good"}
            ws:send_frame {opcode = "continuation", fin = false, payload = "\237\160\128"}
            assert_fails_with(ws, 1007)
        end)

        it("a sequence made invalid by the next fragment fails with 1007 before the message ends",
            function()
                local ws = open(server)
                ws:send_frame {opcode = "text", fin = false, payload = "euro \226\130"}
                ws:send_frame {opcode = "continuation", fin = false, payload = "(more"}
                assert_fails_with(ws, 1007)
            end)

        it("a prefix that no continuation can complete (F4 90) fails with 1007 at once", function()
            local ws = open(server)
            ws:send_frame {opcode = "text", fin = false, payload = "\206\186\225\189\185\244\144"}
            assert_fails_with(ws, 1007)
        end)

        it("an incomplete sequence at the end of a fragmented message fails with 1007", function()
            local ws = open(server)
            ws:send_frame {opcode = "text", fin = false, payload = "abc"}
            ws:send_frame {opcode = "continuation", fin = true, payload = "\240\157\132"}
            assert_fails_with(ws, 1007)
        end)
    end)

    describe("5.2: frames split across TCP segments", function()
        it("frames arriving one byte at a time are assembled", function()
            local ws = open(server)
            local bytes = client.encode_frame {opcode = "text", fin = false, payload = "split "} ..
                client.encode_frame {opcode = "ping", payload = "mid"} ..
                client.encode_frame {opcode = "continuation", payload = string.rep("z", 300)}
            for i = 1, #bytes do
                assert(ws:send_raw(bytes:sub(i, i)))
                if i % 8 == 0 then
                    testing.sleep(0.001)
                end
            end
            local pong = assert(ws:receive(5))
            assert.equal(0xA, pong.opcode)
            assert.equal("mid", pong.payload)
            assert_echo(ws, "split " .. string.rep("z", 300))
            ws:shutdown()
        end)

        -- Two writes with a pause between, so the server reads them apart:
        -- the first ends inside a frame header or a control frame, whose
        -- bytes the server keeps until the rest arrives.
        local function send_in_two(ws, bytes, cut)
            assert(ws:send_raw(bytes:sub(1, cut)))
            testing.sleep(0.005)
            assert(ws:send_raw(bytes:sub(cut + 1)))
        end

        it("a ping cut at every byte is answered once, whole", function()
            local ws = open(server)
            local size = #client.encode_frame {opcode = "ping", payload = string.rep("p", 40)}
            for cut = 1, size - 1 do
                local payload = string.format("%03d", cut) .. string.rep("p", 37)
                send_in_two(ws, client.encode_frame {opcode = "ping", payload = payload}, cut)
                local pong = assert(ws:receive(5))
                assert.equal(0xA, pong.opcode)
                assert.equal(payload, pong.payload)
            end
            ws:shutdown()
        end)

        it("a frame header cut at every byte (16- and 64-bit lengths) is completed", function()
            local ws = open(server)
            for _, case in ipairs {{size = 300, header = 8}, {size = 70000, header = 14}} do
                for cut = 1, case.header - 1 do
                    local data = string.format("%02d", cut) .. string.rep("h", case.size - 2)
                    send_in_two(ws, client.encode_frame {opcode = "text", payload = data}, cut)
                    assert_echo(ws, data)
                end
            end
            ws:shutdown()
        end)
    end)

    describe("5.2: payload lengths", function()
        local sizes = {0, 1, 125, 126, 127, 65535, 65536, 1024 * 1024}
        for _, size in ipairs(sizes) do
            it(size .. "-byte text and binary messages are echoed intact", function()
                local ws = open(server)
                local text = string.rep("0123456789abcdef", math.ceil(size / 16)):sub(1, size)
                local bin = {}
                for i = 0, 255 do
                    bin[#bin + 1] = string.char(i)
                end
                bin = string.rep(table.concat(bin), math.ceil(size / 256)):sub(1, size)
                ws:send(text)
                assert_echo(ws, text)
                ws:send_frame {opcode = "binary", payload = bin}
                assert_echo(ws, bin, "binary")
                ws:shutdown()
            end)
        end
    end)

    describe("10.4: default limits", function()
        it("the header of a frame one byte over the default max_message (16 MiB) fails with 1009",
            function()
                local ws = open(server)
                ws:send_frame {opcode = "binary", payload = "", length = 16 * 1024 * 1024 + 1}
                assert_fails_with(ws, 1009)
            end)

        -- n one-byte fragments of one text message, final or not.
        local function fragments(n, final)
            local zero = "\0\0\0\0" -- no masking work: 131072 frames stay cheap
            local out = {client.encode_frame {opcode = "text", fin = false, payload = "f", key = zero}}
            local middle = client.encode_frame {opcode = "continuation", fin = false, payload = "f",
                key = zero}
            for i = 2, n - 1 do
                out[i] = middle
            end
            out[n] = client.encode_frame {opcode = "continuation", fin = final, payload = "f",
                key = zero}
            return table.concat(out)
        end

        it("a message in 131072 fragments (the default max_fragments) is echoed", function()
            local ws = open(server)
            assert(ws:send_raw(fragments(131072, true)))
            assert_echo(ws, string.rep("f", 131072))
            ws:shutdown()
        end)

        it("a message in 131073 fragments fails with 1009", function()
            local ws = open(server)
            assert(ws:send_raw(fragments(131073, false)))
            assert_fails_with(ws, 1009)
        end)
    end)

    it("the server is still alive", function()
        assert.is_true(server:alive())
        local ws = open(server)
        ws:send("alive?")
        assert_echo(ws, "alive?")
        ws:shutdown()
    end)
end)

describe("limits (max_message = 1024, max_fragments = 8)", function()
    local server

    setup(function()
        server = start "return { limits = { max_message = 1024, max_fragments = 8 } }"
    end)

    teardown(function()
        if server then
            server:cleanup()
        end
    end)

    it("a message of exactly max_message bytes is echoed", function()
        local ws = open(server)
        local data = string.rep("m", 1024)
        ws:send(data)
        assert_echo(ws, data)
        ws:shutdown()
    end)

    it("10.4: a single frame of max_message + 1 bytes fails with 1009", function()
        local ws = open(server)
        ws:send(string.rep("m", 1025))
        assert_fails_with(ws, 1009)
    end)

    it("10.4: the header of a 1 MiB frame alone (no payload sent) fails with 1009", function()
        local ws = open(server)
        ws:send_frame {opcode = "binary", payload = "", length = 1024 * 1024}
        assert_fails_with(ws, 1009)
    end)

    it("10.4: the header of a frame of 2^40 bytes (64-bit length) fails with 1009", function()
        local ws = open(server)
        ws:send_frame {opcode = "text", payload = "", length = 2 ^ 40}
        assert_fails_with(ws, 1009)
    end)

    it("10.4: fragments adding up past max_message fail with 1009 at the header that goes over",
        function()
            local ws = open(server)
            ws:send_frame {opcode = "text", fin = false, payload = string.rep("a", 400)}
            ws:send_frame {opcode = "continuation", fin = false, payload = string.rep("b", 400)}
            -- Only the header of the third fragment: 1200 > 1024.
            ws:send_frame {opcode = "continuation", fin = true, payload = "", length = 400}
            assert_fails_with(ws, 1009)
        end)

    it("a message in max_fragments (8) fragments is echoed", function()
        local ws = open(server)
        for i = 1, 8 do
            ws:send_frame {opcode = i == 1 and "text" or "continuation", fin = i == 8,
                payload = tostring(i)}
        end
        assert_echo(ws, "12345678")
        ws:shutdown()
    end)

    it("10.4: a message with more than max_fragments fragments fails with 1009", function()
        local ws = open(server)
        -- Nine open fragments, no final one: the limit must bite on its own.
        for i = 1, 9 do
            ws:send_frame {opcode = i == 1 and "text" or "continuation", fin = false,
                payload = tostring(i)}
        end
        assert_fails_with(ws, 1009)
    end)

    it("control frames between fragments do not count as fragments", function()
        local ws = open(server)
        for i = 1, 8 do
            ws:send_frame {opcode = i == 1 and "text" or "continuation", fin = i == 8,
                payload = tostring(i)}
            ws:ping("p" .. i)
        end
        local pongs = 0
        local data, kind
        while not data do
            local f = assert(ws:receive(5))
            if f.opcode == 0xA then
                pongs = pongs + 1
            else
                assert.equal(1, f.opcode)
                data, kind = f.payload, "text"
            end
        end
        assert.equal("12345678", data)
        assert.equal("text", kind)
        ws:shutdown()
        assert.is_true(pongs >= 7)
    end)

    it("the server is still alive", function()
        assert.is_true(server:alive())
        local ws = open(server)
        ws:send("alive?")
        assert_echo(ws, "alive?")
        ws:shutdown()
    end)
end)
