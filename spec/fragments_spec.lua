-- limits.max_fragments against the real binary: the default accepts what
-- the Autobahn suite sends (cases 9.3.1 and 9.4.1: a 4 MiB message as
-- 65,536 frames of 64 bytes and an empty final frame), and with a small
-- configured limit both edges hold (max_fragments frames pass, one more
-- fails with 1009), for text and binary, with permessage-deflate off and
-- on. The frames are built by spec/support/fragments_client.py.
local testing = require "moonport.testing"

local ECHO = [[
local app = {}
function app.on_message(ws, data, kind) ws:send(data, kind) end
return app
]]

-- Run one case; its output must end with "0 failed".
local function case(server, kind, frames, size, compress, expect)
    local status, out = testing.capture(table.concat({"/usr/bin/python3",
        "spec/support/fragments_client.py", server.port, "/echo", kind, frames, size,
        compress and 1 or 0, expect}, " "), 120)
    assert.are.equal(0, status, out)
    assert.matches(": 0 failed", out, 1, true)
end

describe("the default max_fragments", function()
    local server
    setup(function()
        server = assert(testing.start {apps = {echo = ECHO}})
    end)
    teardown(function() server:cleanup() end)

    it("echoes Autobahn 9.3.1: 4 MiB of text in 64-byte frames plus an empty final frame",
        function()
            case(server, "text", 65537, -64, false, "echo")
        end)

    it("echoes Autobahn 9.4.1: the same message as binary", function()
        case(server, "binary", 65537, -64, false, "echo")
    end)

    it("is still alive", function()
        assert.is_true(server:alive())
    end)
end)

describe("max_fragments = 16", function()
    local server
    setup(function()
        server = assert(testing.start {
            apps = {echo = ECHO},
            config = [[return { apps = "apps", limits = { max_fragments = 16 },
                                compression = { threshold = 0 } }]],
        })
    end)
    teardown(function() server:cleanup() end)

    for _, compress in ipairs {false, true} do
        local how = compress and "compressed" or "uncompressed"
        for _, kind in ipairs {"text", "binary"} do
            it("echoes a " .. how .. " " .. kind .. " message in exactly 16 frames", function()
                case(server, kind, 16, 100, compress, "echo")
            end)

            it("fails a " .. how .. " " .. kind .. " message in 17 frames with 1009", function()
                case(server, kind, 17, 100, compress, "1009")
                assert(server:wait_log("message over the fragment limit", 5))
            end)
        end
    end

    it("is still alive", function()
        assert.is_true(server:alive())
        local ws = assert(server:connect("/echo"))
        ws:send("alive?")
        assert.are.equal("alive?", (ws:receive_message(5)))
        ws:close()
    end)
end)
