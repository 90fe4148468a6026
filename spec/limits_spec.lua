-- Limits that keep one client from hurting the rest (README "Operating
-- moonport": rate limits, memory budgets), through the real binary:
-- limits.messages_per_second and limits.bytes_per_second pause reading a
-- connection over them (every message still arrives, in order, later) or
-- close it with 1008 (rate_action = "close"), counted in /metrics and
-- logged once per connection; limits.inbound_memory bounds what hundreds
-- of connections sending fragmented messages they never finish can make
-- the server hold (RSS stays under the budget plus a documented overhead),
-- failing the ones over their share with 1013, while a well-behaved
-- connection keeps echoing; limits.outbound_memory drops a connection that
-- holds more than its share of queued output; bad values are refused with
-- a clear line.
local testing = require "moonport.testing"
local socket = require "socket"

local metrics, value = testing.metrics, testing.metric

-- Echoes; "span?" answers how long (moonport.now) from the first message
-- to the last before it, and how many there were.
local ECHO = [[
local moonport = require "moonport"
local app = {}
local first, last, n
function app.on_message(ws, data, kind)
  if data == "span?" then
    return ws:send(string.format("%d %.3f", n or 0, (last or 0) - (first or 0)))
  end
  local now = moonport.now()
  first = first or now
  last = now
  n = (n or 0) + 1
  ws:send(data, kind)
end
return app
]]

-- Sends a big text message to every client that says "big" (for the
-- outbound budget), echoes the rest.
local BIG = [[
local app = {}
function app.on_message(ws, data)
  if data == "big" then return ws:send(string.rep("b", 4 * 1024 * 1024)) end
  ws:send(data)
end
return app
]]

local function start(limits, env)
    local config = string.format('return { apps = "apps", limits = { %s } }', limits)
    return assert(testing.start { apps = { echo = ECHO, big = BIG }, config = config,
        args = { "--admin", "127.0.0.1:0" }, env = env })
end

describe("rate limits", function()
    local server
    after_each(function()
        if server then server:cleanup() end
        server = nil
    end)

    it("pause reading a connection over bytes_per_second: every message arrives, in order, " ..
        "no faster than the rate", function()
        server = start("bytes_per_second = 20000")
        local ws = assert(server:connect("/echo"))
        -- 100 KB in one write: five times the burst (one second's worth).
        local msgs, burst = {}, {}
        for i = 1, 10 do
            msgs[i] = string.format("%02d", i) .. string.rep("x", 9998)
            burst[#burst + 1] = require("moonport.client").encode_frame { opcode = "text",
                payload = msgs[i] }
        end
        assert(ws:send_raw(table.concat(burst)))
        for i = 1, 10 do
            local data = assert(ws:receive_message(30))
            assert.are.equal(msgs[i], data)
        end
        assert(ws:send("span?"))
        local n, span = assert(ws:receive_message(10)):match("^(%d+) (%S+)$")
        assert.are.equal(10, tonumber(n))
        -- The first 20 KB pass at once (the burst), the other 80 KB at
        -- 20 KB/s: 4 s at the least. Half of that is asserted, as a lower
        -- bound only: a slower machine can only make it longer, and
        -- without the limit the ten arrive within one read.
        assert.is_true(tonumber(span) >= 2.0, "the app got 100 KB in " .. span .. " s")
        local m = metrics(server)
        assert.is_true(value(m, 'moonport_rate_limited_total{action="pause"}') >= 2, m)
        assert.are.equal(0, value(m, 'moonport_rate_limited_total{action="close"}'))
        assert(ws:close(1000))
        assert.are.equal(1000, (ws:expect_close(5)))
        -- Paused several times, logged once.
        assert.truthy(server:wait_log("over the rate limit", 5))
        assert.are.equal(1, testing.count(server:stderr(), "over the rate limit"), server:stderr())
        assert.is_true(server:alive())
    end)

    it("pause over messages_per_second, then the connection goes on", function()
        server = start("messages_per_second = 20, burst_messages = 5")
        local ws = assert(server:connect("/echo"))
        for i = 1, 30 do assert(ws:send("m" .. i)) end
        for i = 1, 30 do assert.are.equal("m" .. i, (assert(ws:receive_message(30)))) end
        local m = metrics(server)
        assert.is_true(value(m, 'moonport_rate_limited_total{action="pause"}') >= 1, m)
        -- Another connection is not held by this one's debt.
        local other = assert(server:connect("/echo"))
        assert(other:send("free"))
        assert.are.equal("free", (other:receive_message(5)))
        assert(other:close(1000))
        assert(ws:close(1000))
        assert.are.equal(1000, (ws:expect_close(5)))
    end)

    it("pause a wss:// connection too: OpenSSL's buffered input is read once it resumes",
        function()
        local dir = testing.temp_dir()
        local cert, key = testing.make_cert(dir, "a")
        server = assert(testing.start { apps = { echo = ECHO }, tls = { cert = cert, key = key },
            config = 'return { apps = "apps", limits = { bytes_per_second = 4000 } }' })
        local ws = assert(server:connect("/echo"))
        -- 24 KB in one write: TLS records that OpenSSL reads ahead of the
        -- limit, and must hand over when the connection resumes.
        local burst = {}
        for i = 1, 12 do
            burst[i] = require("moonport.client").encode_frame { opcode = "text",
                payload = string.format("%02d", i) .. string.rep("t", 1998) }
        end
        assert(ws:send_raw(table.concat(burst)))
        for i = 1, 12 do
            local data = assert(ws:receive_message(30))
            assert.are.equal(string.format("%02d", i), data:sub(1, 2))
        end
        assert(ws:close(1000))
        assert.are.equal(1000, (ws:expect_close(5)))
        server:cleanup()
        server = nil
        os.execute("rm -rf " .. testing.quote(dir))
    end)

    it("let a paused connection read the peer's close frame once the server closes it", function()
        server = start("messages_per_second = 1")
        local ws = assert(server:connect("/echo"))
        -- 20 messages in one read at 1 per second: held for 19 s.
        local burst = {}
        for i = 1, 20 do
            burst[i] = require("moonport.client").encode_frame { opcode = "text", payload = "p" .. i }
        end
        assert(ws:send_raw(table.concat(burst)))
        assert.truthy(server:wait_log("over the rate limit", 5))
        server:signal("TERM")
        local f
        repeat f = assert(ws:receive(10)) until f.opcode ~= 1 -- past the echoes
        assert.are.equal(8, f.opcode)
        assert.are.equal(1001, f.code)
        assert(ws:close(1000))
        assert.is_true(ws:is_closed(10))
        assert.are.equal(0, server:wait(10))
        -- The server read the answer: no wait for the close timeout.
        assert.is_nil(server:stderr():find("no close frame from the peer", 1, true), server:stderr())
    end)

    it("close with 1008 when rate_action = \"close\", counted and logged", function()
        server = start('messages_per_second = 5, rate_action = "close"')
        local ws = assert(server:connect("/echo"))
        local burst = {}
        for i = 1, 40 do
            burst[i] = require("moonport.client").encode_frame { opcode = "text", payload = "m" .. i }
        end
        assert(ws:send_raw(table.concat(burst)))
        local code, reason = ws:expect_close(10)
        assert.are.equal(1008, code)
        assert.are.equal("rate limit exceeded", reason)
        local m = metrics(server)
        assert.are.equal(1, value(m, 'moonport_rate_limited_total{action="close"}'), m)
        assert.are.equal(1, value(m, 'moonport_closes_total{code="1008",by="server"}'), m)
        assert.truthy(server:wait_log("over the rate limit %(limits.messages_per_second%): " ..
            "closing with 1008", 5))
        assert.is_true(server:alive())
    end)

    it("are refused when they make no sense, with the reason", function()
        for _, bad in ipairs {
            { 'rate_action = "slow"', 'limits.rate_action must be "pause" or "close", not "slow"' },
            { 'messages_per_second = -1', "messages_per_second" },
            { 'inbound_memory = 1000', "inbound_memory" },
            { 'burst_bytes = "lots"', "burst_bytes" },
        } do
            local s, why, err = testing.start { apps = { echo = ECHO },
                config = 'return { apps = "apps", limits = { ' .. bad[1] .. ' } }' }
            assert.is_nil(s, bad[1])
            assert.truthy(err:find(bad[2], 1, true), bad[1] .. ": " .. tostring(why) .. ": " .. err)
        end
    end)
end)

describe("memory budgets", function()
    local server
    after_each(function()
        if server then server:cleanup() end
        server = nil
    end)

    it("hold the memory of hundreds of never-finished fragmented messages under " ..
        "limits.inbound_memory, while others keep echoing", function()
        local budget = 16 * 1024 * 1024
        -- Under ASan, freed memory sits in a quarantine (256 MiB by
        -- default) and would count in the RSS: none here.
        server = start("inbound_memory = " .. budget,
            'ASAN_OPTIONS="${ASAN_OPTIONS:-}:quarantine_size_mb=0"')
        local rss_before = server:rss_kib()
        -- 300 connections, each sending 1 MiB of one message in 64 KiB
        -- fragments and never its last: 300 MiB without the budget.
        local dir = testing.temp_dir()
        local out = dir .. "/flood.out"
        assert(testing.run(string.format("python3 spec/support/partial_flood.py 127.0.0.1 %d " ..
            "300 1048576 65536 6 >%s 2>&1 &", server.port, testing.quote(out))))
        assert.is_true(testing.eventually(function()
            return (testing.read_file(out) or ""):find("started", 1, true) ~= nil
        end, 30), testing.read_file(out))
        -- A well-behaved client echoes all along.
        local ws = assert(server:connect("/echo", { timeout = 10 }))
        local echoed = 0
        local holding
        repeat
            assert(ws:send("still here " .. echoed))
            assert.are.equal("still here " .. echoed, (ws:receive_message(10)))
            echoed = echoed + 1
            holding = (testing.read_file(out) or ""):match("holding (%b{})")
            socket.sleep(0.02)
        until holding or echoed > 3000
        assert.truthy(holding, "the flood never got to hold: " .. tostring(testing.read_file(out)))
        local rss = server:rss_kib()
        local m = metrics(server)
        -- Echoed while the flood held its messages, too.
        for i = 1, 20 do
            assert(ws:send("meanwhile " .. i))
            assert.are.equal("meanwhile " .. i, (ws:receive_message(10)))
        end
        -- The documented overhead: 8 MiB over the budget (the connections
        -- themselves, and the reads that were under way when it filled).
        assert.is_true(rss - rss_before < budget / 1024 + 8 * 1024,
            string.format("RSS grew by %d KiB with a budget of %d KiB", rss - rss_before,
                budget / 1024))
        assert.is_true(value(m, 'moonport_memory_budget_used_bytes{direction="inbound"}') <=
            budget + 300 * 65536, m)
        assert.is_true(value(m, 'moonport_memory_budget_failures_total{direction="inbound"}') > 0, m)
        assert.are.equal(budget, value(m, 'moonport_memory_budget_bytes{direction="inbound"}'))
        local summary = holding
        assert.truthy(summary:find('"1013":', 1, true), summary)
        assert.truthy(server:wait_log("failing the connection with 1013: over its share of " ..
            "limits.inbound_memory", 5))
        assert(ws:close(1000))
        assert.are.equal(1000, (ws:expect_close(10)))
        -- Once they are gone, the budget is all free again.
        assert.is_true(testing.eventually(function()
            return (testing.read_file(out) or ""):find("done", 1, true) ~= nil
        end, 30))
        assert.is_true(testing.eventually(function()
            return value(metrics(server), 'moonport_memory_budget_used_bytes{direction="inbound"}') == 0
        end, 10))
        os.execute("rm -rf " .. testing.quote(dir))
        assert.is_true(server:alive())
    end)

    it("fail a message too big for the whole budget with 1009", function()
        server = start("inbound_memory = 2 * 1024 * 1024")
        local ws = assert(server:connect("/echo"))
        local chunk = string.rep("z", 256 * 1024)
        local code, reason
        for i = 1, 16 do
            local ok = ws:send_frame { opcode = i == 1 and "text" or "continuation", fin = false,
                payload = chunk, key = "\0\0\0\0" }
            if not ok then break end
        end
        code, reason = ws:expect_close(10)
        assert.are.equal(1009, code)
        assert.are.equal("message too big for limits.inbound_memory", reason)
        local m = metrics(server)
        assert.are.equal(1, value(m, 'moonport_memory_budget_failures_total{direction="inbound"}'))
        assert.are.equal(0, value(m, 'moonport_memory_budget_used_bytes{direction="inbound"}'))
        -- Under the budget, a fragmented message goes through whole.
        local ok2 = assert(server:connect("/echo"))
        for i = 1, 4 do
            assert(ok2:send_frame { opcode = i == 1 and "text" or "continuation", fin = i == 4,
                payload = string.rep(tostring(i), 100000) })
        end
        local data = assert(ok2:receive_message(10))
        assert.are.equal(400000, #data)
        assert(ok2:close(1000))
    end)

    it("drop a connection holding more than its share of limits.outbound_memory", function()
        server = start("outbound_memory = 6 * 1024 * 1024")
        -- A client that asks for 4 MiB four times in one write and reads
        -- nothing: its queue passes the whole budget, whatever the
        -- kernel's socket buffers take.
        local hog = assert(server:connect("/big"))
        local ask = require("moonport.client").encode_frame { opcode = "text", payload = "big" }
        assert(hog:send_raw(ask:rep(4)))
        assert.truthy(server:wait_log("over its share of limits.outbound_memory", 10),
            server:stderr())
        local m = metrics(server)
        assert.are.equal(1, value(m, 'moonport_memory_budget_failures_total{direction="outbound"}'))
        assert.is_true(testing.eventually(function()
            return value(metrics(server), 'moonport_memory_budget_used_bytes{direction="outbound"}') == 0
        end, 10))
        -- The others are served.
        local ws = assert(server:connect("/big"))
        assert(ws:send("hi"))
        assert.are.equal("hi", (ws:receive_message(5)))
        assert(ws:close(1000))
        hog:shutdown()
        assert.is_true(server:alive())
    end)
end)

describe("the metrics of the limits", function()
    it("pass promtool check metrics", function()
        local server = start("messages_per_second = 100")
        local status, out = testing.promtool_check(metrics(server))
        server:cleanup()
        assert.are.equal(0, status, out)
    end)
end)
