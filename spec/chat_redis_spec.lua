-- apps/chat_redis.lua as it ships, against a real redis-server: each
-- message is stored in a list per room (trimmed), a newcomer gets the last
-- ten and then the live messages, rooms are apart, and the chat goes on
-- (without history) while Redis is down.
package.path = "spec/?.lua;" .. package.path
local testing = require "moonport.testing"
local redis = require "support.redis"

describe("apps/chat_redis.lua", function()
    local server, rs

    setup(function()
        local err, log
        rs, err, log = redis.start()
        assert(rs, tostring(err) .. "\n" .. tostring(log))
        server, err, log = testing.start {
            apps = { chat_redis = assert(testing.read_file("apps/chat_redis.lua")) },
            config = [[return { routes = { ["/rooms/:room"] = "apps/chat_redis.lua" } }]],
            env = "MOONPORT_CHAT_REDIS=" .. testing.quote(rs:url()),
        }
        assert(server, tostring(err) .. "\n" .. tostring(log))
    end)

    teardown(function()
        if server then server:cleanup() end
        if rs then rs:stop() end
    end)

    local function connect(path)
        local ws, resp, err = server:connect(path)
        assert(ws, tostring(resp) .. " " .. tostring(err and err.raw))
        return ws
    end

    local function recv(ws)
        local data, err = ws:receive_message(5)
        assert(data, "expected a message: " .. tostring(err))
        return data
    end

    it("stores each message and gives a newcomer the last ten, then the live ones", function()
        local alice = connect("/rooms/one?name=alice")
        assert.are.equal("* alice joined", recv(alice)) -- no history yet
        for i = 1, 12 do
            assert(alice:send("m" .. i))
            assert.are.equal("alice: m" .. i, recv(alice))
        end
        assert.are.equal("12\n", (rs:cli("LLEN", "moonport:chat:one")))
        assert.are.equal("alice: m12\n", (rs:cli("LINDEX", "moonport:chat:one", -1)))

        local bob = connect("/rooms/one?name=bob")
        for i = 3, 12 do assert.are.equal("alice: m" .. i, recv(bob)) end
        assert.are.equal("* bob joined", recv(bob))
        assert.are.equal("* bob joined", recv(alice))

        assert(bob:send("hi all"))
        assert.are.equal("bob: hi all", recv(bob))
        assert.are.equal("bob: hi all", recv(alice))

        -- Another room has its own history (none) and its own messages.
        local carol = connect("/rooms/two?name=carol")
        assert.are.equal("* carol joined", recv(carol))
        assert(carol:send("elsewhere"))
        assert.are.equal("carol: elsewhere", recv(carol))

        local dave = connect("/rooms/one?name=dave")
        for i = 4, 12 do assert.are.equal("alice: m" .. i, recv(dave)) end
        assert.are.equal("bob: hi all", recv(dave))
        assert.are.equal("* dave joined", recv(dave))
        assert.are.equal("* dave joined", recv(alice))
        assert.are.equal("* dave joined", recv(bob))
        for _, ws in ipairs({ alice, bob, carol, dave }) do ws:close() end
    end)

    it("keeps the last 100 of a room", function()
        local ws = connect("/rooms/long?name=erin")
        assert.are.equal("* erin joined", recv(ws))
        for i = 1, 150 do assert(ws:send("n" .. i)) end
        for i = 1, 150 do assert.are.equal("erin: n" .. i, recv(ws)) end
        assert.are.equal("100\n", (rs:cli("LLEN", "moonport:chat:long")))
        assert.are.equal("erin: n51\n", (rs:cli("LINDEX", "moonport:chat:long", 0)))
        ws:close()
    end)

    it("goes on without history while Redis is down", function()
        rs:kill()
        local ws = connect("/rooms/one?name=frank")
        assert.are.equal("* history unavailable", recv(ws))
        assert.are.equal("* frank joined", recv(ws))
        assert(ws:send("still here"))
        assert.are.equal("frank: still here", recv(ws))
        server:wait_log("chat_redis: not stored: ", 5)
        rs:restart()
        assert(ws:send("stored again"))
        assert.are.equal("frank: stored again", recv(ws))
        assert.are.equal("frank: stored again\n", (rs:cli("LINDEX", "moonport:chat:one", -1)))
        ws:close()
        assert.is_true(server:alive())
    end)
end)
