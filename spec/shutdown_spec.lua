-- Graceful drain, rolling restarts and connection lifetime (README
-- "Operating moonport"), through the real binary. SIGTERM and SIGINT close
-- the open connections with 1001, SIGUSR2 with 1012, spread over
-- timeouts.drain rather than in one instant, while /healthz answers 503
-- and the connections not yet closed keep being served; a second signal
-- drops the rest at once. Connections queued or handshaking at the signal
-- are served, then closed, never reset. A moonport started with
-- --takeover accepts on the address of a running one, so a client
-- connecting in a loop through a restart sees no refused or reset
-- connection. timeouts.lifetime closes a connection with 1001 after that
-- long. Spread is checked, never a timing.
local testing = require "moonport.testing"
local client = require "moonport.client"
local socket = require "socket"

local ECHO = [[
local app = {}
function app.on_message(ws, data) ws:send(data) end
return app
]]

local function free_port()
    local s = assert(socket.bind("127.0.0.1", 0))
    local _, port = s:getsockname()
    s:close()
    return tonumber(port)
end

local function start(opts)
    opts.apps = opts.apps or { echo = ECHO }
    local server, why, err = testing.start(opts)
    assert(server, tostring(why) .. "\n" .. tostring(err))
    return server
end

local function admin_get(server, path)
    local r = assert(client.request("127.0.0.1", server.admin_port,
                                    "GET " .. path .. " HTTP/1.1\r\nHost: x\r\n\r\n", 5))
    return r.status, r.body
end

-- n connections to /echo, each proven to echo.
local function open_many(server, n)
    local conns = {}
    for i = 1, n do
        conns[i] = assert(server:connect("/echo"))
        assert(conns[i]:send("hi " .. i))
        assert.are.equal("hi " .. i, (conns[i]:receive_message(5)))
    end
    return conns
end

