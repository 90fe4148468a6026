-- Which files of the apps directory are routes (README "Writing an app"
-- and "Hot reload"): a file that defines no handler, or one an app
-- requires, is a module and never answers a handshake, at start and when
-- it appears while the server runs; a file whose route would need
-- percent-encoding is refused with a warning; the routes are logged at
-- start; a module runs once per version, not once as an app and again
-- through require.
local testing = require "moonport.testing"

local ECHO = [[
return { on_message = function(ws, data) ws:send(data) end }
]]

-- A helper module: no handler. It prints a line each time it runs.
local function helper(tag)
    return ([[
io.stderr:write("TAG runs\n")
local M = {}
function M.shout(s) return "TAG:" .. s:upper() end
return M
]]):gsub("TAG", tag)
end

-- An app that answers through the module it requires.
local function user_of(module)
    return ([[
local m = require "MOD"
return { on_message = function(ws, data) ws:send(m.shout(data)) end }
]]):gsub("MOD", module)
end

-- A module that also defines handlers: an app may build on it.
local BASE = [[
io.stderr:write("base runs\n")
local base = {}
function base.on_message(ws, data) ws:send("base " .. data) end
return base
]]

-- The status of a handshake to path: 101, or the HTTP status.
local function status(server, path)
    local ws, err, response = server:connect(path, {timeout = 5})
    if ws then
        ws:shutdown()
        return 101
    end
    return response and response.status or err
end

local function ask(ws, data)
    assert(ws:send(data))
    return ws:receive_message(5)
end

local function wait(server, pattern)
    local found = server:wait_log(pattern, 5)
    assert(found ~= nil, "not in the log: " .. pattern .. "\n" .. server:stderr())
    return found
end

local function lit(s)
    return (s:gsub("%p", "%%%0"))
end

