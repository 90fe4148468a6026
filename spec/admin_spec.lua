-- The admin listener (README "Operating moonport"): --admin HOST:PORT serves
-- GET /metrics in Prometheus' text format and GET /healthz, apart from the
-- public port, through the real binary. The counts are checked against
-- what the spec did (connections, handshakes by status, messages and bytes
-- each way, closes by code and by who began them, Lua errors, reloads,
-- topics), the exposition passes Debian's `promtool check metrics` and a
-- real Prometheus scrapes it; other paths get 404, other methods 405,
-- garbage 400, too many idle admin connections cannot starve it, 10,000
-- scrapes while 1,000 connections echo answer every one, and with
-- --workers 2 the counts are the whole server's.
local testing = require "moonport.testing"
local client = require "moonport.client"
local socket = require "socket"

local APP = [[
local app = {}
function app.on_connect(ws, req)
  if req.args.sub then ws:subscribe(req.args.sub) end
end
function app.on_message(ws, data)
  if data == "boom" then error("boom on purpose") end
  if data == "bye" then return ws:close(4001, "bye") end
  ws:send(data)
end
return app
]]

-- The admin port's helpers live in moonport.testing: other specs read the
-- metrics too.
local http = testing.http
local metrics = testing.metrics
local value = testing.metric
local eventually = testing.eventually
local promtool_check = testing.promtool_check

local free_port = testing.free_port

