-- Interop with a real browser: the README promises that the example apps
-- answer any standard WebSocket client, a browser included. Headless
-- Chromium opens spec/browser/interop.html, which talks to the shipped
-- apps/echo.lua and apps/chat.lua, checks every answer itself and reports one
-- line to a small /report app that logs it. No DevTools protocol, no npm.
-- A missing chromium is a failure, never a skip.
local testing = require "moonport.testing"
local quote = testing.quote
local read_file = testing.read_file
local run = testing.run
local socket = require "socket"

-- Logs every text message it gets, where the spec waits for the result.
local REPORT = [[
local moonport = require "moonport"
local app = {}
function app.on_message(ws, data, kind)
  if kind == "text" then moonport.log("info", "REPORT " .. data) end
end
return app
]]

-- As root Chromium needs --no-sandbox; the last five keep it from calling
-- home, which on a closed network means a flood of failing connections.
local FLAGS = "--headless --no-sandbox --disable-gpu --disable-quic --no-first-run " ..
    "--disable-background-networking --disable-component-update --disable-sync " ..
    -- The page's console goes to the log, for the failure message.
    "--enable-logging=stderr --v=0"

local RESULT_TIMEOUT = 30

local function capture(cmd)
    local p = assert(io.popen(cmd))
    local out = p:read("*a")
    p:close()
    return (out:gsub("%s+$", ""))
end

local count = testing.count

local function file_url(path)
    return "file://" .. path:gsub("[^%w/%-%._~]", function(c)
        return string.format("%%%02X", c:byte())
    end)
end