describe("routes of the apps directory", function()
    local servers = {}
    local function start(opts)
        local server, err, out = testing.start(opts)
        assert(server, tostring(err) .. "\n" .. tostring(out))
        servers[#servers + 1] = server
        return server
    end
    after_each(function()
        for _, s in ipairs(servers) do
            s:cleanup()
        end
        servers = {}
    end)

    describe("at start", function()
        local server
        before_each(function()
            server = start {apps = {
                echo = ECHO,
                -- Sorted before and after the app that requires it: either
                -- order must give a module, run once.
                aaa_util = helper("aaa_util"),
                zzz_util = helper("zzz_util"),
                chat = user_of("aaa_util"),
                talk = user_of("zzz_util"),
                lonely = helper("lonely"), -- required by nobody
                base = BASE,
                room = [[
local base = require "base"
return { on_message = function(ws, data) ws:send("room+" .. "" ) base.on_message(ws, data) end }
]],
            }}
        end)

        it("a helper that defines no handler answers 404, not 101", function()
            assert.are.equal(404, status(server, "/lonely"))
            wait(server, lit(server.apps_dir .. "/lonely.lua") ..
                 ": a module, not a route %(it defines none of on_connect, on_message, on_close%)")
        end)

        it("a module an app requires answers 404, whichever sorts first", function()
            assert.are.equal(404, status(server, "/aaa_util"))
            assert.are.equal(404, status(server, "/zzz_util"))
            wait(server, lit(server.apps_dir .. "/aaa_util.lua: a module, not a route (required by "
                 .. server.apps_dir .. "/chat.lua)"))
            wait(server, lit(server.apps_dir .. "/zzz_util.lua: a module, not a route (required by "
                 .. server.apps_dir .. "/talk.lua)"))
            local ws = assert(server:connect("/chat"))
            assert.are.equal("aaa_util:HI", (ask(ws, "hi")))
            ws:shutdown()
            ws = assert(server:connect("/talk"))
            assert.are.equal("zzz_util:HO", (ask(ws, "ho")))
            ws:shutdown()
        end)

        it("a required module that defines handlers is not a route either", function()
            assert.are.equal(404, status(server, "/base"))
            wait(server, lit(server.apps_dir .. "/base.lua: a module, not a route (required by "
                 .. server.apps_dir .. "/room.lua)"))
            local ws = assert(server:connect("/room"))
            ask(ws, "x") -- "room+"
            ws:shutdown()
        end)

        it("runs each module once, not once as an app and again through require", function()
            assert(server:wait_log("listening on", 5))
            local out = server:stderr()
            for _, tag in ipairs {"aaa_util", "zzz_util", "lonely", "base"} do
                assert.are.equal(1, testing.count(out, tag .. " runs"), out)
            end
        end)

        it("logs every route, and only the routes", function()
            wait(server, "listening on [^\n]*%(4 routes%)")
            local err = server:stderr()
            for _, name in ipairs {"chat", "echo", "room", "talk"} do
                assert.truthy(err:find("route /" .. name .. " -> " .. server.apps_dir .. "/" ..
                    name .. ".lua", 1, true), err)
            end
            assert.are.equal(4, testing.count(err, "route /"), err)
            assert.are.equal(101, status(server, "/echo"))
        end)
    end)

    it("refuses a file whose route would need percent-encoding, with a warning", function()
        local server = start {apps = {echo = ECHO, ["sp ace"] = ECHO, ["caf\xc3\xa9"] = ECHO,
                                      ["ok-name_1.2~"] = ECHO}}
        wait(server, "warn  " .. lit(server.apps_dir .. "/sp ace.lua: not served: its route " ..
             "/sp ace would need percent-encoding (' ' is byte 0x20)"))
        wait(server, "warn  " .. lit(server.apps_dir .. "/caf\xc3\xa9.lua: not served: its route"))
        assert.are.equal(404, status(server, "/sp%20ace"))
        assert.are.equal(404, status(server, "/caf%C3%A9"))
        assert.are.equal(101, status(server, "/ok-name_1.2~"))
        wait(server, "listening on [^\n]*%(2 routes%)")
    end)

    it("refuses a config route that would need percent-encoding: exit 1 naming it", function()
        local dir = testing.temp_dir()
        testing.write_file(dir .. "/echo.lua", ECHO)
        testing.write_file(dir .. "/config.lua",
            'return { routes = { ["/ok"] = "echo.lua", ["/my room"] = "echo.lua" } }\n')
        local rc, out = testing.capture(testing.quote(os.getenv("MOONPORT_BIN") or "bin/moonport")
            .. " --port 0 --config " .. testing.quote(dir .. "/config.lua") .. " </dev/null", 10)
        testing.run("rm -rf " .. testing.quote(dir))
        assert.are.equal(1, rc, out)
        assert.truthy(out:find('route "/my room": \' \' (0x20) would be percent-encoded', 1, true),
            out)
    end)

    describe("while running", function()
        it("a new helper file is not a route; a new app may require it", function()
            local server = start {apps = {echo = ECHO}}
            assert(server:wait_log("listening on", 5))
            server:write_app("util", helper("util"))
            wait(server, lit(server.apps_dir .. "/util.lua") .. ": a module, not a route %(it " ..
                 "defines none")
            assert.are.equal(404, status(server, "/util"))
            server:write_app("chat", user_of("util"))
            wait(server, "new app chat %(")
            local ws = assert(server:connect("/chat"))
            assert.are.equal("util:HEY", (ask(ws, "hey")))
            wait(server, lit(server.apps_dir .. "/util.lua: a module, not a route (required by " ..
                 server.apps_dir .. "/chat.lua)"))
            assert.are.equal(404, status(server, "/util"))
            assert.are.equal(1, testing.count(server:stderr(), "util runs"), server:stderr())
            -- A change to the module still reloads the app that requires it, once.
            server:write_app("util", (helper("util"):gsub("upper", "lower")))
            wait(server, "reload chat %([^\n]* v2 ok")
            assert.are.equal("util:hey", (ask(ws, "HEY")))
            assert.are.equal(2, testing.count(server:stderr(), "util runs"), server:stderr())
            assert.are.equal(404, status(server, "/util"))
            ws:shutdown()
            assert.is_true(server:alive())
        end)

        it("a new module with handlers that a new app requires is not a route", function()
            local server = start {apps = {echo = ECHO}}
            assert(server:wait_log("listening on", 5))
            -- Both appear in one burst: the app sorts first and requires the module.
            testing.write_file(server.apps_dir .. "/base.lua", BASE)
            testing.write_file(server.apps_dir .. "/a_room.lua", [[
local base = require "base"
return { on_message = base.on_message }
]])
            wait(server, "new app a_room %(")
            wait(server, lit(server.apps_dir .. "/base.lua: a module, not a route (required by " ..
                 server.apps_dir .. "/a_room.lua)"))
            assert.are.equal(404, status(server, "/base"))
            local ws = assert(server:connect("/a_room"))
            assert.are.equal("base x", (ask(ws, "x")))
            ws:shutdown()
        end)

        it("an app that becomes required stops being a route; its connections get 1001",
           function()
            local server = start {apps = {echo = ECHO, base = BASE}}
            local old = assert(server:connect("/base"))
            assert.are.equal("base a", (ask(old, "a")))
            server:write_app("room", [[
local base = require "base"
return { on_message = function(ws, data) base.on_message(ws, "room " .. data) end }
]])
            wait(server, lit(server.apps_dir .. "/base.lua: a module, not a route (required by " ..
                 server.apps_dir .. "/room.lua)"))
            assert.are.equal(1001, (old:expect_close(5)))
            assert.are.equal(404, status(server, "/base"))
            local ws = assert(server:connect("/room"))
            assert.are.equal("base room b", (ask(ws, "b")))
            ws:shutdown()
            assert.are.equal(1, testing.count(server:stderr(), "base runs"), server:stderr())
        end)

        it("a helper that gains a handler becomes a route; one that loses them is not",
           function()
            local server = start {apps = {echo = ECHO, util = helper("util")}}
            assert.are.equal(404, status(server, "/util"))
            server:write_app("util", ECHO)
            wait(server, lit(server.apps_dir .. "/util.lua: now an app at /util"))
            local ws = assert(server:connect("/util"))
            assert.are.equal("u", (ask(ws, "u")))
            server:write_app("util", helper("util"))
            wait(server, "app util %([^\n]*%) is a module now: its routes answer 404; 1 " ..
                 "connection%(s%) closed with 1001")
            assert.are.equal(1001, (ws:expect_close(5)))
            assert.are.equal(404, status(server, "/util"))
            assert.is_true(server:alive())
        end)

        it("a new file whose route would need percent-encoding is refused with a warning",
           function()
            local server = start {apps = {echo = ECHO}}
            assert(server:wait_log("listening on", 5))
            server:write_app("new room", ECHO)
            wait(server, "warn  " .. lit(server.apps_dir .. "/new room.lua: not served: its " ..
                 "route /new room would need percent-encoding"))
            assert.are.equal(404, status(server, "/new%20room"))
            assert.are.equal(101, status(server, "/echo"))
        end)
    end)
end)
