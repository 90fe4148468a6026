-- Hot reload (README "Hot reload") against the real binary: every way an
-- editor saves, what open connections see, on_reload, broken versions, new
-- and deleted files, modules, SIGHUP with the config file, --reload off, the
-- log line of each reload, and 200 reloads under 100 echoing connections
-- with the server's memory measured.
local testing = require "moonport.testing"
local quote = testing.quote
local read_file = testing.read_file
local write_file = testing.write_file
local socket = require "socket"

-- An app that answers "TAG N DATA", where N counts this connection's
-- messages in ws.data (which must survive a reload).
local function counting(tag)
    return (([[
local app = {}
function app.on_connect(ws, req)
    ws.data.n = 0
end
function app.on_message(ws, data)
    ws.data.n = ws.data.n + 1
    ws:send("TAG " .. ws.data.n .. " " .. data)
end
return app
]]):gsub("TAG", tag))
end

-- The simplest app: answers "TAG DATA".
local function tagged(tag)
    return (([[
local app = {}
function app.on_message(ws, data) ws:send("TAG " .. data) end
return app
]]):gsub("TAG", tag))
end

-- s as a Lua pattern that matches s literally.
local function lit(s)
    return (s:gsub("%p", "%%%0"))
end

local function lines_matching(text, pattern)
    local found = {}
    for line in text:gmatch("[^\n]+") do
        if line:find(pattern) then
            found[#found + 1] = line
        end
    end
    return found
end

-- Patterns for the reload log lines of the app NAME in FILE.
local function ok_line(name, file, version)
    return "reload " .. lit(name) .. " %(" .. lit(file) .. "%) v" .. version ..
        " ok in %d+%.?%d* ms"
end

local function failed_line(name, file, version)
    return "reload " .. lit(name) .. " %(" .. lit(file) .. "%) failed in %d+%.?%d* ms, v" ..
        version .. " keeps serving: ([^\n]*)"
end

local function any_reload_of(name)
    return "reload " .. lit(name) .. " %("
end

-- Send data and return the reply (or nil and why).
local function ask(ws, data)
    local ok, err = ws:send(data)
    if not ok then
        return nil, err
    end
    return ws:receive_message(2)
end

-- The code of the close frame the server sends next (data is skipped), or
-- nil and why.
local function close_code(ws, timeout)
    local deadline = socket.gettime() + timeout
    repeat
        local data, what, code = ws:receive_message(math.max(0.01, deadline - socket.gettime()))
        if data == nil then
            if what == "close" then
                return code
            end
            return nil, what
        end
    until socket.gettime() > deadline
    return nil, "timeout"
end

-- Connect, or nil and the handshake's status.
local function try_connect(server, path)
    local ws, err, response = server:connect(path, {timeout = 2})
    if ws then
        return ws
    end
    return nil, response and response.status or err
end

describe("hot reload", function()
    local servers = {}

    local sockets = {}

    -- Every connection a spec opens is remembered, so that teardown can drop
    -- them: a server stopping waits for its peers' close frames.
    local function start(opts)
        local server, err, stderr = testing.start(opts)
        assert(server, tostring(err) .. "\n" .. tostring(stderr))
        servers[#servers + 1] = server
        local connect = server.connect
        server.connect = function(self, path, copts)
            local ws, cerr, response = connect(self, path, copts)
            sockets[#sockets + 1] = ws
            return ws, cerr, response
        end
        return server
    end

    after_each(function()
        for _, ws in ipairs(sockets) do
            ws:shutdown()
        end
        sockets = {}
        for _, server in ipairs(servers) do
            server:cleanup()
        end
        servers = {}
    end)

    -- The server answered everything so far and still runs.
    local function assert_alive(server)
        assert.is_true(server:alive(), "the server died:\n" .. server:stderr())
        local ws = assert(server:connect("/alive", {timeout = 2}))
        assert.are.equal("alive ping", (ask(ws, "ping")))
        ws:close(1000)
        ws:expect_close(2)
    end

    local function start_with(apps, opts)
        opts = opts or {}
        apps.alive = apps.alive or tagged("alive")
        opts.apps = apps
        return start(opts)
    end

    -- Wait up to a second (the promise) for pattern in the log.
    local function within_a_second(server, pattern)
        local found = server:wait_log(pattern, 1.0)
        assert(found ~= nil, "not in the log within 1 s: " .. pattern .. "\n" .. server:stderr())
        return found
    end

    describe("a changed app", function()
        it("runs again within a second; open connections get its handlers and keep ws.data",
           function()
            local server = start_with {echo = counting("v1")}
            local file = server.apps_dir .. "/echo.lua"
            local ws = assert(server:connect("/echo"))
            assert.are.equal("v1 1 a", (ask(ws, "a")))
            assert.are.equal("v1 2 b", (ask(ws, "b")))

            server:write_app("echo", counting("v2"))
            within_a_second(server, ok_line("echo", file, 2))
            -- The same connection, its next event: new code, old ws.data.
            assert.are.equal("v2 3 c", (ask(ws, "c")))
            -- A new handshake runs the new on_connect.
            local fresh = assert(server:connect("/echo"))
            assert.are.equal("v2 1 d", (ask(fresh, "d")))
            assert.are.equal("v2 4 e", (ask(ws, "e")))
            assert_alive(server)
        end)

        -- Each way an editor saves, edits times over (the first edit after
        -- start and the ones after it may be timed differently): every edit
        -- is one reload, none sees a partly written file, and the open
        -- connection never sees the file as gone. The edits start at offsets
        -- spread over 0.1 s from the last reload, so they cannot all fall in
        -- step with a timer of the server's.
        local function edit_and_check(edits, save)
            local server = start_with {echo = counting("v1")}
            local file = server.apps_dir .. "/echo.lua"
            local ws = assert(server:connect("/echo"))
            assert.are.equal("v1 1 m", (ask(ws, "m")))
            for v = 2, edits + 1 do
                testing.sleep((v - 2) % 10 * 0.01)
                save(file, counting("v" .. v), "v" .. (v - 1), "v" .. v)
                within_a_second(server, ok_line("echo", file, v))
                assert.are.equal("v" .. v .. " " .. v .. " m", (ask(ws, "m")))
            end
            -- Give a second reload or a late "removed" the time to show.
            testing.sleep(0.4)
            local log = server:stderr()
            assert.are.same({}, lines_matching(log, "failed"))
            assert.are.same({}, lines_matching(log, "removed"))
            assert.are.equal(edits, #lines_matching(log, any_reload_of("echo")), log)
            assert.are.equal("v" .. (edits + 1) .. " " .. (edits + 2) .. " m", (ask(ws, "m")))
            assert_alive(server)
        end

        it("is picked up when saved by writing a temporary file and renaming it over", function()
            edit_and_check(3, function(file, source)
                write_file(file .. ".tmp", source)
                assert(os.rename(file .. ".tmp", file))
            end)
        end)

        it("is picked up when saved by sed -i", function()
            edit_and_check(3, function(file, _, from, to)
                assert(os.execute("sed -i 's/" .. from .. "/" .. to .. "/' " .. quote(file)))
            end)
        end)

        it("is picked up when saved by truncating and writing", function()
            -- A 30 ms pause with the file empty; ten edits at spread offsets,
            -- so that a scan on a schedule of its own (one the writes do not
            -- push back) is all but sure to see an empty file.
            edit_and_check(10, function(file, source)
                local f = assert(io.open(file, "wb")) -- the file is empty from here
                f:setvbuf("no")
                testing.sleep(0.03)
                assert(f:write(source))
                f:close()
            end)
        end)

        it("is picked up when written in several writes, and never loaded half-written", function()
            edit_and_check(10, function(file, source)
                -- The first half alone is a syntax error.
                local half = math.floor(#source / 2)
                local f = assert(io.open(file, "wb"))
                f:setvbuf("no")
                assert(f:write(source:sub(1, half)))
                testing.sleep(0.03)
                assert(f:write(source:sub(half + 1)))
                f:close()
            end)
        end)

        -- A busy server sees the writes late: what counts is the quiet it
        -- sees, not the time since the file was first touched. The spin
        -- comes after a first reload: the state a server is in most of the
        -- time.
        it("is not loaded half-written when the server was busy as the writes began", function()
            local function spinning(tag)
                return (([[
local moonport = require "moonport"
local app = {}
function app.on_message(ws, data)
    if data == "spin" then -- hold the loop for 0.15 s
        local t = moonport.now()
        while moonport.now() - t < 0.15 do end
    end
    ws:send("TAG " .. data)
end
return app
]]):gsub("TAG", tag))
            end
            local server = start_with {echo = spinning("v1")}
            local file = server.apps_dir .. "/echo.lua"
            local ws = assert(server:connect("/echo"))
            server:write_app("echo", spinning("v2"))
            within_a_second(server, ok_line("echo", file, 2))
            for v = 3, 4 do
                testing.sleep(0.25)
                assert(ws:send("spin"))
                testing.sleep(0.02)
                local f = assert(io.open(file, "wb")) -- empty while the server spins
                f:setvbuf("no")
                testing.sleep(0.15)
                -- The server has been free for about 0.02 s: less than its quiet time.
                assert(f:write((spinning("v" .. v))))
                f:close()
                assert.are.equal("v" .. (v - 1) .. " spin", (ws:receive_message(2)))
                within_a_second(server, ok_line("echo", file, v))
                assert.are.equal("v" .. v .. " x", (ask(ws, "x")))
            end
            local log = server:stderr()
            assert.are.same({}, lines_matching(log, "failed"))
            assert.are.equal(3, #lines_matching(log, any_reload_of("echo")), log)
            assert_alive(server)
        end)
    end)

    it("calls the new version's on_reload(old_app) once, before any event reaches it", function()
        local v1 = [[
local app = {version = "v1", state = {hits = 0}}
function app.on_message(ws, data)
    app.state.hits = app.state.hits + 1
    ws:send("v1 hits=" .. app.state.hits)
end
return app
]]
        -- v2 refuses to serve until it has adopted v1's state.
        local v2 = [[
local app = {version = "v2", state = {hits = 0}}
local reloads, adopted = 0, nil
function app.on_reload(old)
    reloads = reloads + 1
    adopted = old.version
    app.state = old.state
end
function app.on_connect(ws)
    if not adopted then error("an event before on_reload") end
end
function app.on_message(ws, data)
    if not adopted then error("an event before on_reload") end
    app.state.hits = app.state.hits + 1
    ws:send("v2 hits=" .. app.state.hits .. " from=" .. adopted .. " reloads=" .. reloads)
end
return app
]]
        local server = start_with {state = v1}
        local file = server.apps_dir .. "/state.lua"
        local ws = assert(server:connect("/state"))
        assert.are.equal("v1 hits=1", (ask(ws, "x")))
        assert.are.equal("v1 hits=2", (ask(ws, "x")))
        server:write_app("state", v2)
        within_a_second(server, ok_line("state", file, 2))
        assert.are.equal("v2 hits=3 from=v1 reloads=1", (ask(ws, "x")))
        local fresh = assert(server:connect("/state"))
        assert.are.equal("v2 hits=4 from=v1 reloads=1", (ask(fresh, "x")))
        assert.are.equal("v2 hits=5 from=v1 reloads=1", (ask(ws, "x")))
        assert_alive(server)
    end)

    describe("a broken version changes nothing", function()
        -- Write the broken source, check the old version serves open and
        -- new connections, then save a fix and check it loads. Returns the
        -- "why" of the failure log line.
        local function break_then_fix(broken)
            local server = start_with {echo = counting("v1")}
            local file = server.apps_dir .. "/echo.lua"
            local ws = assert(server:connect("/echo"))
            assert.are.equal("v1 1 a", (ask(ws, "a")))

            server:write_app("echo", broken)
            local why = within_a_second(server, failed_line("echo", file, 1))
            assert.is_true(server:alive(), "the server died:\n" .. server:stderr())
            assert.are.equal("v1 2 b", (ask(ws, "b")))
            local fresh = assert(server:connect("/echo"))
            assert.are.equal("v1 1 c", (ask(fresh, "c")))

            server:write_app("echo", counting("v2"))
            within_a_second(server, ok_line("echo", file, 2))
            assert.are.equal("v2 3 d", (ask(ws, "d")))
            assert.are.equal("v2 2 e", (ask(fresh, "e")))
            assert_alive(server)
            return why, file
        end

        it("a syntax error: the log says file:line", function()
            local why, file = break_then_fix([[
local app = {}
function app.on_message(ws, data)
    ws:send("v2 " .. )
end
return app
]])
            assert.matches("^" .. lit(file) .. ":3: ", why)
        end)

        it("an error while loading: the log says file:line and the message", function()
            local why, file = break_then_fix([[
local app = {}
error("cannot start today")
return app
]])
            assert.matches("^" .. lit(file) .. ":2: cannot start today", why)
        end)

        it("not returning a table: the log says file:line", function()
            local why, file = break_then_fix([[
local app = {}
function app.on_message(ws, data) ws:send("v2 " .. data) end
return 42
]])
            assert.matches("table", why)
            assert.matches("^" .. lit(file) .. ":%d+: ", why)
        end)

        it("an error in on_reload: the log says file:line and the message", function()
            local why, file = break_then_fix([[
local app = {}
function app.on_message(ws, data) ws:send("v2 " .. data) end
function app.on_reload(old)
    error("will not adopt")
end
return app
]])
            assert.matches("^" .. lit(file) .. ":4: will not adopt", why)
        end)
    end)

    it("serves a new file in the apps directory as a new route", function()
        local server = start_with {echo = tagged("echo")}
        assert.are.same({nil, 404}, {try_connect(server, "/fresh")})
        local t0 = socket.gettime()
        server:write_app("fresh", tagged("fresh"))
        local ws
        repeat
            ws = try_connect(server, "/fresh")
            if not ws then
                testing.sleep(0.02)
            end
        until ws or socket.gettime() - t0 > 1.0
        assert(ws, "/fresh does not answer 1 s after its file appeared:\n" .. server:stderr())
        assert.are.equal("fresh hi", (ask(ws, "hi")))
        assert_alive(server)
    end)

    it("answers 404 for a deleted file and closes its connections with 1001", function()
        local server = start_with {gone = tagged("gone"), stays = tagged("stays")}
        local ws = assert(server:connect("/gone"))
        local other = assert(server:connect("/stays"))
        assert.are.equal("gone a", (ask(ws, "a")))
        assert(os.remove(server.apps_dir .. "/gone.lua"))
        assert.are.equal(1001, (close_code(ws, 1.0)))
        ws:close(1001)
        assert.is_true(ws:is_closed(2))
        assert.are.same({nil, 404}, {try_connect(server, "/gone")})
        -- Nothing else is touched.
        assert.are.equal("stays b", (ask(other, "b")))
        assert_alive(server)
    end)

    it("serves a deleted file's route again when the file comes back", function()
        local server = start_with {gone = tagged("v1")}
        local file = server.apps_dir .. "/gone.lua"
        assert(os.remove(file))
        within_a_second(server, "app gone %(" .. lit(file) .. "%) removed")
        assert.are.same({nil, 404}, {try_connect(server, "/gone")})
        server:write_app("gone", tagged("v2"))
        within_a_second(server, ok_line("gone", file, 2))
        local ws = assert(try_connect(server, "/gone"))
        assert.are.equal("v2 x", (ask(ws, "x")))
        assert_alive(server)
    end)

    it("reloads every app that requires a changed module from a subdirectory", function()
        local user = [[
local util = require "lib.util"
local app = {}
function app.on_message(ws, data) ws:send("NAME " .. util.tag .. " " .. data) end
return app
]]
        local server = start_with({a = user:gsub("NAME", "a"), b = user:gsub("NAME", "b"),
                                   c = tagged("c")},
                                  {files = {["apps/lib/util.lua"] = "return {tag = 'u1'}\n"}})
        local dir = server.apps_dir
        local wa, wb = assert(server:connect("/a")), assert(server:connect("/b"))
        local wc = assert(server:connect("/c"))
        assert.are.equal("a u1 x", (ask(wa, "x")))
        assert.are.equal("b u1 x", (ask(wb, "x")))

        write_file(dir .. "/lib/util.lua", "return {tag = 'u2'}\n")
        within_a_second(server, ok_line("a", dir .. "/a.lua", 2))
        within_a_second(server, ok_line("b", dir .. "/b.lua", 2))
        assert.are.equal("a u2 y", (ask(wa, "y")))
        assert.are.equal("b u2 y", (ask(wb, "y")))
        -- An app that does not use the module is left alone.
        assert.are.equal("c y", (ask(wc, "y")))
        assert.are.same({}, lines_matching(server:stderr(), any_reload_of("c")))
        assert_alive(server)
    end)

    -- The app requires lib.outer, which requires lib.inner: the app uses
    -- lib.inner as much as if it had required it itself.
    it("reloads an app when a module required by one of its modules changes", function()
        local server = start_with({user = [[
local outer = require "lib.outer"
local app = {}
function app.on_message(ws, data) ws:send("user " .. outer.tag() .. " " .. data) end
return app
]]}, {files = {
            ["apps/lib/outer.lua"] =
                'local inner = require "lib.inner"\nreturn {tag = function() return inner.tag end}\n',
            ["apps/lib/inner.lua"] = "return {tag = 'i1'}\n",
        }})
        local dir = server.apps_dir
        local ws = assert(server:connect("/user"))
        assert.are.equal("user i1 x", (ask(ws, "x")))
        write_file(dir .. "/lib/inner.lua", "return {tag = 'i2'}\n")
        within_a_second(server, ok_line("user", dir .. "/user.lua", 2))
        assert.are.equal("user i2 y", (ask(ws, "y")))
        assert_alive(server)
    end)

    describe("SIGHUP", function()
        it("reloads every app now, changed or not, and the version counter goes up", function()
            -- Each load starts its own counter: a reload shows as a reset.
            local fresh_count = [[
local n = 0
local app = {}
function app.on_message(ws, data) n = n + 1; ws:send("NAME " .. n) end
return app
]]
            local server = start_with {one = fresh_count:gsub("NAME", "one"),
                                       two = fresh_count:gsub("NAME", "two")}
            local dir = server.apps_dir
            local w1, w2 = assert(server:connect("/one")), assert(server:connect("/two"))
            assert.are.equal("one 1", (ask(w1, "x")))
            assert.are.equal("one 2", (ask(w1, "x")))
            assert.are.equal("two 1", (ask(w2, "x")))

            assert(server:signal("HUP"))
            within_a_second(server, ok_line("one", dir .. "/one.lua", 2))
            within_a_second(server, ok_line("two", dir .. "/two.lua", 2))
            assert.are.equal("one 1", (ask(w1, "x")))
            assert.are.equal("two 1", (ask(w2, "x")))

            assert(server:signal("HUP"))
            within_a_second(server, ok_line("one", dir .. "/one.lua", 3))
            within_a_second(server, ok_line("two", dir .. "/two.lua", 3))
            assert.are.equal("one 1", (ask(w1, "x")))
            assert_alive(server)
        end)

        it("re-reads limits from the config file: a new connection gets 1009 at the new limit",
           function()
            local server = start_with({echo = tagged("e")},
                                      {config = "return { limits = { max_message = 1000 } }\n"})
            local ws = assert(server:connect("/echo"))
            assert.are.equal("e " .. ("x"):rep(500), (ask(ws, ("x"):rep(500))))

            write_file(server.dir .. "/config.lua", "return { limits = { max_message = 100 } }\n")
            assert(server:signal("HUP"))
            within_a_second(server, "SIGHUP: config [^\n]* reloaded")
            local fresh = assert(server:connect("/echo"))
            assert.are.equal("e " .. ("y"):rep(100), (ask(fresh, ("y"):rep(100))))
            assert(fresh:send(("z"):rep(101)))
            assert.are.equal(1009, (close_code(fresh, 2)))
            assert_alive(server)
        end)

        it("re-reads routes from the config file: an added route answers, a dropped one 404s",
           function()
            local server = start {
                config = 'return { routes = { ["/one"] = "routes/one.lua",' ..
                    ' ["/alive"] = "routes/alive.lua" } }\n',
                files = {["routes/one.lua"] = tagged("one"), ["routes/two.lua"] = tagged("two"),
                         ["routes/alive.lua"] = tagged("alive")},
            }
            assert.are.same({nil, 404}, {try_connect(server, "/two")})
            local w1 = assert(server:connect("/one"))

            write_file(server.dir .. "/config.lua",
                       'return { routes = { ["/two"] = "routes/two.lua",' ..
                       ' ["/rooms/:room"] = "routes/two.lua", ["/alive"] = "routes/alive.lua" } }\n')
            assert(server:signal("HUP"))
            within_a_second(server, "SIGHUP: config [^\n]* reloaded")
            local w2 = assert(try_connect(server, "/two"))
            assert.are.equal("two x", (ask(w2, "x")))
            local w3 = assert(try_connect(server, "/rooms/lobby"))
            assert.are.equal("two y", (ask(w3, "y")))
            assert.are.same({nil, 404}, {try_connect(server, "/one")})
            -- A connection made before keeps its app.
            assert.are.equal("one z", (ask(w1, "z")))
            assert_alive(server)
        end)

        it("keeps the running config when the new one is broken, and says why", function()
            local server = start_with({echo = tagged("e")},
                                      {config = "return { limits = { max_message = 1000 } }\n"})
            write_file(server.dir .. "/config.lua", "return { limits = { max_message = 'lots' } }\n")
            assert(server:signal("HUP"))
            within_a_second(server,
                "SIGHUP: config not reloaded, the running one stays: [^\n]*max_message")
            -- The old limit still holds for new connections.
            local ws = assert(server:connect("/echo"))
            assert.are.equal("e " .. ("x"):rep(900), (ask(ws, ("x"):rep(900))))
            assert(ws:send(("z"):rep(1001)))
            assert.are.equal(1009, (close_code(ws, 2)))
            assert_alive(server)
        end)

        it("says a new listen address needs a restart, and keeps listening where it was",
           function()
            -- The host comes from the config alone (no --host, which would win).
            local server = start_with({echo = tagged("e")},
                                      {host = false, config = "return { host = '127.0.0.1' }\n"})
            write_file(server.dir .. "/config.lua", "return { host = '127.0.0.2' }\n")
            assert(server:signal("HUP"))
            within_a_second(server, "SIGHUP: the listen address changed to [^\n]*restart")
            local ws = assert(server:connect("/echo"))
            assert.are.equal("e x", (ask(ws, "x")))
            assert_alive(server)
        end)
    end)

    it("--reload off: an edit is not picked up, SIGHUP still reloads", function()
        local server = start_with({echo = counting("v1")}, {args = {"--reload", "off"}})
        local file = server.apps_dir .. "/echo.lua"
        local ws = assert(server:connect("/echo"))
        assert.are.equal("v1 1 a", (ask(ws, "a")))
        server:write_app("echo", counting("v2"))
        testing.sleep(1.5)
        assert.are.equal("v1 2 b", (ask(ws, "b")))
        local fresh = assert(server:connect("/echo"))
        assert.are.equal("v1 1 c", (ask(fresh, "c")))
        assert.are.same({}, lines_matching(server:stderr(), any_reload_of("echo")))

        assert(server:signal("HUP"))
        within_a_second(server, ok_line("echo", file, 2))
        assert.are.equal("v2 3 d", (ask(ws, "d")))
        assert_alive(server)
    end)

    it("logs every reload as one line: the app, the version, how long, ok or why not", function()
        local server = start_with {echo = counting("v1")}
        local file = server.apps_dir .. "/echo.lua"
        server:write_app("echo", counting("v2"))
        within_a_second(server, ok_line("echo", file, 2))
        server:write_app("echo", "return nil + + 1\n")
        within_a_second(server, failed_line("echo", file, 2))
        server:write_app("echo", counting("v3"))
        within_a_second(server, ok_line("echo", file, 3))
        assert(server:signal("HUP"))
        within_a_second(server, ok_line("echo", file, 4))
        testing.sleep(0.3)

        local lines = lines_matching(server:stderr(), any_reload_of("echo"))
        assert.are.equal(4, #lines, table.concat(lines, "\n"))
        assert.matches(ok_line("echo", file, 2) .. " %(file changed%)$", lines[1])
        assert.matches(failed_line("echo", file, 2), lines[2])
        assert.matches("keeps serving: " .. lit(file) .. ":1: ", lines[2])
        assert.matches(ok_line("echo", file, 3) .. " %(file changed%)$", lines[3])
        assert.matches(ok_line("echo", file, 4) .. " %(SIGHUP%)$", lines[4])
        assert_alive(server)
    end)

    it("reloads 200 times under 100 echoing connections: no echo lost, memory flat", function()
        -- Both versions echo, tagged by version; each keeps a ballast table
        -- that would make the memory grow if old versions were kept.
        local function version(tag)
            return (([[
local ballast = {}
for i = 1, 10000 do ballast[i] = i end
local app = {ballast = ballast}
function app.on_message(ws, data) ws:send("TAG " .. data) end
return app
]]):gsub("TAG", tag))
        end
        -- Under ASan, freed memory sits in a quarantine (256 MiB by default)
        -- and would read as growth: no quarantine here. Other binaries ignore
        -- the variable.
        local server = start_with({echo = version("A")},
                                  {env = 'ASAN_OPTIONS="${ASAN_OPTIONS:-}:quarantine_size_mb=0"'})
        local file = server.apps_dir .. "/echo.lua"
        local stop_file = server.dir .. "/stop-load"
        local load = assert(io.popen(table.concat({"/usr/bin/python3", "spec/reload/echo_load.py",
                                                   server.host, server.port, "/echo", 100,
                                                   quote(stop_file), 90, "2>&1"}, " ")))
        local ready = load:read("*l")
        local output
        local ok, err = pcall(function()
            assert.are.equal("ready", ready)
            local rss = {}
            for n = 2, 201 do
                server:write_app("echo", version(n % 2 == 0 and "B" or "A"))
                assert(server:wait_log(ok_line("echo", file, n), 5),
                       "reload " .. n .. " not done within 5 s:\n" .. server:stderr())
                if n == 21 then
                    rss.early = server:rss_kib()
                end
            end
            rss.late = server:rss_kib()
            io.stderr:write(string.format(
                "\n[reload_spec] RSS after 20 reloads: %d KiB, after 200: %d KiB (%+d KiB)\n",
                rss.early, rss.late, rss.late - rss.early))
            assert.is_true(rss.late - rss.early < 8 * 1024,
                           "RSS grew from " .. rss.early .. " to " .. rss.late .. " KiB")
        end)
        write_file(stop_file, "")
        output = (ready or "") .. "\n" .. load:read("*a")
        local closed_ok = load:close()
        io.stderr:write("[reload_spec] echo_load: " .. output:gsub("^ready\n", "") .. "\n")
        assert(ok, err)
        assert.is_truthy(closed_ok, output)
        assert.matches("conns=100 open_to_end=100 ", output)
        assert.matches("extra=0 switched=100 ", output)
        assert.are.same({}, lines_matching(server:stderr(), "failed"))
        assert_alive(server)
    end)
end)