-- The last lines of Chromium's log that say something about the page,
-- without the D-Bus complaints of a machine with no desktop session.
local function log_tail(text, n)
    local lines = {}
    for line in (text or ""):gmatch("[^\n]+") do
        if not line:find("dbus", 1, true) then
            lines[#lines + 1] = line
        end
    end
    return table.concat(lines, "\n", math.max(1, #lines - n + 1))
end

local browser = {}
browser.__index = browser

-- Starts Chromium on url with a fresh profile under dir. setsid gives it its
-- own process group, whose id is its pid, so its helper processes can be
-- swept too; the wrapping shell waits for it and records its exit status, so
-- a browser that died is never mistaken for a live zombie.
function browser.start(bin, dir, url, flags)
    local self = setmetatable({dir = dir, profile = dir .. "/chromium-profile"}, browser)
    local d = quote(dir)
    local inner = string.format("setsid %s %s %s --user-data-dir=%s %s >%s/chromium.log 2>&1 " ..
        "</dev/null & echo $! >%s/chromium.pid.tmp; mv %s/chromium.pid.tmp %s/chromium.pid; " ..
        "wait $!; echo $? >%s/chromium.rc.tmp; mv %s/chromium.rc.tmp %s/chromium.rc",
        quote(bin), FLAGS, flags or "", quote(self.profile), quote(url), d, d, d, d, d, d, d)
    assert(run("mkdir " .. quote(self.profile)), "cannot create " .. self.profile)
    assert(run("sh -c " .. quote(inner) .. " >/dev/null 2>&1 </dev/null &"), "cannot run sh")
    local deadline = socket.gettime() + 5
    repeat
        self.pid = tonumber(read_file(dir .. "/chromium.pid") or "")
        if not self.pid then
            socket.sleep(0.01)
        end
    until self.pid or socket.gettime() > deadline
    assert(self.pid, "chromium was not started")
    return self
end

function browser:exit_status()
    local rc = read_file(self.dir .. "/chromium.rc")
    return rc and rc:find("\n") and tonumber(rc:match("%d+"))
end

function browser:log()
    return read_file(self.dir .. "/chromium.log") or ""
end

local function wait_until(done, timeout)
    local deadline = socket.gettime() + timeout
    while not done() do
        if socket.gettime() > deadline then
            return false
        end
        socket.sleep(0.05)
    end
    return true
end

-- TERM lets Chromium take its helpers down with it; whatever is left of its
-- process group after 5 s is killed. Then its profile is removed.
function browser:stop()
    if not self.pid then
        return
    end
    local group = "-- -" .. self.pid
    run("kill -TERM " .. self.pid .. " 2>/dev/null")
    if not wait_until(function() return self:exit_status() end, 5) then
        run("kill -KILL " .. group .. " 2>/dev/null")
    end
    wait_until(function() return not run("kill -0 " .. group .. " 2>/dev/null") end, 5)
    run("kill -KILL " .. group .. " 2>/dev/null")
    run("rm -rf " .. quote(self.profile))
    self.pid = nil
end

describe("interop with a browser", function()
    local server, chromium, certs

    after_each(function()
        if chromium then
            chromium:stop()
            chromium = nil
        end
        if server then
            server:cleanup()
            server = nil
        end
        if certs then
            run("rm -rf " .. quote(certs))
            certs = nil
        end
    end)

    -- Serves the shipped apps (over TLS with tls = {cert, key}), opens the
    -- page in headless Chromium, and checks its verdict and the server's log.
    local function page_test(tls)
        local want = os.getenv("CHROMIUM") or "chromium"
        local bin = capture("command -v " .. quote(want) .. " 2>/dev/null")
        assert(bin ~= "", "chromium is not installed (no `" .. want .. "` on PATH): this " ..
            "spec needs a real browser; install it with `make deps-test` or " ..
            "`apt-get install chromium`, or point $CHROMIUM at one")
        local version = capture(quote(bin) .. " --version 2>/dev/null")

        local err, stderr
        server, err, stderr = testing.start {
            apps = {
                echo = assert(read_file("apps/echo.lua")),
                chat = assert(read_file("apps/chat.lua")),
                report = REPORT,
            },
            files = {["interop.html"] = assert(read_file("spec/browser/interop.html"))},
            tls = tls,
        }
        assert(server, tostring(err) .. "\n" .. tostring(stderr))

        chromium = browser.start(bin, server.dir,
            file_url(server.dir .. "/interop.html") .. "?port=" .. server.port ..
            (tls and "&scheme=wss" or ""), tls and "--ignore-certificate-errors" or "")
        local verdict, rest
        wait_until(function()
            verdict, rest = server:wait_log("REPORT RESULT (%w+)([^\n]*)", 0)
            return verdict or chromium:exit_status()
        end, RESULT_TIMEOUT)
        local function context()
            return "\n" .. version .. "\n--- chromium's log:\n" .. log_tail(chromium:log(), 25) ..
                "\n--- server stderr:\n" .. server:stderr() ..
                "--- server access log:\n" .. server:stdout()
        end
        local status = chromium:exit_status()
        assert(verdict, (status and "chromium exited with status " .. status ..
            " before the page reported a result" or "the page reported no result in " ..
            RESULT_TIMEOUT .. " s") .. context())
        assert.equal("ok", verdict, "the page reported:" .. rest .. context())

        -- The server saw it too: the browser's one /echo connection ended
        -- with the browser's 4000, both chat members left normally, and
        -- nothing was a protocol error.
        assert(server:wait_log("\"WSDISCONNECT /echo\"[^\n]*code=4000", 5),
            "no WSDISCONNECT /echo with code=4000" .. context())
        local access = server:stdout()
        assert.equal(1, count(access, "\"WSCONNECT /echo\""), access)
        assert.equal(1, count(access, "\"WSDISCONNECT /echo\""), access)
        assert.equal(2, count(access, "\"WSCONNECT /chat\""), access)
        assert.equal(2, count(access, "\"WSDISCONNECT /chat\"[^\n]*code=1000"), access)
        local log = server:stderr()
        assert.is_nil(log:find("failing the connection", 1, true), log)
        assert.is_nil(log:find("error ", 1, true), log)
        assert.is_true(server:alive(), "the server died")
    end

    it("headless Chromium: the shipped echo app returns UTF-8, empty, 100 KiB and binary " ..
        "messages identical and closes with 4000; chat relays b's message to a", function()
        page_test(nil)
    end)

    it("headless Chromium over wss:// (a throwaway self-signed certificate): the same", function()
        certs = testing.temp_dir()
        local cert, key = testing.make_cert(certs, "browser")
        page_test({cert = cert, key = key})
    end)
end)
