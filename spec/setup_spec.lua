-- Set-up and install as a newcomer meets them (README "Two commands",
-- "Running", "Testing your apps"): make run and make test on a machine that
-- gets its packages during the same make, make run ARGS=..., the luarocks
-- install and the installed moonport command, and the README's busted
-- example run from an app author's own directory against that install.
local testing = require "moonport.testing"
local client = require "moonport.client"

local quote, capture, read_file, write_file, run =
    testing.quote, testing.capture, testing.read_file, testing.write_file, testing.run

local function cwd()
    local p = assert(io.popen("pwd"))
    local d = p:read("*l")
    p:close()
    return d
end

local REPO = cwd()
local ECHO = "local app = {}\n" ..
    "function app.on_message(ws, data, kind) ws:send(data, kind) end\n" ..
    "return app\n"

-- A make run by a spec must not inherit the flags and level of the make
-- that runs the specs (make test).
local CLEAN_ENV = "env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL"
local CLEAN_MAKE = CLEAN_ENV .. " make"

local function echo_round_trip(server, path)
    local ws, err, response = client.connect("127.0.0.1", server.port, path)
    assert(ws, tostring(err) .. "\n" .. tostring(response and response.raw))
    assert(ws:send("over the real socket"))
    local data, kind = ws:receive_message(5)
    assert.equal("over the real socket", data)
    assert.equal("text", kind)
    ws:close(1000)
    ws:expect_close(2)
    ws:shutdown()
end

describe("first run on a fresh machine", function()
    -- The llhttp sources do not exist when make starts; its deps step
    -- creates them, as apt-get installing node-llhttp does on a fresh
    -- machine. libllhttp from pkg-config is forced off so those sources are
    -- what the build uses. A copy of the build files, built at -O0, keeps
    -- the repository's own build out of it.
    local dir, llhttp

    local function first_run_make(target, vars)
        local deps = string.format("echo deps-step && mkdir -p %s/src %s/include" ..
            " && cp /usr/share/llhttp/*.c %s/src/ && cp /usr/share/include/llhttp/llhttp.h %s/include/",
            llhttp, llhttp, llhttp, llhttp)
        return capture(CLEAN_MAKE .. " -C " .. quote(dir .. "/copy") ..
            " LLHTTP_PC=no LLHTTP_DIR=" .. quote(llhttp .. "/src") ..
            " LLHTTP_INCDIR=" .. quote(llhttp .. "/include") ..
            " OPT=-O0 LLHTTP_OPT=-O0 " .. (vars:gsub("@DEPS@", quote(deps))) .. " " .. target, 300)
    end

    before_each(function()
        dir = testing.temp_dir()
        llhttp = dir .. "/llhttp"
        -- lua/ too: moonport.http's Lua source is built into the binary.
        assert(run("mkdir " .. quote(dir .. "/copy") .. " && cp -R Makefile src lua .ci " ..
            quote(dir .. "/copy/")))
        assert.is_nil(read_file(llhttp .. "/src/llhttp.c"))
    end)

    after_each(function()
        run("rm -rf " .. quote(dir))
    end)

    it("make run installs, then builds and runs, in one invocation", function()
        local status, out = first_run_make("run", "DEPS_CMD=@DEPS@ ARGS=--version")
        assert.equal(0, status, out)
        assert.truthy(out:find("deps-step", 1, true), out)
        assert.truthy(out:find("build/rel/llhttp_llhttp.o", 1, true), out)
        assert.truthy(out:match("\nmoonport %d+%.%d+%.%d+"), out)
    end)

    it("make test installs, then builds, in one invocation", function()
        -- Only what the first run got wrong is built: the llhttp objects
        -- and the binary; TEST_CMD stands in for the suite.
        local status, out = first_run_make("test", "DEPS_TEST_CMD=@DEPS@ TEST_BUILD=bin/moonport " ..
            "TEST_CMD=" .. quote("bin/moonport --version"))
        assert.equal(0, status, out)
        assert.truthy(out:find("deps-step", 1, true), out)
        assert.truthy(out:match("\nmoonport %d+%.%d+%.%d+"), out)
    end)
end)

