-- The moonport command (README "Running" and "Config file"): its options,
-- its one-line answers to every mistake at start, its exit statuses, and
-- how it stops on SIGTERM and SIGINT.
local testing = require "moonport.testing"
local quote = testing.quote
local read_file = testing.read_file
local write_file = testing.write_file
local socket = require "socket"

local BIN = os.getenv("MOONPORT_BIN") or "bin/moonport"

local ECHO = [[
local app = {}
function app.on_message(ws, data, kind) ws:send(data, kind) end
return app
]]

local function shell(cmd)
    local p = assert(io.popen(cmd))
    local out = p:read("*a")
    p:close()
    return out
end

local function lines_of(text)
    local lines = {}
    for line in text:gmatch("[^\n]+") do
        lines[#lines + 1] = line
    end
    return lines
end

local free_port = testing.free_port

describe("moonport command", function()
    local dir

    setup(function()
        dir = shell("mktemp -d \"${TMPDIR:-/tmp}/moonport-cli.XXXXXX\""):match("%S+")
        assert(dir, "no temp dir")
    end)

    teardown(function()
        if dir then
            os.execute("rm -rf " .. quote(dir))
        end
    end)

    -- Runs the binary to completion (killed after 10 s: a start that should
    -- fail must not hang) and returns its exit status, stdout and stderr.
    local function run(args)
        local cmd = string.format("timeout -s KILL 10 %s %s >%s 2>%s </dev/null; echo $?",
            quote(BIN), args, quote(dir .. "/out"), quote(dir .. "/err"))
        local rc = tonumber(shell(cmd):match("%d+"))
        return rc, read_file(dir .. "/out") or "", read_file(dir .. "/err") or ""
    end

    -- An apps directory holding these files, for one case.
    local n_dirs = 0
    local function apps_dir(files)
        n_dirs = n_dirs + 1
        local d = dir .. "/apps" .. n_dirs
        assert(os.execute("mkdir " .. quote(d)))
        for name, src in pairs(files) do
            write_file(d .. "/" .. name, src)
        end
        return d
    end

    -- A start that must fail: a non-zero status, never listening, and
    -- exactly one line on stderr, which is returned.
    local function assert_start_fails(args, status)
        local rc, out, err = run(args)
        assert.is_nil(err:find("listening on", 1, true), "it started:\n" .. err)
        if status then
            assert.equal(status, rc, "exit status; stderr:\n" .. err)
        else
            assert.is_true(rc ~= 0, "exit status 0; stderr:\n" .. err)
        end
        assert.is_true(rc ~= 137, "it did not exit within 10 s") -- 128 + SIGKILL
        local lines = lines_of(err)
        assert.equal(1, #lines, "stderr is not one line:\n" .. err)
        assert.equal("", out, "stdout: " .. out)
        return lines[1]
    end

    describe("options", function()
        it("--help documents --host --port --config --log-level --help --version, exit 0",
            function()
                local rc, out, err = run("--help")
                assert.equal(0, rc, err)
                for _, opt in ipairs {"--host", "--port", "--config", "--log-level", "--help",
                    "--version"} do
                    assert.truthy(out:find(opt, 1, true), opt .. " is not in --help:\n" .. out)
                end
                assert.equal("", err)
            end)

        it("--version prints the Makefile's version, exit 0", function()
            local version = read_file("Makefile"):match("\nVERSION%s*:?=%s*(%S+)")
            assert(version, "no VERSION in the Makefile")
            local rc, out, err = run("--version")
            assert.equal(0, rc, err)
            assert.equal("moonport " .. version, out:match("^(.-)\n?$"))
        end)

        it("an unknown option exits 2 with one line on stderr naming it", function()
            local line = assert_start_fails("--bogus", 2)
            assert.truthy(line:find("--bogus", 1, true), line)
        end)

        it("--port without a value exits 2 with one line", function()
            assert_start_fails("--port", 2)
        end)

        it("--port with a non-number exits 2 with one line naming the value", function()
            local line = assert_start_fails("--port eighty " .. quote(apps_dir {["echo.lua"] = ECHO}), 2)
            assert.truthy(line:find("eighty", 1, true), line)
        end)

        it("--log-level with an unknown level exits 2 with one line naming it", function()
            local line = assert_start_fails("--log-level loud " ..
                quote(apps_dir {["echo.lua"] = ECHO}), 2)
            assert.truthy(line:find("loud", 1, true), line)
        end)
    end)

    describe("mistakes at start", function()
        it("a missing apps directory: exit 1, one line naming it", function()
            local missing = dir .. "/no-such-apps"
            local line = assert_start_fails("--port 0 " .. quote(missing), 1)
            assert.truthy(line:find(missing, 1, true), line)
        end)

        it("an app with a syntax error: exit 1, one line naming file:line", function()
            local d = apps_dir {
                ["echo.lua"] = ECHO,
                ["broken.lua"] = "local app = {}\n\nlocal x = = 1\nreturn app\n",
            }
            local line = assert_start_fails("--port 0 " .. quote(d), 1)
            assert.truthy(line:find("broken.lua:3:", 1, true), line)
        end)

        it("an app that raises while loading: exit 1, one line with the file and the error",
            function()
                local d = apps_dir {
                    ["raising.lua"] = "local app = {}\nerror('exploding at load')\nreturn app\n",
                }
                local line = assert_start_fails("--port 0 " .. quote(d), 1)
                assert.truthy(line:find("raising.lua", 1, true), line)
                assert.truthy(line:find("exploding at load", 1, true), line)
            end)

        it("an app that does not return a table: exit 1, one line naming the file", function()
            local d = apps_dir {["number.lua"] = "return 42\n"}
            local line = assert_start_fails("--port 0 " .. quote(d), 1)
            assert.truthy(line:find("number.lua", 1, true), line)
            assert.truthy(line:find("table", 1, true), line)
        end)

        it("a port already in use: exit 1, one line saying it is in use", function()
            local holder = assert(socket.bind("127.0.0.1", 0))
            finally(function() holder:close() end)
            local _, port = holder:getsockname()
            local line = assert_start_fails(
                "--port " .. port .. " " .. quote(apps_dir {["echo.lua"] = ECHO}), 1)
            assert.truthy(line:lower():find("in use", 1, true), line)
            assert.truthy(line:find(tostring(port), 1, true), line)
        end)

        it("a config file with a syntax error: exit 1, one line naming the file", function()
            local file = dir .. "/broken-config.lua"
            write_file(file, "return {\n  port = \n")
            local line = assert_start_fails("--config " .. quote(file), 1)
            assert.truthy(line:find("broken-config.lua", 1, true), line)
        end)

        it("a config file with a bad value: exit 1, one line naming the file and the key",
            function()
                local file = dir .. "/bad-value-config.lua"
                write_file(file, "return { port = 'eighty', apps = 'apps1' }\n")
                local line = assert_start_fails("--config " .. quote(file), 1)
                assert.truthy(line:find("bad-value-config.lua", 1, true), line)
                assert.truthy(line:find("port", 1, true), line)
            end)

        it("a missing config file: exit 1, one line naming it", function()
            local file = dir .. "/no-such-config.lua"
            local line = assert_start_fails("--config " .. quote(file), 1)
            assert.truthy(line:find("no-such-config.lua", 1, true), line)
        end)
    end)

    describe("a config file", function()
        local server, port

        setup(function()
            port = free_port()
            local err, stderr
            server, err, stderr = testing.start {
                port = false, -- the config's port, not --port
                config = string.format([[
return {
    port = %d,
    limits = { max_message = 1000 },
    routes = { ["/talk/:who"] = "apps/echo.lua" },
}
]], port),
                files = {["apps/echo.lua"] = ECHO},
            }
            assert(server, tostring(err) .. "\n" .. tostring(stderr))
        end)

        teardown(function()
            if server then
                server:cleanup()
            end
        end)

        it("sets the port", function()
            assert.equal(port, server.port)
        end)

        it("sets routes: /talk/:who serves apps/echo.lua, and nothing else is served", function()
            local ws = assert(server:connect("/talk/bob"))
            assert(ws:send("hi bob"))
            assert.equal("hi bob", (ws:receive_message(5)))
            ws:shutdown()
            local none, _, response = server:connect("/echo")
            assert.is_nil(none)
            assert.equal(404, response and response.status)
        end)

        it("sets limits: max_message = 1000 lets 1000 bytes through and fails 1001 with 1009",
            function()
                local ws = assert(server:connect("/talk/big"))
                local ok = string.rep("a", 1000)
                assert(ws:send(ok))
                assert.equal(ok, (ws:receive_message(5)))
                assert(ws:send(string.rep("b", 1001)))
                assert.equal(1009, (ws:expect_close(5)))
                ws:shutdown()
            end)

        it("still serves after these cases", function()
            assert.is_true(server:alive())
            local ws = assert(server:connect("/talk/last"))
            assert(ws:send("last"))
            assert.equal("last", (ws:receive_message(5)))
            ws:shutdown()
        end)
    end)

    describe("logs", function()
        local function session(server)
            local ws = assert(server:connect("/echo"))
            assert(ws:send("logged?"))
            assert.equal("logged?", (ws:receive_message(5)))
            assert(ws:close(1000))
            local code, _, tcp_closed = ws:expect_close(5)
            ws:shutdown()
            assert.equal(1000, code)
            assert.is_true(tcp_closed)
        end

        it("the access log (stdout) has WSCONNECT and WSDISCONNECT at the default level",
            function()
                local server = assert(testing.start {apps = {echo = ECHO}})
                session(server)
                local found = server:wait_log("WSDISCONNECT /echo[^\n]*code=1000", 5)
                local out = server:stdout()
                server:cleanup()
                assert(found, "no WSDISCONNECT in stdout:\n" .. out)
                assert.truthy(out:find("\"WSCONNECT /echo\"", 1, true), out)
            end)

        it("--log-level error leaves the access log on (spec/logs_spec.lua has more)", function()
            local server = assert(testing.start {apps = {echo = ECHO},
                args = {"--log-level", "error"}})
            session(server)
            local found = server:wait_log("WSDISCONNECT /echo[^\n]*code=1000", 5)
            local out, err = server:stdout(), server:stderr()
            server:cleanup()
            assert(found, "no access log at --log-level error:\n" .. out)
            assert.is_nil(err:find("WSCONNECT", 1, true), "the access log went to stderr")
        end)
    end)

    for _, sig in ipairs {"TERM", "INT"} do
        it("SIG" .. sig .. " with open connections: every client gets close 1001, exit 0",
            function()
                local server = assert(testing.start {apps = {echo = ECHO}})
                local clients = {}
                for i = 1, 3 do
                    clients[i] = assert(server:connect("/echo"))
                    assert(clients[i]:send("client " .. i))
                    assert.equal("client " .. i, (clients[i]:receive_message(5)))
                end
                local t0 = socket.gettime()
                assert.is_true(server:signal(sig))
                for i, ws in ipairs(clients) do
                    local f = ws:receive(5)
                    assert(f, "client " .. i .. " got no close frame")
                    assert.equal(8, f.opcode)
                    assert.equal(1001, f.code, "client " .. i)
                    assert(ws:close(1001))
                end
                for i, ws in ipairs(clients) do
                    assert.is_true(ws:is_closed(5), "client " .. i .. ": TCP still open")
                    ws:shutdown()
                end
                local status = server:wait(5)
                local elapsed = socket.gettime() - t0
                local err = server:stderr()
                server:cleanup()
                assert.equal(0, status, err)
                -- Every client answered at once: no waiting out timeouts.close.
                assert.is_true(elapsed < 3, "took " .. elapsed .. " s to exit")
            end)
    end
end)