describe("the admin listener", function()
    local server
    after_each(function()
        if server then server:cleanup() end
        server = nil
    end)

    it("is off unless asked for", function()
        server = assert(testing.start { apps = { a = APP } })
        assert.is_nil(server.admin_port)
        assert.is_nil(server:stderr():find("admin listening", 1, true))
    end)

    it("refuses to start on an address it cannot use, saying why", function()
        for _, bad in ipairs { "nonsense", "127.0.0.1:", "127.0.0.1:99999", ":9090" } do
            local s, why, err = testing.start { apps = { a = APP }, args = { "--admin", bad } }
            assert.is_nil(s, bad)
            assert.truthy(why:find("status 1", 1, true), bad .. ": " .. why)
            assert.truthy(err:find("admin: '" .. bad .. "' is not HOST:PORT", 1, true), err)
        end
    end)

    it("answers /healthz, and 404, 405 and 400 for what it does not serve", function()
        server = assert(testing.start { apps = { a = APP }, args = { "--admin", "127.0.0.1:0" } })
        local status, headers, body = http(server.admin_port, "/healthz")
        assert.are.equal(200, status)
        assert.are.equal("ok\n", body)
        assert.are.equal("close", headers["connection"])
        status, headers, body = http(server.admin_port, "/healthz", "HEAD")
        assert.are.equal(200, status)
        assert.are.equal("3", headers["content-length"])
        assert.are.equal("", body)
        assert.are.equal(404, (http(server.admin_port, "/")))
        assert.are.equal(404, (http(server.admin_port, "/metricsx")))
        assert.are.equal(200, (http(server.admin_port, "/metrics?x=1")))
        status, headers = http(server.admin_port, "/metrics", "POST")
        assert.are.equal(405, status)
        assert.are.equal("GET, HEAD", headers["allow"])
        assert.are.equal(400, (http(server.admin_port, nil, nil, "GARBAGE\r\n\r\n")))
        assert.are.equal(400, (http(server.admin_port, nil, nil, "GET / HTTP/1.1\r\nBad Header\r\n\r\n")))
        assert.are.equal(431, (http(server.admin_port, nil, nil,
            "GET / HTTP/1.1\r\nX: " .. string.rep("a", 20000) .. "\r\n\r\n")))
        -- The public port is not the admin port: /metrics there is no WebSocket.
        local s2 = assert(socket.connect("127.0.0.1", server.port))
        s2:send("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        local line = s2:receive("*l")
        s2:close()
        assert.are.equal("HTTP/1.1 404 Not Found", line)
        assert.truthy(server:alive())
    end)

    it("counts connections, handshakes, messages, bytes, closes and errors by app", function()
        server = assert(testing.start { apps = { a = APP, b = APP }, args = { "--admin", "127.0.0.1:0" } })
        local text = metrics(server)
        local status, out = promtool_check(text)
        assert.are.equal(0, status, out)
        assert.are.equal(0, value(text, 'moonport_connections{app="a",route="/a"}'))

        local conns = {}
        for i = 1, 3 do conns[i] = assert(server:connect("/a")) end
        local cb = assert(server:connect("/b"))
        for i = 1, 10 do
            assert(conns[1]:send("hello " .. i))
            assert.are.equal("hello " .. i, conns[1]:receive_message())
        end
        text = metrics(server)
        assert.are.equal(3, value(text, 'moonport_connections{app="a",route="/a"}'))
        assert.are.equal(1, value(text, 'moonport_connections{app="b",route="/b"}'))
        assert.are.equal(3, value(text, 'moonport_handshakes_total{app="a",route="/a",status="101"}'))
        assert.are.equal(10, value(text, 'moonport_messages_received_total{app="a",route="/a"}'))
        assert.are.equal(10, value(text, 'moonport_messages_sent_total{app="a",route="/a"}'))
        local bytes = 0
        for i = 1, 10 do bytes = bytes + #("hello " .. i) end
        assert.are.equal(bytes, value(text, 'moonport_received_bytes_total{app="a",route="/a"}'))
        assert.are.equal(bytes, value(text, 'moonport_sent_bytes_total{app="a",route="/a"}'))

        -- A route that does not exist, and a plain HTTP request on a route.
        assert.is_nil((server:connect("/nope")))
        local s2 = assert(socket.connect("127.0.0.1", server.port))
        s2:send("GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
        assert.are.equal("HTTP/1.1 426 Upgrade Required", s2:receive("*l"))
        s2:close()

        -- Closes: the client's 1000, the app's 4001, a Lua error's 1011.
        conns[1]:close(1000)
        assert(conns[2]:send("bye"))
        assert(conns[3]:send("boom"))
        -- The two the server closes end when timeouts.close (5 s) has passed:
        -- these clients never answer a close frame.
        assert.truthy(eventually(function()
            text = metrics(server)
            return value(text, 'moonport_connections{app="a",route="/a"}') == 0
        end, 15))
        assert.are.equal(1, value(text, 'moonport_closes_total{code="1000",by="client"}'))
        assert.are.equal(1, value(text, 'moonport_closes_total{code="4000-4999",by="server"}'))
        assert.are.equal(1, value(text, 'moonport_closes_total{code="1011",by="server"}'))
        assert.are.equal(1, value(text, 'moonport_lua_errors_total{app="a",route="/a"}'))
        assert.are.equal(0, value(text, 'moonport_lua_errors_total{app="b",route="/b"}'))
        assert.are.equal(1, value(text, 'moonport_handshakes_total{app="(none)",route="",status="404"}'))
        assert.are.equal(1, value(text, 'moonport_handshakes_total{app="a",route="/a",status="426"}'))
        cb:close()
        status, out = promtool_check(text)
        assert.are.equal(0, status, out)
    end)

    it("counts reloads, topics and subscriptions, and samples the loop's lag", function()
        server = assert(testing.start { apps = { a = APP }, args = { "--admin", "127.0.0.1:0" } })
        local c1 = assert(server:connect("/a?sub=room"))
        local c2 = assert(server:connect("/a?sub=room"))
        local c3 = assert(server:connect("/a?sub=lobby"))
        local text
        assert.truthy(eventually(function()
            text = metrics(server)
            return value(text, "moonport_subscriptions") == 3
        end))
        assert.are.equal(2, value(text, "moonport_topics"))
        assert.truthy(value(text, "moonport_event_loop_lag_seconds_count") >= 1)
        assert.are.equal(value(text, "moonport_event_loop_lag_seconds_count"),
            value(text, 'moonport_event_loop_lag_seconds_bucket{le="+Inf"}'))
        assert.truthy(value(text, "process_resident_memory_bytes") > 1000000)
        assert.truthy(value(text, "process_open_fds") >= 5)
        c1:close(); c2:close(); c3:close()
        assert.truthy(eventually(function()
            return value(metrics(server), "moonport_subscriptions") == 0
        end))

        server:write_app("a", APP .. "\n-- v2\n")
        assert.truthy(eventually(function()
            return value(metrics(server), 'moonport_reloads_total{result="ok"}') == 1
        end))
        server:write_app("a", "return {on_message = function( end}")
        assert.truthy(eventually(function()
            return value(metrics(server), 'moonport_reloads_total{result="failed"}') == 1
        end))
    end)

    it("cannot be starved by idle admin connections", function()
        server = assert(testing.start { apps = { a = APP }, args = { "--admin", "127.0.0.1:0" } })
        local idle = {}
        for i = 1, 100 do idle[i] = assert(socket.connect("127.0.0.1", server.admin_port)) end
        -- Past its 64, the admin closes new ones unread; the first 64 wait
        -- for their requests. A request on one of those is answered.
        assert.truthy(server:wait_log("too many admin requests at once"))
        idle[1]:settimeout(5)
        idle[1]:send("GET /healthz HTTP/1.1\r\n\r\n")
        assert.are.equal("HTTP/1.1 200 OK", idle[1]:receive("*l"))
        for _, c in ipairs(idle) do c:close() end
        assert.truthy(eventually(function()
            local ok, status = pcall(http, server.admin_port, "/healthz")
            return ok and status == 200
        end))
        local ws = assert(server:connect("/a"))
        assert(ws:send("still here"))
        assert.are.equal("still here", ws:receive_message())
    end)

    it("answers 10,000 scrapes while 1,000 connections echo", function()
        server = assert(testing.start { apps = { a = APP }, args = { "--admin", "127.0.0.1:0" } })
        local dir = testing.temp_dir()
        local loadgen = "build/bench/loadgen echo -c 1000 -p 1 -s 64 --text -d 8 -w 0 --url ws://127.0.0.1:"
            .. server.port .. "/a > " .. dir .. "/out 2>&1; echo $? > " .. dir .. "/rc"
        os.execute("(" .. loadgen .. ") &")
        assert.truthy(eventually(function()
            return (value(metrics(server), 'moonport_connections{app="a",route="/a"}') or 0) >= 1000
        end, 10))
        local ok = 0
        for _ = 1, 10000 do
            local status = http(server.admin_port, "/metrics")
            if status == 200 then ok = ok + 1 end
        end
        assert.are.equal(10000, ok)
        assert.truthy(eventually(function() return testing.read_file(dir .. "/rc") end, 30))
        local rc = testing.read_file(dir .. "/rc")
        local out = testing.read_file(dir .. "/out")
        os.execute("rm -rf " .. testing.quote(dir))
        assert.are.equal("0\n", rc, out)
    end)

    it("with --workers 2, counts the whole server", function()
        server = assert(testing.start { apps = { a = APP }, args = { "--admin", "127.0.0.1:0", "--workers", "2" } })
        local conns = {}
        for i = 1, 20 do
            conns[i] = assert(server:connect("/a"))
            assert(conns[i]:send("x" .. i))
            assert.are.equal("x" .. i, conns[i]:receive_message())
        end
        local text = metrics(server)
        assert.are.equal(2, value(text, "moonport_workers"))
        assert.are.equal(20, value(text, 'moonport_connections{app="a",route="/a"}'))
        assert.are.equal(20, value(text, 'moonport_messages_received_total{app="a",route="/a"}'))
        local status, out = promtool_check(text)
        assert.are.equal(0, status, out)
        for _, c in ipairs(conns) do c:close() end
    end)

    it("is scraped by a real Prometheus", function()
        server = assert(testing.start { apps = { a = APP }, args = { "--admin", "127.0.0.1:0" } })
        local ws = assert(server:connect("/a"))
        local dir = testing.temp_dir()
        local port = free_port()
        testing.write_file(dir .. "/prometheus.yml", ([[
global:
  scrape_interval: 1s
scrape_configs:
  - job_name: moonport
    static_configs:
      - targets: ["127.0.0.1:%d"]
]]):format(server.admin_port))
        os.execute(("prometheus --config.file=%s/prometheus.yml --storage.tsdb.path=%s/data " ..
            "--web.listen-address=127.0.0.1:%d > %s/log 2>&1 & echo $! > %s/pid"):format(dir, dir, port, dir, dir))
        local function query(q)
            local c = socket.connect("127.0.0.1", port)
            if not c then return nil end
            c:settimeout(5)
            c:send("GET /api/v1/query?query=" .. q .. " HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            local body = c:receive("*a")
            c:close()
            return body
        end
        local answer
        local ok = eventually(function()
            answer = query("moonport_connections")
            return answer and answer:find('"app":"a"', 1, true) and answer:find('"1"]', 1, true)
        end, 40)
        local up = query("up")
        os.execute("kill $(cat " .. dir .. "/pid) 2>/dev/null")
        local log = testing.read_file(dir .. "/log")
        os.execute("sleep 0.5; rm -rf " .. testing.quote(dir))
        assert.truthy(ok, tostring(answer) .. "\n" .. tostring(log))
        assert.truthy(up:find('"value":%[[%d.]+,"1"%]'), up)
        ws:close()
    end)
end)
