-- moonport.tcp (README "Waiting: handlers that talk to the world"), through
-- the real binary against real backends this spec starts
-- (spec/support/tcp_backend.py: plain, TLS with a throwaway certificate,
-- and a listener whose accept queue is full): connect, send, receive by
-- size, line and to the end; refused, no such host, timeouts of each kind,
-- a reset mid-read, a flood (bounded), TLS verified by default, with
-- ca_file, a wrong server_name; the keepalive pool; a handler whose
-- connection closes during a socket wait; a reload during one; a socket
-- that only its wait holds (a tail call) survives collections; 1,000
-- echoing connections keep their latency while a handler waits; misuse
-- raises; 100,000 waits and 1,000 connects leave nothing behind.
--
-- The app runs Lua snippets the spec sends (each in a handler, so they may
-- wait) and answers with their results joined by "|".
local testing = require "moonport.testing"
local backend = require "support.backend"
local TCP_BACKEND = "spec/support/tcp_backend.py"
local echo_load = require "support.echo_load"

local APP = [[
local moonport = require "moonport"
local VERSION = "v1"
local app = {}
local P = {}
local function fmt(...)
  local t = {}
  for i = 1, select("#", ...) do t[i] = tostring((select(i, ...))) end
  return table.concat(t, "|")
end
local env = setmetatable({ moonport = moonport, P = P, fmt = fmt }, { __index = _G })
local function run(ws, code)
  local f, err = loadstring(code, "=snippet")
  if not f then return ws:send("compile: " .. err) end
  env.ws = ws
  setfenv(f, env)
  local res = { pcall(f) }
  if not res[1] then return ws:send("error: " .. tostring(res[2])) end
  return ws:send(fmt(unpack(res, 2, table.maxn(res))))
end
function app.on_message(ws, data)
  local cmd, arg = data:match("^(%S+) ?(.*)$")
  if cmd == "ports" then
    P.plain, P.tls, P.stuck, P.free, P.cert = arg:match("(%d+) (%d+) (%d+) (%d+) (%S+)")
    P.plain, P.tls, P.stuck, P.free = tonumber(P.plain), tonumber(P.tls), tonumber(P.stuck), tonumber(P.free)
    return ws:send("ok")
  elseif cmd == "version" then -- waits on a socket, then says which code it ran
    local s = moonport.tcp()
    s:settimeouts(5000, 5000, 1000)
    assert(s:connect("127.0.0.1", P.plain))
    assert(s:send("SILENT\n"))
    local _, err = s:receive()
    s:close()
    return ws:send("version " .. VERSION .. " " .. err)
  elseif cmd == "round" then -- 10,000 send/receive waits, 100 connects
    -- Ten sockets at once, 1,000 round trips each: the waits overlap, so
    -- the round takes a tenth of the time one socket after another would.
    local done = 0
    for _ = 1, 10 do
      moonport.spawn(function()
        local s = moonport.tcp()
        assert(s:connect("127.0.0.1", P.plain))
        for i = 1, 1000 do
          assert(s:send("ECHO " .. i .. "\n"))
          assert(s:receive() == tostring(i))
        end
        s:close()
        done = done + 1
      end)
    end
    while done < 10 do moonport.sleep(0.01) end
    done = 0
    for _ = 1, 10 do
      moonport.spawn(function()
        for _ = 1, 10 do
          local t = moonport.tcp()
          assert(t:connect("127.0.0.1", P.plain))
          t:close()
        end
        done = done + 1
      end)
    end
    while done < 10 do moonport.sleep(0.01) end
    collectgarbage("collect") -- RSS then measures what stays, not the collector's lag
    return ws:send("round done")
  elseif cmd == "closewait" then
    local s = moonport.tcp()
    s:settimeouts(5000, 5000, 500)
    assert(s:connect("127.0.0.1", P.plain))
    assert(s:send("SILENT\n"))
    moonport.log("info", "mark closewait waits", ws.id)
    local r, err = s:receive()
    moonport.log("info", "mark closewait resumed", ws.id, tostring(r), err, tostring(ws:send("x")))
    s:close()
    return
  end
  return run(ws, data)
end
function app.on_close(ws)
  moonport.log("info", "mark on_close", ws.id)
end
return app
]]

