-- moonport.http.request (README "Waiting: handlers that talk to the world"),
-- through the real binary against a real backend this spec starts
-- (spec/support/httpbackend.py, plain and HTTPS with a throwaway
-- certificate): status, headers and body; chunked and read-to-the-end
-- bodies; HEAD; keep-alive reuse (the backend counts TCP connections);
-- refused, no such host, timeouts of each kind (connect, read, the whole
-- request); a backend that resets, sends garbage, sends a 100 MB body (the
-- limit refuses it and the server's memory stays bounded), never answers;
-- TLS verified by default, accepted with ca_file or verify = false; misuse
-- raises; and 1,000 other connections keep echoing while one handler waits
-- 2 s for a slow backend.
--
-- The app runs Lua snippets the spec sends ("lua <code>", each in a
-- handler, so they may wait) and answers with their results joined by "|";
-- any other message is echoed.
local testing = require "moonport.testing"
local backend = require "support.backend"
local echo_load = require "support.echo_load"

local APP = [[
local moonport = require "moonport"
local http = require "moonport.http"
local app = {}
local P = {}
local function fmt(...)
  local t = {}
  for i = 1, select("#", ...) do t[i] = tostring((select(i, ...))) end
  return table.concat(t, "|")
end
local env = setmetatable({ moonport = moonport, http = http, P = P, fmt = fmt }, { __index = _G })
function app.on_close(ws)
  moonport.log("info", "mark on_close", ws.id)
end
function app.on_message(ws, data)
  local cmd, arg = data:match("^(%S+) ?(.*)$")
  if cmd == "ports" then
    P.plain, P.tls, P.stuck, P.free, P.cert = arg:match("(%d+) (%d+) (%d+) (%d+) (%S+)")
    P.url = "http://127.0.0.1:" .. P.plain
    P.surl = "https://127.0.0.1:" .. P.tls
    return ws:send("ok")
  elseif cmd == "lua" then
    local f, err = loadstring(arg, "=snippet")
    if not f then return ws:send("compile: " .. err) end
    env.ws = ws
    setfenv(f, env)
    local res = { pcall(f) }
    if not res[1] then return ws:send("error: " .. tostring(res[2])) end
    return ws:send(fmt(unpack(res, 2, table.maxn(res))))
  end
  return ws:send(data)
end
return app
]]


describe("moonport.http.request", function()
    local server, dir, cert
    local backends = {}
    local P = {}

    setup(function()
        dir = testing.temp_dir()
        local key
        cert, key = testing.make_cert(dir, "backend")
        P.plain, P.tls, backends[1] = backend(dir, "http", "spec/support/httpbackend.py",
            "--cert " .. testing.quote(cert) .. " --key " .. testing.quote(key))
        P.stuck, _, backends[2] = backend(dir, "stuck", "spec/support/tcp_backend.py",
            "--stuck")
        P.free = testing.free_port()
        local err, out
        server, err, out = testing.start {
            apps = { http = APP },
            env = 'ASAN_OPTIONS="${ASAN_OPTIONS:-}:quarantine_size_mb=0"',
        }
        assert(server, tostring(err) .. "\n" .. tostring(out))
    end)

    teardown(function()
        if server then server:cleanup() end
        for _, pid in ipairs(backends) do os.execute("kill " .. pid .. " 2>/dev/null") end
        if dir then os.execute("rm -rf " .. testing.quote(dir)) end
    end)

    local function connect()
        local ws = assert(server:connect("/http"))
        assert(ws:send(string.format("ports %d %d %d %d %s", P.plain, P.tls, P.stuck, P.free, cert)))
        assert.are.equal("ok", (ws:receive_message(5)))
        return ws
    end

    local function ask(ws, code, timeout)
        assert(ws:send("lua " .. code))
        local data, err = ws:receive_message(timeout or 20)
        assert(data, "no answer to " .. code .. ": " .. tostring(err))
        return data
    end

    it("GETs status, headers and body", function()
        local ws = connect()
        assert.are.equal("200|application/json|one, two|2|a=1; Path=/|b=2", ask(ws, [[
            local r = assert(http.request{ url = P.url .. "/echo?x=1" })
            local cookies = r.headers["set-cookie"]
            return r.status, r.headers["content-type"], r.headers["x-multi"], #cookies,
                   cookies[1], cookies[2] ]]))
        -- What the backend saw: the request line, Host, User-Agent.
        local seen = ask(ws, [[
            local r = assert(http.request{ url = P.url .. "/echo?x=1#frag" })
            return r.body ]])
        assert.truthy(seen:find('"method": "GET"', 1, true), seen)
        assert.truthy(seen:find('"path": "/echo?x=1"', 1, true), seen)
        assert.truthy(seen:find('"host": "127.0.0.1:' .. P.plain .. '"', 1, true), seen)
        assert.truthy(seen:find('"user-agent": "moonport/', 1, true), seen)
        -- A status that is not 2xx is an answer, not an error.
        assert.are.equal("404|no such path", ask(ws, [[
            local r = assert(http.request{ url = P.url .. "/nothing" })
            return r.status, r.body ]]))
        assert.are.equal("503", ask(ws, [[
            return (assert(http.request{ url = P.url .. "/echo?status=503" })).status ]]))
        ws:close()
    end)

    it("sends a method, headers and a body", function()
        local ws = connect()
        local seen = ask(ws, [[
            local r = assert(http.request{ method = "POST", url = P.url .. "/echo",
              headers = { ["X-Token"] = "abc", ["X-List"] = { "1", "2" }, ["User-Agent"] = "mine" },
              body = "name=moon" })
            return r.status .. " " .. r.body ]])
        assert.truthy(seen:match("^200 "), seen)
        assert.truthy(seen:find('"method": "POST"', 1, true), seen)
        assert.truthy(seen:find('"body": "name=moon"', 1, true), seen)
        assert.truthy(seen:find('"x-token": "abc"', 1, true), seen)
        assert.truthy(seen:find('"content-length": "9"', 1, true), seen)
        assert.truthy(seen:find('"user-agent": "mine"', 1, true), seen)
        ws:close()
    end)

    it("reads chunked bodies, bodies that end with the connection, and HEAD", function()
        local ws = connect()
        assert.are.equal("200|chunk1,chunk2,chunk3,chunk4,chunk5,|chunked", ask(ws, [[
            local r = assert(http.request{ url = P.url .. "/chunked" })
            return r.status, r.body, r.headers["transfer-encoding"] ]]))
        assert.are.equal("200|until the end", ask(ws, [[
            local r = assert(http.request{ url = P.url .. "/eof" })
            return r.status, r.body ]]))
        -- HEAD: the length a GET would have, and no body.
        local got = ask(ws, [[
            local r = assert(http.request{ method = "HEAD", url = P.url .. "/echo" })
            return r.status, #r.body, r.headers["content-length"] ]])
        local status, blen, clen = got:match("^(%d+)|(%d+)|(%d+)$")
        assert.are.equal("200", status)
        assert.are.equal("0", blen)
        assert.is_true(tonumber(clen) > 0, got)
        -- The kept connection is still in step after HEAD's bodiless answer.
        assert.are.equal("200|chunk1,", ask(ws, [[
            local r = assert(http.request{ url = P.url .. "/chunked?n=1" })
            return r.status, r.body ]]))
        ws:close()
    end)

    it("keeps connections alive and reuses them, unless told not to", function()
        local ws = connect()
        -- Twenty requests in a row over one connection (the first /conns
        -- may open one: the pool may hold none for this backend yet).
        local got = ask(ws, [[
            local a = tonumber(assert(http.request{ url = P.url .. "/conns" }).body)
            for i = 1, 20 do assert(http.request{ url = P.url .. "/echo?i=" .. i }) end
            local b = tonumber(assert(http.request{ url = P.url .. "/conns" }).body)
            -- Connection: close from the backend (the first of them takes
            -- the kept connection, the other two open theirs), keepalive =
            -- false (three more), and this /conns (one more).
            for i = 1, 3 do assert(http.request{ url = P.url .. "/close" }) end
            for i = 1, 3 do assert(http.request{ url = P.url .. "/echo", keepalive = false }) end
            local c = tonumber(assert(http.request{ url = P.url .. "/conns" }).body)
            return b - a, c - b ]])
        assert.are.equal("0|6", got)
        ws:close()
    end)

    it("returns nil, err when the backend fails, and times out every wait", function()
        local ws = connect()
        assert.are.equal("nil|connection refused", ask(ws, [[
            return http.request{ url = "http://127.0.0.1:" .. P.free .. "/" } ]]))
        assert.are.equal("nil|no such host", ask(ws, [[
            return http.request{ url = "http://moonport-http-spec.invalid/" } ]]))
        -- Connect timeout (a listener whose accept queue is full), read
        -- timeout (a backend that never answers), and the whole request's
        -- deadline across a slow answer.
        assert.are.equal("nil|timeout", ask(ws, [[
            return http.request{ url = "http://127.0.0.1:" .. P.stuck .. "/", timeout = 300 } ]]))
        assert.are.equal("nil|timeout", ask(ws, [[
            return http.request{ url = P.url .. "/never", timeout = 300 } ]]))
        assert.are.equal("nil|timeout", ask(ws, [[
            return http.request{ url = P.url .. "/slow?s=1", timeout = 300 } ]]))
        -- A reset, garbage.
        local reset = ask(ws, [[ return http.request{ url = P.url .. "/reset" } ]])
        assert.truthy(reset == "nil|connection reset by peer" or reset == "nil|closed", reset)
        local garbage = ask(ws, [[ return http.request{ url = P.url .. "/garbage" } ]])
        assert.truthy(garbage:match("^nil|bad response: "), garbage)
        -- The socket helper still works afterwards.
        assert.are.equal("200", ask(ws, [[
            return (assert(http.request{ url = P.url .. "/echo" })).status ]]))
        ws:close()
    end)

    it("refuses a body past the limit, and the server's memory stays bounded", function()
        local ws = connect()
        local rss0 = server:rss_kib()
        -- Content-Length says 100 MB: refused before any of it is read.
        assert.are.equal("nil|body too large", ask(ws, [[
            return http.request{ url = P.url .. "/big" } ]]))
        -- A chunked body without end: refused when it passes max_body.
        assert.are.equal("nil|body too large", ask(ws, [[
            return http.request{ url = P.url .. "/bigchunked", max_body = 4 * 1024 * 1024 } ]]))
        assert.are.equal("nil|body too large", ask(ws, [[
            return http.request{ url = P.url .. "/bigchunked" } ]], 60))
        -- Within the limit it is fine.
        assert.are.equal("200|7", ask(ws, [[
            local r = assert(http.request{ url = P.url .. "/chunked?n=1", max_body = 7 })
            return r.status, #r.body ]]))
        assert.are.equal("nil|body too large", ask(ws, [[
            return http.request{ url = P.url .. "/chunked?n=2", max_body = 7 } ]]))
        collectgarbage()
        local rss1 = server:rss_kib()
        io.stderr:write(string.format("\n[http_spec] RSS around the 100 MB bodies: %d -> %d KiB\n",
            rss0, rss1))
        -- The default limit is 16 MiB: at most that (and its copy as a Lua
        -- string in flight), never the 100 MB offered.
        assert.is_true(rss1 - rss0 < 64 * 1024, rss0 .. " -> " .. rss1)
        ws:close()
    end)

    it("verifies certificates by default; ca_file and verify = false pass through", function()
        local ws = connect()
        local refused = ask(ws, [[ return http.request{ url = P.surl .. "/echo" } ]])
        assert.truthy(refused:match("^nil|certificate verify failed: "), refused)
        assert.are.equal("200|chunk1,", ask(ws, [[
            local r = assert(http.request{ url = P.surl .. "/chunked?n=1", ca_file = P.cert })
            return r.status, r.body ]]))
        assert.are.equal("200", ask(ws, [[
            return (assert(http.request{ url = P.surl .. "/echo", verify = false })).status ]]))
        -- localhost is in the certificate too; the name is checked.
        assert.are.equal("200", ask(ws, [[
            return (assert(http.request{ url = "https://localhost:" .. P.tls .. "/echo",
                                         ca_file = P.cert })).status ]]))
        ws:close()
    end)

    it("raises on misuse, naming moonport.http.request and the app's line", function()
        local ws = connect()
        local function try(code)
            return ask(ws, "local ok, err = pcall(function()\n" .. code .. "\nend) return err")
        end
        local cases = {
            { [[http.request("http://x/")]], "#1 to 'moonport.http.request' (table expected, got string)" },
            { [[http.request{}]], "(url: string expected, got nil)" },
            { [[http.request{ url = "ftp://x/" }]], "(url: scheme must be http or https)" },
            { [[http.request{ url = "x/y" }]], "(url: not an absolute http or https URL)" },
            { [[http.request{ url = "http://h:99999/" }]], "(url: bad port in the URL)" },
            { [[http.request{ url = "http://[::1/" }]], "(url: bad IPv6 address in the URL)" },
            { [[http.request{ url = "http://h/a b" }]], "may not hold spaces or control characters" },
            { [[http.request{ url = "http://h/", method = "GET /x" }]], "method must be a token" },
            { [[http.request{ url = "http://h/", headers = { ["X-A"] = "1\r\nX-B: 2" } }]],
              "(headers: header X-A holds CR, LF or NUL)" },
            { [[http.request{ url = "http://h/", headers = { ["X A"] = "1" } }]],
              "(headers: header name X A is not a token)" },
            { [[http.request{ url = "http://h/", headers = { ["Content-Length"] = "1" } }]],
              "(headers: header Content-Length is set from body)" },
            { [[http.request{ url = "http://h/", body = 5 }]], "(body: string expected, got number)" },
            { [[http.request{ url = "http://h/", timeout = -1 }]], "timeout must be a positive number" },
            { [[http.request{ url = "http://h/", verify = "no" }]], "(verify: boolean expected" },
        }
        for _, c in ipairs(cases) do
            local err = try(c[1])
            assert.truthy(err:find("^snippet:2: bad argument #1 to 'moonport.http.request' ") and
                err:find(c[2], 1, true), c[1] .. " -> " .. err)
        end
        ws:close()
    end)

    it("reaches IPv6 literals in brackets", function()
        local ok = os.execute("python3 -c 'import socket; s = socket.socket(socket.AF_INET6); " ..
            "s.bind((\"::1\", 0))' 2>/dev/null")
        if not (ok == true or ok == 0) then
            pending("no IPv6 loopback here")
            return
        end
        local ws = connect()
        -- The backend listens on IPv4 only: a refused connect to [::1]
        -- shows the literal was parsed and used.
        assert.are.equal("nil|connection refused", ask(ws, [[
            return http.request{ url = "http://[::1]:" .. P.free .. "/" } ]]))
        ws:close()
    end)

    it("keeps 1,000 other connections echoing while one handler waits 2 s on a backend", function()
        local function load(tag) echo_load(server, "/http", "http_spec", tag) end
        load("1,000 echoing, nobody waits")
        local ws = connect()
        assert(ws:send("lua return http.request{ url = P.url .. '/slow?s=2' }.body"))
        load("1,000 echoing, one handler waits 2 s on the slow backend")
        assert.are.equal("slow", (ws:receive_message(10)))
        ws:close()
    end)

    it("finishes a request whose handler's connection closes meanwhile; on_close follows", function()
        local ws = connect()
        assert(ws:send([[lua
            moonport.log("info", "mark request starts", ws.id)
            local r, err = http.request{ url = P.url .. "/slow?s=1" }
            moonport.log("info", "mark request ended", ws.id, r and r.status, err, (ws:send("x")))
            return "unreachable" ]]))
        local id = assert(server:wait_log("mark request starts (%d+)", 5))
        ws:close()
        assert.truthy(server:wait_log("mark request ended " .. id .. " 200 nil nil", 10))
        assert.truthy(server:wait_log("mark on_close " .. id .. "\n", 5))
        local log = server:stderr()
        assert.is_true(log:find("mark request ended " .. id, 1, true) <
            log:find("mark on_close " .. id .. "\n", 1, true))
    end)

    it("leaves no wait, coroutine or socket behind after thousands of requests", function()
        local ws = connect()
        local trail = {}
        for _ = 1, 6 do
            assert.are.equal("done", ask(ws, [[
                for i = 1, 1000 do
                  local r = assert(http.request{ url = P.url .. "/echo?i=" .. i })
                  assert(r.status == 200)
                end
                for i = 1, 50 do
                  assert(http.request{ url = P.url .. "/never", timeout = 1 } == nil)
                end
                collectgarbage()
                return "done" ]], 120))
            trail[#trail + 1] = server:rss_kib()
        end
        io.stderr:write("\n[http_spec] RSS after each 1,050 requests (KiB): " ..
            table.concat(trail, " ") .. "\n")
        assert.is_true(trail[6] <= math.max(trail[2], trail[3]) + 1024, table.concat(trail, " "))
        assert.are.equal("0", ask(ws, "return moonport.waiting()"))
        ws:close()
        assert.is_true(server:alive())
    end)

    it("exits cleanly with a connection kept in the pool (ASan: nothing leaked)", function()
        local ws = connect()
        assert.are.equal("200", ask(ws, [[
            return (assert(http.request{ url = P.url .. "/echo" })).status ]]))
        local status = server:stop(10)
        assert.are.equal(0, status, server:stderr():sub(-3000))
    end)
end)
