-- apps/auth_http.lua, the example of HTTP authentication on connect,
-- served as it ships, through the real binary, against the python backend
-- (spec/support/httpbackend.py /auth): a good token is accepted with the
-- backend's user name, the backend's 403 and 401 reach the client as the
-- handshake's status, no token is a 401 without asking, and a backend that
-- cannot be reached is a 503.
local testing = require "moonport.testing"
local backend = require "support.backend"

local SOURCE = assert(testing.read_file("apps/auth_http.lua"))

describe("apps/auth_http.lua", function()
    local server, down, dir, pid, port

    setup(function()
        dir = testing.temp_dir()
        port, _, pid = backend(dir, "http", "spec/support/httpbackend.py")
        local err, out
        server, err, out = testing.start {
            apps = { auth_http = SOURCE },
            env = "MOONPORT_AUTH_URL=http://127.0.0.1:" .. port .. "/auth",
        }
        assert(server, tostring(err) .. "\n" .. tostring(out))
        down, err, out = testing.start {
            apps = { auth_http = SOURCE },
            env = "MOONPORT_AUTH_URL=http://127.0.0.1:" .. testing.free_port() .. "/auth",
        }
        assert(down, tostring(err) .. "\n" .. tostring(out))
    end)

    teardown(function()
        if server then server:cleanup() end
        if down then down:cleanup() end
        if pid then os.execute("kill " .. pid .. " 2>/dev/null") end
        if dir then os.execute("rm -rf " .. testing.quote(dir)) end
    end)

    local function refused(srv, path)
        local ws, err, response = srv:connect(path)
        assert.is_nil(ws, "accepted: " .. path)
        assert(response, tostring(err))
        assert.is_nil(response.headers["sec-websocket-accept"])
        return response.status
    end

    it("accepts a token the backend knows, with the user it names", function()
        local ws = assert(server:connect("/auth_http?token=good"))
        assert.are.equal("welcome, user-1", (ws:receive_message(5)))
        assert(ws:send("hello"))
        assert.are.equal("user-1: hello", (ws:receive_message(5)))
        ws:close()
    end)

    it("refuses with the backend's status", function()
        assert.are.equal(403, refused(server, "/auth_http?token=banned"))
        assert.are.equal(401, refused(server, "/auth_http?token=forged"))
    end)

    it("refuses a missing token without asking the backend", function()
        assert.are.equal(401, refused(server, "/auth_http"))
        assert.are.equal(401, refused(server, "/auth_http?token="))
    end)

    it("refuses with 503 when the backend cannot be reached", function()
        assert.are.equal(503, refused(down, "/auth_http?token=good"))
        assert.truthy(down:wait_log("auth backend: connection refused", 5))
    end)

    it("serves many handshakes waiting on the backend at once", function()
        local socks = {}
        for i = 1, 50 do socks[i] = assert(server:connect("/auth_http?token=good")) end
        for i = 1, 50 do
            assert.are.equal("welcome, user-1", (socks[i]:receive_message(5)))
            socks[i]:close()
        end
        assert.is_true(server:alive())
    end)
end)
