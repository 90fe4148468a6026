-- The config file's keys (README "Config file"): a key moonport does not
-- know, at the top level or inside a section, is a mistake to report (one
-- line naming the key by its full path, with the closest known key as a
-- suggestion, exit 1), never a setting silently ignored. On SIGHUP such a
-- file changes nothing and the log says why.
local testing = require "moonport.testing"
local quote = testing.quote

local BIN = os.getenv("MOONPORT_BIN") or "bin/moonport"

local ECHO = [[
local app = {}
function app.on_message(ws, data, kind) ws:send(data, kind) end
return app
]]

describe("config keys", function()
    local dir

    setup(function()
        dir = testing.temp_dir()
        assert(testing.run("mkdir " .. quote(dir .. "/apps")))
        testing.write_file(dir .. "/apps/echo.lua", ECHO)
    end)

    teardown(function()
        testing.run("rm -rf " .. quote(dir))
    end)

    -- Start with a config whose table holds body; the exit status and the
    -- output (a start that should fail must not hang: killed after 10 s).
    local function start_with(body)
        local file = dir .. "/config.lua"
        testing.write_file(file, "return { apps = 'apps', " .. body .. " }\n")
        return testing.capture(quote(BIN) .. " --port 0 --config " .. quote(file) ..
                               " </dev/null", 10)
    end

    local cases = {
        {"prot = 8080", "prot", "port"},
        {"timout = 3", "timout", "timeouts"},
        {"limits = { max_mesage = 1024 }", "limits.max_mesage", "limits.max_message"},
        {"limits = { max_fragment = 8 }", "limits.max_fragment", "limits.max_fragments"},
        {"timeouts = { idel = 5 }", "timeouts.idel", "timeouts.idle"},
        {"compression = { enable = false }", "compression.enable", "compression.enabled"},
        {"log = { levl = 'warn' }", "log.levl", "log.level"},
        {"tls = { cert = 'c.pem', kye = 'k.pem' }", "tls.kye", "tls.key"},
        -- A section's key written at the top level: the suggestion says where it goes.
        {"max_message = 1024", "max_message", "limits.max_message"},
    }
    for _, c in ipairs(cases) do
        local body, key, hint = c[1], c[2], c[3]
        it("refuses " .. body .. ": exit 1, one line naming " .. key .. " and " .. hint, function()
            local status, out = start_with(body)
            assert.are.equal(1, status, out)
            local lines = {}
            for line in out:gmatch("[^\n]+") do
                lines[#lines + 1] = line
            end
            assert.are.equal(1, #lines, out)
            assert.truthy(lines[1]:find('config.lua: unknown key "' .. key ..
                '" (did you mean "' .. hint .. '"?)', 1, true), lines[1])
        end)
    end

    it("lists the known keys when nothing is close", function()
        local status, out = start_with("limits = { zzzzzzzzzz = 1 }")
        assert.are.equal(1, status, out)
        assert.truthy(out:find('unknown key "limits.zzzzzzzzzz" (the known keys of limits are ' ..
            'max_message, max_fragments,', 1, true), out)
    end)

    it("refuses a max_message over 4 GiB - 1, the most a message can have", function()
        local status, out = start_with("limits = { max_message = 4294967296 }")
        assert.are.equal(1, status, out)
        assert.truthy(out:find("limits.max_message must be between 1 and 4294967295, " ..
            "not 4294967296", 1, true), out)
    end)

    it("refuses a setting without a name", function()
        local status, out = start_with("8080")
        assert.are.equal(1, status, out)
        assert.truthy(out:find("unknown key [1]", 1, true), out)
    end)

    it("refuses a route entry with more than a path and a file", function()
        local status, out = start_with("routes = { { '/e', 'apps/echo.lua', '/other' } }")
        assert.are.equal(1, status, out)
        assert.truthy(out:find('routes[1] has more than {"/path", "file.lua"}', 1, true), out)
    end)

    it("starts with every documented key set", function()
        local file = dir .. "/full.lua"
        testing.write_file(file, [[
return {
  host = "127.0.0.1", port = 0, apps = "apps", reload = false,
  routes = { ["/rooms/:room"] = "apps/echo.lua", { "/x/:y", "apps/echo.lua" } },
  limits = { max_message = 1024, max_fragments = 8, max_head = 4096, max_headers = 50,
             send_buffer = 65536, max_send_buffer = 1048576, max_connections = 10 },
  timeouts = { handshake = 5, close = 2, ping = 10, idle = 20 },
  compression = { enabled = true, threshold = 64, level = 2, window_bits = 12, mem_level = 7 },
  log = { level = "info", access = true },
}
]])
        local server = assert(testing.start {apps_dir = dir .. "/apps", port = false,
            args = {"--config", file}})
        local ws = assert(server:connect("/rooms/a"))
        ws:send("hi")
        assert.are.equal("hi", (ws:receive_message(5)))
        ws:close()
        server:cleanup()
    end)

    it("SIGHUP with an unknown key keeps the running config and logs why", function()
        local server = assert(testing.start {apps = {echo = ECHO},
            config = "return { apps = 'apps', limits = { max_message = 1000 } }\n"})
        testing.write_file(server.dir .. "/config.lua",
            "return { apps = 'apps', limits = { max_mesage = 5000, max_message = 2000 } }\n")
        assert(server:signal("HUP"))
        local line = server:wait_log("[^\n]*SIGHUP: config not reloaded[^\n]*", 5)
        assert.truthy(line, server:stderr())
        assert.truthy(line:find('unknown key "limits.max_mesage" (did you mean ' ..
            '"limits.max_message"?)', 1, true), line)
        -- The running max_message (1000) still holds for new connections.
        local ws = assert(server:connect("/echo"))
        ws:send(("x"):rep(1000))
        assert.are.equal(("x"):rep(1000), (ws:receive_message(5)))
        ws:send(("y"):rep(1500))
        assert.are.equal(1009, (ws:expect_close(5)))
        assert.is_true(server:alive())
        server:cleanup()
    end)
end)