-- Waits for every connection's close frame (answering it, as a client
-- does) or the end of its stream; returns when each one came and its code
-- ("eof" for none). after(k) runs after the k-th close.
local function collect_closes(conns, timeout, after)
    local pending, times, codes, k = {}, {}, {}, 0
    for i, ws in ipairs(conns) do pending[ws.conn.sock] = i end
    local deadline = socket.gettime() + timeout
    while next(pending) and socket.gettime() < deadline do
        local socks = {}
        for s in pairs(pending) do socks[#socks + 1] = s end
        local readable = socket.select(socks, nil, 0.05)
        for _, s in ipairs(readable) do
            local i = pending[s]
            local f = conns[i]:receive(2)
            if not f or f.opcode == 8 then
                times[i], codes[i] = socket.gettime(), f and f.code or "eof"
                if f then conns[i]:close(f.code) end
                pending[s] = nil
                k = k + 1
                if after then after(k) end
            end
        end
    end
    return times, codes
end

-- The closes span more than half the window, and no 100 ms holds more
-- than a third of them.
local function assert_spread(times, n, window)
    local t = {}
    for _, v in pairs(times) do t[#t + 1] = v end
    table.sort(t)
    assert.are.equal(n, #t)
    local span = t[#t] - t[1]
    assert.is_true(span > window / 2, ("the closes span %.3f s of a %g s window"):format(span, window))
    for i = 1, #t do
        local j = i
        while j < #t and t[j + 1] - t[i] < 0.1 do j = j + 1 end
        assert.is_true(j - i + 1 <= n / 3,
                       ("%d of %d closes within 100 ms from %.3f s"):format(j - i + 1, n, t[i] - t[1]))
    end
end

describe("a drain", function()
    local server
    after_each(function()
        if server then server:cleanup() end
        server = nil
    end)

    for _, workers in ipairs { 1, 2 } do
        it("spreads the closes (1001) over timeouts.drain, serving the rest meanwhile, and exits 0 "
           .. "(--workers " .. workers .. ")", function()
            local N, WINDOW = 50, 2
            server = start {
                config = "return { apps = 'apps', timeouts = { drain = " .. WINDOW .. " } }",
                args = { "--workers", tostring(workers), "--admin", "127.0.0.1:" .. free_port() },
            }
            local conns = open_many(server, N)
            assert.are.equal(200, (admin_get(server, "/healthz")))
            assert.truthy(server:signal("TERM"))
            -- Out of the balancer at once, while the connections are still open.
            assert.are.equal(503, (admin_get(server, "/healthz")))
            -- The newest connection is closed last: it is still served.
            assert(conns[N]:send("still here"))
            assert.are.equal("still here", (conns[N]:receive_message(5)))
            local sampled
            local times, codes = collect_closes(conns, WINDOW + 10, function(k)
                if k == 10 then
                    local status, text = admin_get(server, "/metrics")
                    assert.are.equal(200, status)
                    sampled = text
                end
            end)
            for i = 1, N do assert.are.equal(1001, codes[i], "connection " .. i) end
            assert_spread(times, N, WINDOW)
            assert.are.equal(0, server:wait(10), server:stderr())
            assert.are.equal(1, testing.metric(sampled, "moonport_draining"))
            local drained = testing.metric(sampled, "moonport_drain_closes_total")
            assert.is_true(drained >= 10 and drained <= N, tostring(drained))
            assert.are.equal(0, (testing.promtool_check(sampled)))
            assert.truthy(server:stderr():find("SIGTERM: closing %d+ connection%(s%) with 1001 over"))
        end)
    end

    for _, workers in ipairs { 1, 2 } do
        it("closes with 1012 (service restart) on SIGUSR2 (--workers " .. workers .. ")", function()
            server = start {
                config = "return { apps = 'apps', timeouts = { drain = 0.5 } }",
                args = { "--workers", tostring(workers) },
            }
            local conns = open_many(server, 6)
            assert.truthy(server:signal("USR2"))
            local _, codes = collect_closes(conns, 10)
            for i = 1, 6 do
                assert.are.equal(1012, codes[i], "connection " .. i)
            end
            assert.are.equal(0, server:wait(10), server:stderr())
            assert.truthy(server:stderr():find("SIGUSR2: closing %d+ connection%(s%) with 1012"))
            if workers > 1 then
                assert.truthy(server:stderr():find("[master] SIGUSR2: stopping 2 workers", 1, true))
            end
        end)
    end

    it("drops every connection left at a second signal, and exits 0", function()
        local N = 100 -- 10 s of drain at 10 a second
        server = start { config = "return { apps = 'apps', timeouts = { drain = 60 } }" }
        local conns = open_many(server, N)
        assert.truthy(server:signal("TERM"))
        local first
        local _, codes = collect_closes(conns, 20, function(k)
            if k == 1 then
                first = true
                assert.truthy(server:signal("TERM"))
            end
        end)
        assert.is_true(first)
        local closed, dropped = 0, 0
        for i = 1, N do
            if codes[i] == 1001 then closed = closed + 1 elseif codes[i] == "eof" then dropped = dropped + 1 end
        end
        assert.are.equal(N, closed + dropped)
        assert.is_true(dropped > N / 2, closed .. " closed, " .. dropped .. " dropped")
        assert.are.equal(0, server:wait(5), server:stderr())
        assert.truthy(server:stderr():find("second signal: dropping every connection now", 1, true))
    end)

    it("serves the connections queued or handshaking at the signal, then closes them", function()
        server = start { config = "return { apps = 'apps', timeouts = { drain = 1 } }" }
        local held = open_many(server, 3)
        -- Stopped, the server accepts nothing: the kernel queues these.
        assert.truthy(server:signal("STOP"))
        local raw = {}
        for i = 1, 5 do
            local s = assert(socket.connect("127.0.0.1", server.port))
            s:settimeout(10)
            local request = "GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n" ..
                "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n" ..
                "Sec-WebSocket-Version: 13\r\n"
            -- Two of them have not sent all of their request yet.
            assert(s:send(i <= 2 and request or request .. "\r\n"))
            raw[i] = s
        end
        assert.truthy(server:signal("TERM"))
        assert.truthy(server:signal("CONT"))
        for i = 1, 2 do assert(raw[i]:send("\r\n")) end
        for i = 1, 5 do
            local head = {}
            repeat
                local line = assert(raw[i]:receive("*l"))
                head[#head + 1] = line
            until line == ""
            assert.are.equal("HTTP/1.1 101 Switching Protocols", head[1], "connection " .. i)
            -- Then its close, 1001, in its turn.
            local b = assert(raw[i]:receive(4))
            assert.are.equal(0x88, b:byte(1))
            assert.are.equal(1001, b:byte(3) * 256 + b:byte(4))
            raw[i]:close()
        end
        local _, codes = collect_closes(held, 10)
        for i = 1, 3 do assert.are.equal(1001, codes[i]) end
        assert.are.equal(0, server:wait(10), server:stderr())
    end)
end)

describe("a rolling restart", function()
    local servers, stop
    before_each(function() servers = {} end)
    after_each(function()
        if stop then testing.write_file(stop, "") end
        for _, s in ipairs(servers) do s:cleanup() end
    end)

    it("drops no connection of a client connecting in a loop (--takeover, then SIGTERM the old)",
       function()
        local config = "return { apps = 'apps', timeouts = { drain = 1 } }"
        local old = start { config = config }
        servers[1] = old
        local dir = testing.temp_dir()
        stop = dir .. "/stop"
        local out = dir .. "/client.out"
        assert(testing.run("python3 spec/support/restart_client.py " .. old.port .. " " ..
                           testing.quote(stop) .. " 3 >" .. testing.quote(out) .. " 2>&1 &"))
        testing.sleep(0.3)
        -- Three switches: to one process, to two workers, back to one
        -- (the master of the workers holds their listeners too).
        local prev = old
        for round, workers in ipairs { 1, 2, 1 } do
            local new = start { config = config, port = old.port,
                                args = { "--takeover", "--workers", tostring(workers) } }
            servers[#servers + 1] = new
            testing.sleep(0.3)
            assert.truthy(prev:signal("TERM"))
            assert.are.equal(0, prev:wait(10), prev:stderr())
            testing.sleep(0.3)
            assert.truthy(prev:stdout():find('"WSCONNECT /echo"', 1, true), "round " .. round)
            prev = new
        end
        testing.write_file(stop, "")
        local summary
        for _ = 1, 200 do
            summary = (testing.read_file(out) or ""):match("attempts %d+ ok %d+ drained %d+ failures %d+")
            if summary then break end
            testing.sleep(0.05)
        end
        local text = testing.read_file(out) or ""
        os.execute("rm -rf " .. testing.quote(dir))
        stop = nil
        assert(summary, text)
        local ok, failures = summary:match("ok (%d+) drained %d+ failures (%d+)")
        assert.are.equal("0", failures, text)
        assert.is_true(tonumber(ok) > 50, text)
        assert.truthy(prev:stdout():find('"WSCONNECT /echo"', 1, true))
    end)

    it("still refuses a taken port without --takeover, and any port a non-moonport holds", function()
        local old = start {}
        servers[1] = old
        local s, why, err = testing.start { apps = { echo = ECHO }, port = old.port }
        assert.is_nil(s)
        assert.truthy(why:find("status 1", 1, true), why)
        assert.truthy(err:find("Address already in use", 1, true), err)
        -- A plain listening socket (no SO_REUSEPORT): not a moonport.
        local other = assert(socket.bind("127.0.0.1", 0))
        local _, port = other:getsockname()
        s, why, err = testing.start { apps = { echo = ECHO }, port = tonumber(port),
                                      args = { "--takeover" } }
        other:close()
        assert.is_nil(s)
        assert.truthy(why:find("status 1", 1, true), why)
        assert.truthy(err:find("--takeover shares a port only with a moonport", 1, true), err)
    end)
end)

describe("timeouts.lifetime", function()
    local server
    after_each(function()
        if server then server:cleanup() end
        server = nil
    end)

    it("closes a connection with 1001 once it has lived that long", function()
        local LIFETIME = 1
        server = start {
            config = "return { apps = 'apps', timeouts = { lifetime = " .. LIFETIME .. " } }",
            args = { "--admin", "127.0.0.1:" .. free_port() },
        }
        local began = socket.gettime()
        local conns = open_many(server, 5)
        local times, codes = collect_closes(conns, 10)
        for i = 1, 5 do
            assert.are.equal(1001, codes[i])
            assert.is_true(times[i] - began >= LIFETIME, "closed before its lifetime")
        end
        assert.truthy(server:wait_log("over timeouts.lifetime %(1s%): closing with 1001", 5))
        local _, text = admin_get(server, "/metrics")
        assert.are.equal(5, testing.metric(text, "moonport_lifetime_closes_total"))
        assert.are.equal(0, testing.metric(text, "moonport_drain_closes_total"))
        assert.are.equal(0, (testing.promtool_check(text)))
        assert.is_true(server:alive())
    end)

    it("is off by default", function()
        server = start {}
        local ws = open_many(server, 1)[1]
        testing.sleep(1.5)
        assert(ws:send("later"))
        assert.are.equal("later", (ws:receive_message(5)))
        assert.is_nil(server:stderr():find("timeouts.lifetime", 1, true))
    end)

    it("refuses values that are not durations", function()
        for _, bad in ipairs { "lifetime = -1", "lifetime = 'x'", "drain = -1", "drain = 7200" } do
            local s, why, err = testing.start { apps = { echo = ECHO },
                config = "return { apps = 'apps', timeouts = { " .. bad .. " } }" }
            assert.is_nil(s, bad)
            assert.truthy(why:find("status 1", 1, true), bad .. ": " .. why)
            assert.truthy(err:find("timeouts%.%a+ must be"), err)
        end
    end)
end)