local function sh(cmd)
    assert(testing.run(cmd), cmd)
end


describe("moonport.tcp", function()
    local server, dir, cert
    local backends = {}
    local P = {}

    setup(function()
        dir = testing.temp_dir()
        cert = testing.make_cert(dir, "backend")
        local key = dir .. "/backend-key.pem"
        P.plain, _, backends[1] = backend(dir, "plain", TCP_BACKEND)
        P.tls, _, backends[2] = backend(dir, "tls", TCP_BACKEND, "--cert " .. testing.quote(cert) ..
            " --key " .. testing.quote(key))
        P.stuck, _, backends[3] = backend(dir, "stuck", TCP_BACKEND, "--stuck")
        P.free = testing.free_port()
        local err, out
        server, err, out = testing.start {
            apps = { tcp = APP, echo = "return { on_message = function(ws, d) ws:send(d) end }" },
            -- Under ASan, freed memory waits in a quarantine: RSS would grow.
            env = 'ASAN_OPTIONS="${ASAN_OPTIONS:-}:quarantine_size_mb=0"',
        }
        assert(server, tostring(err) .. "\n" .. tostring(out))
    end)

    teardown(function()
        if server then server:cleanup() end
        for _, pid in ipairs(backends) do os.execute("kill " .. pid .. " 2>/dev/null") end
        if dir then os.execute("rm -rf " .. testing.quote(dir)) end
    end)

    local function connect(srv)
        local ws = assert((srv or server):connect("/tcp"))
        assert(ws:send(string.format("ports %d %d %d %d %s", P.plain, P.tls, P.stuck, P.free, cert)))
        assert.are.equal("ok", (ws:receive_message(5)))
        return ws
    end

    local function ask(ws, code, timeout)
        assert(ws:send(code))
        local data, err = ws:receive_message(timeout or 10)
        assert(data, "no answer to " .. code .. ": " .. tostring(err))
        return data
    end

    it("connects, sends and receives lines, sizes and everything to the end", function()
        local ws = connect()
        assert.are.equal("1|11|hello|plain|xxxxx|x y||abcd|the end|nil|closed|0", ask(ws, [[
            local s = moonport.tcp()
            local ok = s:connect("localhost", P.plain)
            local n = s:send("ECHO hello\n")
            local a = s:receive()
            s:send({"LF ", "plain", "\n"})
            local b = s:receive("*l")
            s:send("BYTES 5\n")
            local c = s:receive(5)
            s:send("ECHO x y\n")
            local d = s:receive(3)
            local e = s:receive("l")        -- what is left of that line: empty
            s:send("SPLIT ab cd\n")          -- a line that comes in two reads
            local f = s:receive("*l")
            s:send("CLOSE the end\n")
            local g = s:receive("*a")
            local h, herr = s:receive()      -- *a read to the end: closed
            return ok, n, a, b, c, d, e, f, g, h, herr, moonport.waiting() - 1
        ]]))
        -- numbers, a 0-byte receive, binary data, a table with numbers
        assert.are.equal("1|6|1|3|0 1 255|1234", ask(ws, [[
            local s = moonport.tcp()
            local ok = s:connect("127.0.0.1", P.plain)
            local n = s:send({"BIN ", 3, "\n"})
            local z = s:receive(0)
            local m = s:send("\0\1\255")
            local bin = s:receive(3)
            s:send({"ECHO ", 1234, "\n"})
            local num = s:receive()
            s:close()
            return ok, n, #z + 1, m, table.concat({bin:byte(1, -1)}, " "), num
        ]]))
        ws:close()
    end)

    it("returns nil and a reason: refused, no such host, closed", function()
        local ws = connect()
        assert.are.equal("nil|connection refused|nil|closed", ask(ws, [[
            local s = moonport.tcp()
            local a, b = s:connect("127.0.0.1", P.free)
            local c, d = s:send("x")
            return a, b, c, d
        ]]))
        assert.are.equal("nil|no such host", ask(ws, [[
            return moonport.tcp():connect("nothing-here.invalid", 80)
        ]], 30))
        -- Before any connect, after close, twice closed.
        assert.are.equal("nil|closed|nil|closed|nil|closed|1|nil|closed|nil|closed", ask(ws, [[
            local s = moonport.tcp()
            local a, b = s:receive()
            local c, d = s:send("x")
            local e, f = s:close()
            assert(s:connect("127.0.0.1", P.plain))
            local g = s:close()
            local h, i = s:close()
            local j, k = s:getreusedtimes()
            return a, b, c, d, e, f, g, h, i, j, k
        ]]))
        ws:close()
    end)

    it("times out a connect, a read and a send, each with its own timeout", function()
        local ws = connect()
        -- connect: the listener's accept queue is full, the SYN goes unanswered
        assert.are.equal("nil|timeout", ask(ws, [[
            local s = moonport.tcp()
            s:settimeouts(300, 60000, 60000)
            return s:connect("127.0.0.1", P.stuck)
        ]]))
        -- read: the backend never answers; the socket stays usable after it
        assert.are.equal("nil|timeout||nil|timeout|xxx|hi", ask(ws, [[
            local s = moonport.tcp()
            s:settimeouts(5000, 5000, 300)
            assert(s:connect("127.0.0.1", P.plain))
            local a, b, c = s:receive()              -- nothing sent: nothing comes
            s:send("BYTES 3\n")
            local d, e, f = s:receive(10)            -- 3 of 10 bytes, then nothing
            s:send("ECHO hi\n")
            local g = s:receive()
            s:close()
            return a, b, c, d, e, f, g
        ]]))
        -- send: the backend stops reading; 64 MiB cannot fit the buffers
        assert.are.equal("nil|timeout|nil|closed", ask(ws, [[
            local s = moonport.tcp()
            s:settimeouts(5000, 300, 5000)
            assert(s:connect("127.0.0.1", P.plain))
            assert(s:send("SILENT\n"))
            local a, b = s:send(string.rep("x", 64 * 1024 * 1024))
            local c, d = s:send("more")              -- a send timeout closes it
            return a, b, c, d
        ]]))
        ws:close()
    end)

    it("returns what came before a reset, and bounds a flood", function()
        local ws = connect()
        assert.are.equal("nil|connection reset by peer|abc", ask(ws, [[
            local s = moonport.tcp()
            assert(s:connect("127.0.0.1", P.plain))
            s:send("RESET abc\n")
            return s:receive("*a")
        ]]))
        assert.are.equal("nil|connection reset by peer|abc", ask(ws, [[
            local s = moonport.tcp()
            assert(s:connect("127.0.0.1", P.plain))
            s:send("RESET abc\n")
            return s:receive(10)
        ]]))
        -- A line without end, and "*a" of a stream without end: bounded
        -- (1 MiB by default, or sock:setreceivelimit), then closed.
        assert.are.equal("nil|line too long|nil|closed|nil|too large|nil|line too long", ask(ws, [[
            local s = moonport.tcp()
            assert(s:connect("127.0.0.1", P.plain))
            s:send("FLOOD\n")
            local a, b = s:receive()
            local c, d = s:receive()
            assert(s:connect("127.0.0.1", P.plain))
            s:setreceivelimit(100000)
            s:send("FLOOD\n")
            local e, f = s:receive("*a")
            assert(s:connect("127.0.0.1", P.plain))
            s:setreceivelimit(100)
            s:send("ECHO " .. string.rep("y", 200) .. "\n")
            local g, h = s:receive()
            return a, b, c, d, e, f, g, h
        ]]))
        ws:close()
    end)

    it("speaks TLS, verifying the certificate by default", function()
        local ws = connect()
        -- The system store does not know a throwaway certificate.
        local got = ask(ws, [[
            return moonport.tcp():connect("localhost", P.tls, { tls = true })
        ]])
        assert.truthy(got:match("^nil|certificate verify failed: self.signed certificate$"), got)
        -- Trusting it with ca_file: a full exchange, to the end of the stream.
        assert.are.equal("1|secure|over tls|1|1", ask(ws, [[
            local s = moonport.tcp()
            local ok = s:connect("localhost", P.tls, { tls = true, ca_file = P.cert })
            s:send("ECHO secure\n")
            local a = s:receive()
            s:send("CLOSE over tls\n")
            local b = s:receive("*a")
            -- its IP address is in the certificate too
            local c = s:connect("127.0.0.1", P.tls, { tls = true, ca_file = P.cert })
            -- verify = false: no check at all
            local d = moonport.tcp():connect("127.0.0.1", P.tls, { tls = true, verify = false })
            return ok, a, b, c, d
        ]]))
        -- Megabytes both ways, over TCP and over TLS: sends that wait for
        -- the kernel's buffer, reads that span many records.
        assert.are.equal("4000000|true|4000000|true", ask(ws, [[
            local data = {}
            for i = 1, 4000000 / 8 do data[i] = string.format("%07d ", i % 10000000) end
            data = table.concat(data)
            local out = {}
            for _, tls in ipairs({ false, true }) do
              local s = moonport.tcp()
              if tls then
                assert(s:connect("localhost", P.tls, { tls = true, ca_file = P.cert }))
              else
                assert(s:connect("127.0.0.1", P.plain))
              end
              assert(s:send("BIN " .. #data .. "\n"))
              assert(s:send(data) == #data) -- the backend reads it all, then answers
              local got = s:receive(#data)
              out[#out + 1] = #got
              out[#out + 1] = tostring(got == data)
              s:close()
            end
            return unpack(out)
        ]], 60))
        -- A name the certificate is not for: refused.
        got = ask(ws, [[
            return moonport.tcp():connect("127.0.0.1", P.tls,
              { tls = true, ca_file = P.cert, server_name = "wrong.example" })
        ]])
        assert.truthy(got:match("^nil|certificate verify failed: hostname mismatch$"), got)
        -- A handshake the peer never answers: bounded by the connect timeout.
        assert.are.equal("nil|timeout", ask(ws, [[
            local s = moonport.tcp()
            s:settimeout(300)
            return s:connect("127.0.0.1", P.plain, { tls = true, verify = false })
        ]]))
        -- a CA file that does not exist: nil, err
        got = ask(ws, [[
            return moonport.tcp():connect("127.0.0.1", P.tls, { tls = true, ca_file = "/nonexistent.pem" })
        ]])
        assert.truthy(got:match("^nil|cannot load /nonexistent.pem"), got)
        ws:close()
    end)

    it("reuses pooled connections (setkeepalive, getreusedtimes)", function()
        local ws = connect()
        -- Five round trips over one TCP connection: the backend counts
        -- one connection more for all of them.
        assert.are.equal("0 1 2 3 4 5|true", ask(ws, [[
            local reused, before = {}, nil
            for i = 0, 5 do
              local s = moonport.tcp()
              assert(s:connect("127.0.0.1", P.plain))
              reused[#reused + 1] = s:getreusedtimes()
              s:send("CONNS\n")
              local n = tonumber(s:receive():match("%d+"))
              before = before or n
              if i == 5 then assert(n == before, before .. " -> " .. n) end
              assert(s:setkeepalive(10000, 4) == 1)
              assert(select(2, s:send("x")) == "closed") -- the object is closed now
            end
            return table.concat(reused, " "), true
        ]]))
        -- TLS connections pool too, under their own key.
        assert.are.equal("0|1|0", ask(ws, [[
            local opts = { tls = true, ca_file = P.cert }
            local s = moonport.tcp()
            assert(s:connect("localhost", P.tls, opts))
            s:send("ECHO a\n"); s:receive()
            local a = s:getreusedtimes()
            assert(s:setkeepalive())
            assert(s:connect("localhost", P.tls, opts))
            local b = s:getreusedtimes()
            s:send("ECHO b\n"); assert(s:receive() == "b")
            assert(s:setkeepalive())
            assert(s:connect("localhost", P.plain))  -- same host, plain: another key
            local c = s:getreusedtimes()
            s:close()
            return a, b, c
        ]]))
        -- Not pooled: unread data; a pooled connection that idles too
        -- long or that the peer closes is dropped, not handed out.
        assert.are.equal("nil|unread data in buffer|0|0", ask(ws, [[
            local s = moonport.tcp()
            assert(s:connect("127.0.0.1", P.plain))
            s:send("ECHO a\nECHO b\n")
            s:receive()
            moonport.sleep(0.2)
            s:receive(1)
            local a, b = s:setkeepalive()
            assert(s:connect("127.0.0.1", P.plain))
            s:send("ECHO c\n"); s:receive()
            assert(s:setkeepalive(50))
            moonport.sleep(0.5)
            assert(s:connect("127.0.0.1", P.plain))
            local c = s:getreusedtimes()
            s:send("CLOSE\n") -- the backend closes its end
            assert(s:setkeepalive())
            moonport.sleep(0.3)
            assert(s:connect("127.0.0.1", P.plain))
            local d = s:getreusedtimes()
            s:close()
            return a, b, c, d
        ]]))
        ws:close()
    end)

    it("ends socket waits with their own result when the handler's connection closes", function()
        local ws = connect()
        assert(ws:send("closewait"))
        local id = server:wait_log("mark closewait waits (%d+)", 5)
        ws:close()
        local line = server:wait_log("(mark closewait resumed " .. id .. " [^\n]*)", 5)
        assert.truthy(line:match("nil timeout nil$"), line)
        server:wait_log("mark on_close " .. id, 5)
        local log = server:stderr()
        local resumed = log:find("mark closewait resumed " .. id, 1, true)
        local closed = log:find("mark on_close " .. id, 1, true)
        assert.truthy(resumed and closed and resumed < closed, log)
    end)

    it("lets a handler waiting on a socket finish with its code across a reload", function()
        local ws = connect()
        assert(ws:send("version"))
        server:write_app("tcp", (APP:gsub('VERSION = "v1"', 'VERSION = "v2"')))
        assert(server:signal("HUP"))
        server:wait_log("reload tcp %(.-%) v2 ok", 5)
        assert.are.equal("version v1 timeout", (ws:receive_message(5)))
        assert(ws:send(string.format("ports %d %d %d %d %s", P.plain, P.tls, P.stuck, P.free, cert)))
        assert.are.equal("ok", (ws:receive_message(5)))
        assert.are.equal("version v2 timeout", ask(ws, "version"))
        ws:close()
    end)

    it("keeps 1,000 other connections echoing while one handler waits 2 s on a backend", function()
        local function load(tag) echo_load(server, "/echo", "tcp_spec", tag) end
        load("1,000 echoing, nobody waits")
        local ws = connect()
        assert(ws:send([[
            local s = moonport.tcp()
            s:settimeouts(1000, 1000, 2000)
            assert(s:connect("127.0.0.1", P.plain))
            s:send("SILENT\n")
            return s:receive()
        ]]))
        load("1,000 echoing, one handler waits 2 s on a silent backend")
        local got, gerr = ws:receive_message(10)
        assert.are.equal("nil|timeout|", got, tostring(gerr))
        ws:close()
    end)

    it("keeps a socket alive while a wait on it is the only thing that holds it", function()
        -- Tail calls leave no Lua frame holding the socket while it waits,
        -- and the collector runs meanwhile: the wait must still end.
        local ws = connect()
        assert.are.equal("nil|timeout||1|abc", ask(ws, [[
            moonport.spawn(function()
              for _ = 1, 40 do collectgarbage("collect"); moonport.sleep(0.01) end
            end)
            local function get(cmd, pattern)
              local s = moonport.tcp()
              s:settimeouts(1000, 1000, 300)
              assert(s:connect("127.0.0.1", P.plain))
              s:send(cmd)
              return s:receive(pattern)
            end
            local a, b, c = get("SILENT\n")
            local function slow_connect()
              local s = moonport.tcp()
              return s:connect("localhost", P.plain) -- a name: the resolver's threads
            end
            return a, b, c, slow_connect(), get("SPLIT ab c\n")
        ]]))
        ws:close()
    end)

    it("raises on misuse, naming the method", function()
        local ws = connect()
        local cases = {
            { "moonport.tcp():connect()", "bad argument #1 to 'sock:connect' %(string expected, got no value%)" },
            { "moonport.tcp():connect('x', 0)", "bad argument #2 to 'sock:connect' %(port must be" },
            { "moonport.tcp():connect('x', 80, { tls = 'yes' })", "bad argument #3 to 'sock:connect' %(opts.tls must be a boolean%)" },
            { "moonport.tcp():connect('x', 80, 5)", "bad argument #3 to 'sock:connect' %(table expected" },
            { "moonport.tcp():receive({})", "bad argument #1 to 'sock:receive' %(number or string expected" },
            { "moonport.tcp():receive('*x')", "bad argument #1 to 'sock:receive' %(pattern must be" },
            { "moonport.tcp():send(true)", "bad argument #1 to 'sock:send' %(string or table of strings expected" },
            { "moonport.tcp():send({'a', {}})", "bad argument #1 to 'sock:send' %(element 2 of the table is a table" },
            { "moonport.tcp():settimeout(-1)", "bad argument #1 to 'sock:settimeout' %(timeout must be" },
            { "moonport.tcp():settimeouts(1, 2)", "bad argument #3 to 'sock:settimeouts' %(number expected" },
            { "moonport.tcp():setkeepalive(10, 0)", "bad argument #2 to 'sock:setkeepalive' %(pool size" },
            { "moonport.tcp().close(5)", "calling 'sock:close' on bad self %(tcp socket expected, got number" },
            { "coroutine.wrap(function() moonport.tcp():connect('127.0.0.1', 1) end)()",
              "sock:connect: cannot wait here %(inside a coroutine the app made%)" },
        }
        for _, c in ipairs(cases) do
            local got = ask(ws, "return " .. c[1])
            assert.truthy(got:match("^error: [^\n]-:%d+: " .. c[2]), c[1] .. " -> " .. got)
        end
        -- One operation at a time; close ends another task's wait.
        assert.are.equal("nil|busy|1|nil|closed|", ask(ws, [[
            local s = moonport.tcp()
            assert(s:connect("127.0.0.1", P.plain))
            local got
            moonport.spawn(function() got = { s:receive() } end)
            local a, b = s:send("x")
            local c = s:close()
            while not got do moonport.sleep(0.01) end
            return a, b, c, got[1], got[2], got[3]
        ]]))
        ws:close()
    end)

    it("leaves nothing behind after 100,000 waits and 1,000 connects", function()
        -- A server of its own: what earlier tests made the heap and RSS
        -- grow to would hide what this one measures.
        local fresh, err, out = testing.start {
            apps = { tcp = APP },
            env = 'ASAN_OPTIONS="${ASAN_OPTIONS:-}:quarantine_size_mb=0"',
        }
        assert(fresh, tostring(err) .. "\n" .. tostring(out))
        finally(function() fresh:cleanup() end)
        local ws = connect(fresh)
        local function heap()
            local kib, refs, waiting = ask(ws, [[
                collectgarbage("collect"); collectgarbage("collect")
                local refs = 0
                for _ in pairs(debug.getregistry()) do refs = refs + 1 end
                return math.floor(collectgarbage("count")), refs, moonport.waiting()
            ]]):match("(%d+)|(%d+)|(%d+)")
            return tonumber(kib), tonumber(refs), tonumber(waiting)
        end
        -- A round ("round" in the app, not a snippet: compiling new code
        -- each round would grow LuaJIT's machine code, not ours): 10,000
        -- send/receive pairs on ten sockets at once (each receive waits for
        -- the backend), and 100 connect/close cycles (no more: on loopback
        -- about one connect in 150 to this backend waits 1 s for its SYN to
        -- be sent again, which made 1,000 a round take 6 s).
        local trail = {}
        local function round()
            assert.are.equal("round done", ask(ws, "round", 300))
            trail[#trail + 1] = fresh:rss_kib()
        end
        for _ = 1, 3 do round() end
        local kib0, refs0, waiting0 = heap()
        local settled = trail[3] -- the first rounds settle the allocators and the JIT
        for _ = 1, 7 do round() end
        local kib1, refs1, waiting1 = heap()
        local last = math.max(unpack(trail, 4))
        io.stderr:write(string.format("\n[tcp_spec] 100,000 send/receive waits and 1,000 connects: " ..
            "Lua heap %d -> %d KiB, registry %d -> %d entries, waiting %d -> %d, RSS after each " ..
            "round (KiB): %s\n", kib0, kib1, refs0, refs1, waiting0, waiting1, table.concat(trail, " ")))
        assert.are.equal(0, waiting0)
        assert.are.equal(0, waiting1)
        assert.is_true(refs1 <= refs0 + 2, refs0 .. " -> " .. refs1)
        assert.is_true(kib1 <= kib0 + 256, kib0 .. " -> " .. kib1)
        assert.is_true(last <= settled + 1024, settled .. " -> " .. last)
        ws:close()
        -- Under ASan, anything left behind is a leak report and a non-zero status.
        assert.are.equal(0, fresh:stop(10), fresh:stderr():sub(-3000))
    end)

    it("resolves and connects in every worker of --workers 2", function()
        -- The resolver's threads start in the process that first resolves,
        -- so each forked worker has its own; a worker without them would hang.
        local multi, err, out = testing.start {
            apps = { tcp = APP },
            args = { "--workers", "2" },
            env = 'ASAN_OPTIONS="${ASAN_OPTIONS:-}:quarantine_size_mb=0"',
        }
        assert(multi, tostring(err) .. "\n" .. tostring(out))
        finally(function() multi:cleanup() end)
        local seen, n = {}, 0
        for _ = 1, 40 do
            local ws = connect(multi)
            local got = ask(ws, [[
                local s = moonport.tcp()
                assert(s:connect("localhost", P.plain))
                s:send("ECHO from worker\n")
                local line = s:receive()
                s:close()
                return moonport.worker, line
            ]])
            local worker, line = got:match("^(%d+)|(.*)$")
            assert.are.equal("from worker", line, got)
            seen[worker] = true
            n = n + 1
            ws:close()
            if seen["1"] and seen["2"] then break end
        end
        assert.truthy(seen["1"] and seen["2"], "only one worker served " .. n .. " connections")
        assert.are.equal(0, multi:stop(10), multi:stderr():sub(-3000))
    end)

    it("exits cleanly with sockets waiting, connecting and pooled", function()
        local ws = connect()
        assert.are.equal("pooled", ask(ws, [[
            local s = moonport.tcp()
            assert(s:connect("127.0.0.1", P.plain))
            assert(s:setkeepalive())
            local t = moonport.tcp()
            assert(t:connect("localhost", P.tls, { tls = true, ca_file = P.cert }))
            assert(t:setkeepalive())
            return "pooled"
        ]]))
        assert(ws:send([[
            local s = moonport.tcp()
            assert(s:connect("127.0.0.1", P.plain))
            s:send("SILENT\n")
            return s:receive()
        ]]))
        local ws2 = connect()
        assert(ws2:send([[ return moonport.tcp():connect("127.0.0.1", P.stuck) ]]))
        testing.sleep(0.3)
        local status = server:stop(10)
        -- Under ASan, a socket, an SSL or a pooled connection left behind
        -- is a leak report and a non-zero status.
        assert.are.equal(0, status, server:stderr():sub(-3000))
    end)
end)
