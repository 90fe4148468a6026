-- Interop: clients moonport's authors did not write (python3-websockets,
-- node's ws) against the echo app. Each client script checks the echoes
-- itself and exits 0 only if all held; a missing library is a failure,
-- never a skip.
local testing = require "moonport.testing"
local quote = testing.quote

local ECHO = [[
local app = {}
function app.on_message(ws, data, kind) ws:send(data, kind) end
return app
]]

local function run(cmd)
    return testing.capture(cmd, 90)
end

local count = testing.count

local CLIENTS = {
    {
        name = "python3-websockets (/usr/bin/python3 spec/interop/echo_client.py)",
        command = "/usr/bin/python3 spec/interop/echo_client.py",
        summary = "echo_client.py: all 7 checks passed",
    },
    {
        name = "node ws (node spec/interop/echo_client.js)",
        -- Debian's node-ws lives in /usr/share/nodejs, which node only
        -- searches when NODE_PATH says so.
        command = "env NODE_PATH=" .. quote(((os.getenv("NODE_PATH") or "") ~= "" and
            os.getenv("NODE_PATH") .. ":" or "") .. "/usr/share/nodejs") ..
            " node spec/interop/echo_client.js",
        summary = "echo_client.js: all 7 checks passed",
    },
}

describe("interop with independent clients", function()
    local server

    before_each(function()
        local err, stderr
        server, err, stderr = testing.start {apps = {echo = ECHO}}
        assert(server, tostring(err) .. "\n" .. tostring(stderr))
    end)

    after_each(function()
        if server then
            server:cleanup()
            server = nil
        end
    end)

    for _, c in ipairs(CLIENTS) do
        it(c.name .. ": text, binary, 1 MiB and empty messages come back identical, " ..
            "then a normal close", function()
            local url = string.format("ws://%s:%d/echo", server.host, server.port)
            local status, output = run(c.command .. " " .. quote(url))
            assert.equal(0, status, "the client failed:\n" .. output)
            assert.truthy(output:find(c.summary, 1, true), "no summary line:\n" .. output)

            -- The server saw it too: one connection, ended with 1000, and
            -- no protocol complaint.
            assert(server:wait_log("WSDISCONNECT /echo[^\n]*code=1000", 5),
                "no clean disconnect in the access log:\n" .. server:stdout())
            local access = server:stdout()
            assert.equal(1, count(access, "\"WSCONNECT /echo\""), access)
            assert.equal(1, count(access, "\"WSDISCONNECT /echo\""), access)
            local err = server:stderr()
            assert.is_nil(err:find("failing the connection", 1, true), err)
            assert.is_nil(err:find("error ", 1, true), err)
            assert.is_true(server:alive(), "the server died")
        end)
    end
end)