describe("make run ARGS=...", function()
    local dir, pid

    -- Stops the make (which forwards SIGTERM to moonport) if it still runs.
    local function stop()
        if not pid or read_file(dir .. "/rc") then
            return
        end
        run("kill -TERM " .. pid .. " 2>/dev/null")
        for _ = 1, 250 do
            if read_file(dir .. "/rc") then
                return
            end
            testing.sleep(0.02)
        end
        run("kill -KILL " .. pid .. " 2>/dev/null")
    end

    after_each(function()
        stop()
        run("rm -rf " .. quote(dir))
        pid = nil
    end)

    it("serves the apps directory and port given in ARGS", function()
        dir = testing.temp_dir()
        assert(run("mkdir " .. quote(dir .. "/myapps")))
        write_file(dir .. "/myapps/shout.lua", "local app = {}\n" ..
            "function app.on_message(ws, data) ws:send(data:upper()) end\nreturn app\n")
        -- DEPS_CMD=true: the deps step is the first-run spec's business, and
        -- a spec does not install packages. make forwards SIGTERM to
        -- moonport, which stops cleanly.
        local args = "--port 0 --host 127.0.0.1 " .. dir .. "/myapps"
        local inner = string.format("%s run DEPS_CMD=true ARGS=%s >%s/out 2>&1 </dev/null & " ..
            "echo $! >%s/pid; wait $!; echo $? >%s/rc",
            CLEAN_MAKE, quote(args), quote(dir), quote(dir), quote(dir))
        assert(run("sh -c " .. quote(inner) .. " >/dev/null 2>&1 </dev/null &"))
        local port
        for _ = 1, 1500 do
            pid = pid or tonumber(read_file(dir .. "/pid") or "")
            port = tonumber((read_file(dir .. "/out") or ""):match("listening on ws://[^ ]-:(%d+)/"))
            if port or read_file(dir .. "/rc") then
                break
            end
            testing.sleep(0.02)
        end
        local out = read_file(dir .. "/out") or ""
        assert(port, "make run did not say it listens:\n" .. out)
        assert.are_not.equal(8080, port, "ARGS did not reach moonport:\n" .. out)
        assert.truthy(out:find("(1 routes)", 1, true), out)

        local ws, err, response = client.connect("127.0.0.1", port, "/shout")
        assert(ws, tostring(err) .. "\n" .. tostring(response and response.raw))
        assert(ws:send("hello"))
        assert.equal("HELLO", (ws:receive_message(5)))
        ws:close(1000)
        ws:expect_close(2)
        ws:shutdown()

        stop()
        out = read_file(dir .. "/out") or ""
        assert.truthy(out:find("stopped", 1, true), out)
    end)
end)

describe("luarocks install", function()
    -- `luarocks make moonport-scm-1.rockspec` as the README writes it, into
    -- a temporary tree instead of the system's.
    local tree, lua_dir, status, out

    setup(function()
        tree = testing.temp_dir()
        status, out = capture(CLEAN_ENV .. " luarocks --tree " ..
            quote(tree) .. " make moonport-scm-1.rockspec", 300)
        local p = io.popen("ls " .. quote(tree .. "/share/lua") .. " 2>/dev/null")
        lua_dir = p:read("*l")
        p:close()
    end)

    teardown(function()
        run("rm -rf " .. quote(tree))
    end)

    it("installs the moonport command and the Lua modules", function()
        assert.equal(0, status, out)
        assert.truthy(read_file(tree .. "/bin/moonport"), out)
        assert.truthy(lua_dir, "no share/lua in the tree:\n" .. out)
        for _, m in ipairs {"client", "testing"} do
            assert.truthy(read_file(tree .. "/share/lua/" .. lua_dir .. "/moonport/" .. m .. ".lua"),
                "moonport." .. m .. " was not installed")
        end
    end)

    it("the installed moonport serves a real client", function()
        assert.equal(0, status, out)
        local server, err, stderr = testing.start {bin = tree .. "/bin/moonport",
            apps = {echo = ECHO}}
        assert(server, tostring(err) .. "\n" .. tostring(stderr))
        echo_round_trip(server, "/echo")
        assert.equal(0, server:stop())
        server:cleanup()
    end)

    it("runs the README's busted example as printed, from an app author's directory",
        function()
            assert.equal(0, status, out)
            local readme = assert(read_file(REPO .. "/README.md"))
            local section = readme:match("\n## Testing your apps\n(.-)\n## ")
            assert(section, "README has no Testing your apps section")
            local example = section:match("```lua\n(.-)```")
            assert(example, "no ```lua example in Testing your apps")

            -- The author's project: apps/echo.lua and spec/echo_spec.lua,
            -- nothing of the repository; the install on PATH and LUA_PATH.
            local author = testing.temp_dir()
            assert(run("mkdir " .. quote(author .. "/apps") .. " " .. quote(author .. "/spec")))
            write_file(author .. "/apps/echo.lua", assert(read_file(REPO .. "/apps/echo.lua")))
            write_file(author .. "/spec/echo_spec.lua", example)
            local share = tree .. "/share/lua/" .. lua_dir
            local lua_path = share .. "/?.lua;" .. share .. "/?/init.lua;;"
            local cmd = "cd " .. quote(author) .. " && env -u MOONPORT_BIN -u LUA_PATH_5_1" ..
                " -u LUA_PATH_5_2 -u LUA_PATH_5_3 -u LUA_PATH_5_4" ..
                " PATH=" .. quote(tree .. "/bin:" .. os.getenv("PATH")) ..
                " LUA_PATH=" .. quote(lua_path) .. " busted"
            local st, result = capture("sh -c " .. quote(cmd), 120)
            run("rm -rf " .. quote(author))
            assert.equal(0, st, result)
            assert.truthy(result:match("[1-9]%d* success"), result)
            assert.truthy(result:match(" 0 failures"), result)
            assert.truthy(result:match(" 0 errors"), result)
        end)
end)
