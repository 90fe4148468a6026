-- moonport.redis (README "Waiting": Redis), through the real binary against
-- a real redis-server the spec starts (spec/support/redis.lua): replies of
-- every kind and how they map to Lua, binary values, numbers, error replies
-- (false, err), pipelines, many handlers sharing one connection, AUTH and
-- SELECT from the URL, a server killed mid-command and restarted, timeouts,
-- the handler's connection closing during a wait, misuse, and 100,000
-- commands leaving no task, registry ref or RSS behind.
package.path = "spec/?.lua;" .. package.path
local testing = require "moonport.testing"
local redis = require "support.redis"
local socket = require "socket"

local APP = [[
local moonport = require "moonport"
local URL, AUTH_URL, DOWN_URL = os.getenv("RC_URL"), os.getenv("RC_AUTH_URL"), os.getenv("RC_DOWN_URL")
local HUNG_URL = os.getenv("RC_HUNG_URL")
local r = moonport.redis(URL)
local clients = {}
local function client(name, url)
  clients[name] = clients[name] or moonport.redis(url or URL)
  return clients[name]
end
-- A wait at load time raises: kept to report.
local load_ok, load_err = pcall(function() return r:get("x") end)

local function mark(...)
  moonport.log("info", "mark", ...)
end
local function ser(v)
  if v == moonport.null then return "null" end
  local t = type(v)
  if t == "string" then return (string.format("%q", v):gsub("\n", "n")) end
  if t == "table" then
    local out = {}
    for i = 1, #v do out[i] = ser(v[i]) end
    return "{" .. table.concat(out, ",") .. "}"
  end
  return tostring(v)
end
local function pack(...)
  local out = {}
  for i = 1, select("#", ...) do out[i] = ser((select(i, ...))) end
  return table.concat(out, " ")
end
local function words(s)
  local w = {}
  for x in s:gmatch("%S+") do w[#w + 1] = tonumber(x) or x end
  return w
end

local cmds = {}
function cmds.call(ws, arg) ws:send(pack(r:call(unpack(words(arg))))) end
function cmds.get(ws, arg) ws:send(pack(r:get(arg))) end
function cmds.kinds(ws)
  local out = {}
  out[#out + 1] = pack(r:set("k1", "v1"))
  out[#out + 1] = pack(r:get("k1"))
  out[#out + 1] = pack(r:del("nolist"))
  out[#out + 1] = pack(r:rpush("nolist", "a", "b", 3))
  out[#out + 1] = pack(r:lrange("nolist", 0, -1))
  out[#out + 1] = pack(r:get("missing"))
  out[#out + 1] = pack(r:mget("k1", "missing", "k1"))
  out[#out + 1] = pack(r:incr("k1"))
  out[#out + 1] = pack(r:call("NOSUCHCMD", "x"))
  out[#out + 1] = pack(r:GET("k1"))
  out[#out + 1] = pack(r:lrange("empty", 0, -1))
  ws:send(table.concat(out, "\n"))
end
function cmds.numbers(ws)
  local out = {}
  out[#out + 1] = pack(r:set("n", 1e15), r:get("n"), r:incrby("n", 5))
  out[#out + 1] = pack(r:set("f", 1.5), r:get("f"), r:incrbyfloat("f", 0.25))
  out[#out + 1] = pack(r:set("neg", -42), r:decr("neg"))
  ws:send(table.concat(out, "\n"))
end
function cmds.binary(ws)
  local bytes = {}
  for i = 0, 255 do bytes[#bytes + 1] = string.char(i) end
  local v = table.concat(bytes) .. "\0\0tail\r\n$5\r\n"
  local key = "bin\0key"
  local ok = r:set(key, v)
  local got = r:get(key)
  local many = {}
  for i = 1, 1000 do many[i] = i % 2 == 0 and i or ("w" .. i) end
  r:del("many")
  local n = r:rpush("many", unpack(many))
  local back = r:lrange("many", 0, -1)
  local same = #back == 1000
  for i = 1, 1000 do same = same and back[i] == tostring(many[i]) end
  ws:send(pack(ok, got == v, #got, r:strlen(key), r:exists("bin"), n, same))
end
function cmds.pipeline(ws)
  local p = r:pipeline()
  p:set("p1", "a")
  p:get("p1")
  p:incr("p1")
  p:call("LRANGE", "nolist2", 0, -1)
  p:get("missing")
  p:call("RPUSH", "nolist2", "x", "y")
  p:lrange("nolist2", 0, -1)
  local res, err = p:commit()
  local again = p:commit() -- emptied by the commit: no wait, an empty table
  -- A transaction: MULTI ... EXEC go out back to back, nothing between.
  p:multi()
  p:set("t", "1")
  p:incr("k1")
  p:exec()
  ws:send(pack(res, err) .. " | " .. pack(again) .. " | " .. pack(p:commit()))
end
-- Commands stuck behind a server that reads nothing hold at most 64 MiB.
function cmds.bounded(ws)
  local c = client("b")
  c:settimeout(300)
  local big = string.rep("x", 1024 * 1024)
  local errs, n = {}, 0
  for i = 1, 70 do
    moonport.spawn(function()
      local ok, err = c:set("big" .. i, big)
      errs[tostring(err)] = (errs[tostring(err)] or 0) + 1
      n = n + 1
    end)
  end
  while n < 70 do moonport.sleep(0.01) end
  ws:send(string.format("timeout %d, too many %d", errs["timeout"] or 0,
    errs["too many commands in flight"] or 0))
end
-- n spawned functions share r: all wait at once on its one connection.
function cmds.many(ws, n)
  n = tonumber(n)
  r:del("counter")
  local done, peak = 0, 0
  for i = 1, n do
    moonport.spawn(function()
      local v, err = r:incr("counter")
      assert(v, err)
      done = done + 1
    end)
    peak = math.max(peak, moonport.waiting())
  end
  while done < n do moonport.sleep(0.005) end
  ws:send(pack(done, r:get("counter"), peak))
end
-- n commands from k tasks that each wait for one after another.
function cmds.mass(ws, arg)
  local n, k = arg:match("(%d+) (%d+)")
  n, k = tonumber(n), tonumber(k)
  local done, bad = 0, 0
  for _ = 1, k do
    moonport.spawn(function()
      for i = 1, n / k do
        local v = r:get("k1")
        if v ~= "v1" then bad = bad + 1 end
        if i % 3 == 0 then
          local p = r:pipeline()
          p:incr("mass")
          if not p:commit() then bad = bad + 1 end
        end
      end
      done = done + 1
    end)
  end
  while done < k do moonport.sleep(0.01) end
  ws:send("mass done " .. bad)
end
function cmds.heap(ws)
  collectgarbage("collect")
  collectgarbage("collect")
  local refs = 0
  for _ in pairs(debug.getregistry()) do refs = refs + 1 end
  ws:send(string.format("%d %d %d", collectgarbage("count"), refs, moonport.waiting()))
end
function cmds.auth(ws, arg)
  local c = client("auth", AUTH_URL)
  ws:send(pack(c:call(unpack(words(arg)))))
end
function cmds.badauth(ws)
  local c = client("badauth", (AUTH_URL:gsub("://:[^@]*@", "://:wrong@")))
  local a, b = c:get("x")
  local d, e = c:get("x")
  ws:send(pack(a, b) .. " | " .. pack(d, e))
end
-- Host names go through the resolver: commands made meanwhile wait unsent,
-- in order.
function cmds.names(ws)
  local c = moonport.redis((URL:gsub("127%.0%.0%.1", "localhost")))
  local got = {}
  for i = 1, 3 do
    moonport.spawn(function() got[i] = pack(c:incr("named")) end)
  end
  local last = pack(c:get("named"))
  while #got < 3 do moonport.sleep(0.005) end
  local bad = moonport.redis("redis://no-such-host.invalid:6379")
  ws:send(table.concat(got, ",") .. " " .. last .. " | " .. pack(bad:get("x")))
end
-- A server whose listen queue is full: the connect never completes.
function cmds.hung(ws)
  local c = client("hung", HUNG_URL)
  c:settimeout(1000)
  local t0 = moonport.now()
  local a = pack(c:get("x"))
  ws:send(a .. " " .. (moonport.now() - t0 < 3 and "quick" or "slow"))
end
function cmds.down(ws)
  local c = client("down", DOWN_URL)
  ws:send(pack(c:get("x")))
end
-- One client that a test kills the server under.
function cmds.k(ws, arg)
  mark("k waits", arg)
  ws:send(pack(client("k"):call(unpack(words(arg)))))
end
function cmds.timeout(ws, arg)
  local ms, rest = arg:match("^(%d+) (.*)$")
  local c = client("t")
  c:settimeout(tonumber(ms))
  local t0 = moonport.now()
  local out = pack(c:call(unpack(words(rest))))
  c:settimeout(5000)
  ws:send(out .. " " .. (moonport.now() - t0 < 3 and "quick" or "slow"))
end
function cmds.t(ws, arg) ws:send(pack(client("t"):call(unpack(words(arg))))) end
function cmds.closewait(ws, key)
  mark("closewait waits", ws.id)
  local res, err = client("cw"):blpop(key, 10)
  local ok, serr = ws:send("after the wait")
  mark("closewait resumed", ws.id, pack(res, err), "send gives", tostring(ok), tostring(serr))
end
function cmds.close(ws)
  local c = client("closer")
  local results = {}
  moonport.spawn(function() results[1] = pack(c:blpop("never", 10)) end)
  moonport.spawn(function() results[2] = pack(c:blpop("never", 10)) end)
  assert(c:close())
  while #results < 2 do moonport.sleep(0.005) end
  ws:send(results[1] .. " | " .. results[2] .. " | " .. pack(c:set("after", "close")))
end
function cmds.misuse(ws)
  local out = { tostring(load_err) }
  local function try(f, ...)
    local ok, err = pcall(f, ...)
    out[#out + 1] = ok and "no error" or tostring(err)
  end
  try(r.get, r, {})
  try(r.get, "x")
  try(r.call, r)
  try(r.call, r, "")
  try(r.subscribe, r, "news")
  try(r.call, r, "PSUBSCRIBE", "n*")
  try(r.settimeout, r, -1)
  try(moonport.redis, "http://localhost")
  try(moonport.redis, 42)
  try(function() r:pipeline():set("a", true) end)
  try(function()
    local co = coroutine.create(function() return r:get("x") end)
    local ok, err = coroutine.resume(co)
    if not ok then error(err, 0) end
  end)
  try(r.pipeline(r).commit, r)
  try(r.call, r, "MULTI")
  try(r.select, r, 2)
  try(r.call, r, "client", "REPLY", "OFF")
  try(function() local p = r:pipeline(); p:multi(); p:set("a", 1); p:commit() end)
  try(function() r:pipeline():exec() end)
  try(r.watch, r, "k")
  ws:send(table.concat(out, "\n"))
end
-- Waits left for the exit: BLPOPs, a pipeline half answered, and a
-- command that timed out but is still owed a reply.
function cmds.park(ws)
  local c = client("park")
  for _ = 1, 3 do moonport.spawn(function() c:blpop("parked", 60) end) end
  local p = c:pipeline()
  p:get("k1")
  p:blpop("parked2", 60)
  moonport.spawn(function() p:commit() end)
  local t = client("t2")
  t:settimeout(100)
  ws:send(pack(t:blpop("parked3", 60)))
end
function cmds.tostring(ws) ws:send(tostring(r)) end

local app = {}
function app.on_message(ws, data)
  local name, arg = data:match("^(%S+) ?(.*)$")
  cmds[name](ws, arg)
end
function app.on_close(ws, code)
  mark("on_close", ws.id)
end
return app
]]

local function recv(ws, timeout)
    local data, err = ws:receive_message(timeout or 10)
    assert(data, "no answer: " .. tostring(err))
    return data
end

local function ask(ws, msg, timeout)
    assert(ws:send(msg))
    return recv(ws, timeout)
end

local function lines(s)
    local t = {}
    for l in (s .. "\n"):gmatch("([^\n]*)\n") do t[#t + 1] = l end
    return t
end

describe("moonport.redis", function()
    local server, rs, auth_rs, ws, hung, filler, hung_port

    setup(function()
        local err, log
        rs, err, log = redis.start()
        assert(rs, tostring(err) .. "\n" .. tostring(log))
        auth_rs, err, log = redis.start { password = "s3cret:@/x" }
        assert(auth_rs, tostring(err) .. "\n" .. tostring(log))
        -- A listener that never accepts, its queue (backlog 0) filled by
        -- one connection: a connect to it hangs.
        hung = assert(socket.tcp())
        assert(hung:bind("127.0.0.1", 0))
        assert(hung:listen(0))
        hung_port = select(2, hung:getsockname())
        filler = assert(socket.tcp())
        assert(filler:connect("127.0.0.1", hung_port))
        local env = string.format("RC_URL=%s RC_AUTH_URL=%s RC_DOWN_URL=redis://127.0.0.1:%d " ..
            "RC_HUNG_URL=redis://127.0.0.1:%d " ..
            'ASAN_OPTIONS="${ASAN_OPTIONS:-}:quarantine_size_mb=0"',
            testing.quote(rs:url()), testing.quote(auth_rs:url(3)), testing.free_port(), hung_port)
        server, err, log = testing.start { apps = { rc = APP }, env = env, args = { "--reload", "off" } }
        assert(server, tostring(err) .. "\n" .. tostring(log))
        ws = assert(server:connect("/rc"))
    end)

    teardown(function()
        if ws then ws:close() end
        if server then server:cleanup() end
        if rs then rs:stop() end
        if auth_rs then auth_rs:stop() end
        if filler then filler:close() end
        if hung then hung:close() end
    end)

    it("maps every kind of reply to Lua", function()
        local out = lines(ask(ws, "kinds"))
        assert.are.same({
            '"OK"',                -- status
            '"v1"',                -- bulk
            '0',                   -- integer
            '3',
            '{"a","b","3"}',       -- array; a number argument goes as its digits
            'null',                -- a nil bulk is moonport.null
            '{"v1",null,"v1"}',    -- nil inside an array too
            'false "ERR value is not an integer or out of range"', -- error reply
            'false "ERR unknown command \'NOSUCHCMD\', with args beginning with: \'x\' "',
            '"v1"',                -- command names in any case
            '{}',                  -- an empty array
        }, out)
    end)

    it("sends numbers as Redis reads them and returns integers as numbers", function()
        assert.are.same({
            '"OK" "1000000000000000" 1e+15',
            '"OK" "1.5" "1.75"',
            '"OK" -43',
        }, lines(ask(ws, "numbers")))
        assert.are.equal("1000000000000005\n", (rs:cli("GET", "n")))
    end)

    it("keeps binary keys and values byte for byte, and commands of 1,000 words", function()
        assert.are.equal('"OK" true 268 268 0 1000 true', ask(ws, "binary"))
    end)

    it("runs a pipeline in one wait, error replies in place, transactions in it", function()
        assert.are.equal('{"OK","a",{false,"ERR value is not an integer or out of range"},{},null,2,{"x","y"}} nil' ..
            ' | {} | {"OK","QUEUED","QUEUED",{"OK",{false,"ERR value is not an integer or out of range"}}}',
            ask(ws, "pipeline"))
    end)

    it("sends the commands of many waiting handlers on one connection", function()
        local clients_before = select(2, rs:cli("CLIENT", "LIST"):gsub("\n", ""))
        local done, counter, peak = ask(ws, "many 2000", 30):match("^(%d+) \"(%d+)\" (%d+)$")
        assert.are.equal("2000", done)
        assert.are.equal("2000", counter)
        -- All 2,000 waited at once, and were answered on the one connection.
        assert.is_true(tonumber(peak) >= 2000, peak)
        local clients_after = select(2, rs:cli("CLIENT", "LIST"):gsub("\n", ""))
        assert.are.equal(clients_before, clients_after)
    end)

    it("sends AUTH (user info, percent-escaped) and SELECT from the URL first", function()
        assert.are.equal('"OK"', ask(ws, "auth SET selected yes"))
        assert.are.equal("yes\n", (auth_rs:cli("-n", 3, "GET", "selected")))
        assert.are.equal("\n", (auth_rs:cli("GET", "selected"))) -- not in db 0
        assert.are.equal('nil "AUTH failed: WRONGPASS invalid username-password pair or user is disabled."' ..
            ' | nil "AUTH failed: WRONGPASS invalid username-password pair or user is disabled."',
            ask(ws, "badauth"))
        server:wait_log("redis: 127.0.0.1:%d+: AUTH failed: WRONGPASS", 5)
    end)

    it("resolves host names without blocking, keeping the order of commands", function()
        assert.are.equal('1,2,3 "3" | nil "no such host"', ask(ws, "names"))
    end)

    it("returns nil, \"connection refused\" when nothing listens", function()
        assert.are.equal('nil "connection refused"', ask(ws, "down"))
    end)

    it("times out a connect that never completes, and drops it", function()
        local function syn_sent()
            local _, out = testing.capture("ss -tnH state syn-sent dport = :" .. hung_port, 5)
            return select(2, out:gsub("\n", ""))
        end
        for _ = 1, 2 do -- the second time, a new connect
            assert(ws:send("hung"))
            assert.truthy(testing.eventually(function() return syn_sent() == 1 end, 1))
            assert.are.equal('nil "timeout" quick', recv(ws))
            -- The connect timer closed the socket: with only the command's
            -- timer it would stay in SYN-SENT, retrying, for minutes.
            assert.are.equal(0, syn_sent())
        end
    end)

    it("fails the commands in flight when Redis dies, and connects again after", function()
        assert.are.equal('"PONG"', ask(ws, "k PING"))
        assert(ws:send("k BLPOP nothing 20"))
        server:wait_log("mark k waits BLPOP nothing 20", 5)
        -- BLPOP is written by now; give Redis the moment to read it.
        assert.truthy(testing.eventually(function()
            return rs:cli("CLIENT", "LIST"):find("cmd=blpop", 1, true)
        end, 5))
        rs:kill()
        local got = recv(ws)
        assert.truthy(got == 'nil "closed"' or got == 'nil "connection reset by peer"', got)
        server:wait_log("redis: lost the connection to 127.0.0.1:%d+", 5)
        -- Down: the next command fails at once; up again: it works.
        assert.are.equal('nil "connection refused"', ask(ws, "k PING"))
        rs:restart()
        assert.are.equal('"PONG"', ask(ws, "k PING"))
        assert.are.equal('"OK"', ask(ws, "call SET k1 v1")) -- the shared client too
    end)

    it("times a command out, and its late reply resumes nothing", function()
        -- BLPOP answers after 1 s; the wait ends after 200 ms.
        assert.are.equal('nil "timeout" quick', ask(ws, "timeout 200 BLPOP late 1"))
        -- The next command on that connection is answered after BLPOP's
        -- null, and gets its own reply, not BLPOP's.
        assert.are.equal('"PONG"', ask(ws, "t PING"))
        rs:pause() -- a server that reads nothing
        local ok, err = pcall(function()
            assert.are.equal('nil "timeout" quick', ask(ws, "timeout 300 GET k1"))
        end)
        rs:resume()
        assert(ok, err)
        assert.are.equal('"v1"', ask(ws, "t GET k1"))
    end)

    it("holds at most 64 MiB of commands for a server that reads nothing", function()
        rs:pause()
        local ok, got = pcall(ask, ws, "bounded", 20)
        rs:resume()
        assert(ok, got)
        local timeouts, refused = got:match("^timeout (%d+), too many (%d+)$")
        -- 63 SETs of 1 MiB fit, the rest are refused at once.
        assert.are.equal(70, tonumber(timeouts) + tonumber(refused), got)
        assert.is_true(tonumber(refused) >= 6 and tonumber(timeouts) >= 60, got)
        -- Once Redis reads again, the client works.
        assert.truthy(testing.eventually(function()
            return ask(ws, "call GET k1") == '"v1"'
        end, 10))
    end)

    it("ends a wait normally when the handler's connection closes", function()
        local w2 = assert(server:connect("/rc"))
        assert(w2:send("closewait cwlist"))
        local id = server:wait_log("mark closewait waits (%d+)", 5)
        assert.truthy(id)
        w2:close(4000, "bye")
        w2:expect_close(5)
        rs:cli("RPUSH", "cwlist", "item")
        -- The wait returns its own result; the connection's send says closed.
        local line = server:wait_log("mark (closewait resumed " .. id .. " [^\n]*)", 5)
        assert.are.equal("closewait resumed " .. id .. ' {"cwlist","item"} nil send gives nil closed', line)
        server:wait_log("mark on_close " .. id, 5)
        local err = server:stderr()
        local resumed = err:find("mark closewait resumed " .. id, 1, true)
        local closed = err:find("mark on_close " .. id, 1, true)
        assert.is_true(closed > resumed)
    end)

    it("r:close() ends the waits on it with nil, \"closed\"; the next command connects", function()
        assert.are.equal('nil "closed" | nil "closed" | "OK"', ask(ws, "close"))
    end)

    it("raises on misuse, naming the method", function()
        local out = lines(ask(ws, "misuse"))
        assert.truthy(out[1]:match("rc%.lua:%d+: redis:get: cannot wait here %(not in a handler"), out[1])
        assert.truthy(out[2]:match("rc%.lua:%d+: bad argument #1 to 'redis:get' %(string or number expected, got table%)"), out[2])
        assert.truthy(out[3]:match("calling 'redis:get' on bad self %(redis client expected, got string"), out[3])
        assert.truthy(out[4]:match("bad argument #1 to 'redis:call' %(string %(a command name%) expected, got no value%)"), out[4])
        assert.truthy(out[5]:match("bad argument #1 to 'redis:call' %(the command name is empty%)"), out[5])
        assert.truthy(out[6]:match("redis:subscribe: subscribe is not available on moonport.redis"), out[6])
        assert.truthy(out[7]:match("redis:call: PSUBSCRIBE is not available on moonport.redis"), out[7])
        assert.truthy(out[8]:match("bad argument #1 to 'redis:settimeout' %(milliseconds must be"), out[8])
        assert.truthy(out[9]:match("bad argument #1 to 'moonport.redis' %(not a redis:// URL"), out[9])
        assert.truthy(out[10]:match("bad argument #1 to 'moonport.redis' %(string expected, got number%)"), out[10])
        assert.truthy(out[11]:match("bad argument #2 to 'pipeline:set' %(string or number expected, got boolean%)"), out[11])
        assert.truthy(out[12]:match("redis:get: cannot wait here %(inside a coroutine the app made%)"), out[12])
        assert.truthy(out[13]:match("calling 'pipeline:commit' on bad self %(redis pipeline expected"), out[13])
        assert.truthy(out[14]:match("redis:call: MULTI is not available on moonport.redis %(the connection is shared: send MULTI ... EXEC in a pipeline%)"), out[14])
        assert.truthy(out[15]:match("redis:select: select is not available on moonport.redis %(the connection is shared: name the db in the URL%)"), out[15])
        assert.truthy(out[16]:match("redis:call: client is not available on moonport.redis %(replies are how"), out[16])
        assert.truthy(out[17]:match("pipeline:commit: a MULTI without its EXEC or DISCARD"), out[17])
        assert.truthy(out[18]:match("pipeline:exec: exec without MULTI"), out[18])
        assert.truthy(out[19]:match("redis:watch: watch is not available"), out[19])
        assert.truthy(ask(ws, "tostring"):match("^redis client %(127%.0%.0%.1:%d+%)$"))
        assert.are.equal('"v1"', ask(ws, "get k1")) -- nothing broke
    end)

    it("leaves no task, registry ref or memory behind after 100,000 commands", function()
        local function heap()
            local kib, refs, waiting = ask(ws, "heap"):match("(%d+) (%d+) (%d+)")
            return tonumber(kib), tonumber(refs), tonumber(waiting)
        end
        local trail = {}
        local function round()
            assert.are.equal("mass done 0", ask(ws, "mass 10000 50", 120))
            trail[#trail + 1] = server:rss_kib()
        end
        for _ = 1, 3 do round() end
        local kib0, refs0, waiting0 = heap()
        local settled = math.max(unpack(trail))
        for _ = 1, 7 do round() end
        local kib1, refs1, waiting1 = heap()
        local last = math.max(unpack(trail, 4))
        io.stderr:write(string.format("\n[redis_client_spec] 100,000 GETs and 33,330 pipelines: " ..
            "Lua heap %d -> %d KiB, registry %d -> %d, waiting %d -> %d, RSS after each round (KiB): %s\n",
            kib0, kib1, refs0, refs1, waiting0, waiting1, table.concat(trail, " ")))
        assert.are.equal(0, waiting1)
        assert.is_true(refs1 <= refs0 + 2, refs0 .. " -> " .. refs1)
        assert.is_true(kib1 <= kib0 + 256, kib0 .. " -> " .. kib1)
        assert.is_true(last <= settled + 1024, settled .. " -> " .. last)
    end)

    it("lets a reload's old clients go: a waiting command finishes, then they close", function()
        -- A command of the old code waits through the reload and ends with
        -- its own reply; once the old code is collected, none of its
        -- connections to Redis stays open.
        assert(ws:send("k BLPOP reloadlist 10"))
        server:wait_log("mark k waits BLPOP reloadlist 10", 5)
        server:write_app("rc", APP .. "\n-- v2\n")
        assert(server:signal("HUP"))
        server:wait_log("reload rc %(.-%) v2 ok", 5)
        rs:cli("RPUSH", "reloadlist", "x")
        assert.are.equal('{"reloadlist","x"}', recv(ws))
        local function clients()
            local n = 0
            for line in rs:cli("CLIENT", "LIST"):gmatch("[^\n]+") do
                if not line:find("cmd=client", 1, true) then n = n + 1 end
            end
            return n
        end
        assert.is_true(clients() > 0)
        assert.truthy(testing.eventually(function()
            ask(ws, "heap") -- a full collection in the server
            return clients() == 0
        end, 10), "old connections still open: " .. rs:cli("CLIENT", "LIST"))
        assert.are.equal('"v1"', ask(ws, "get k1")) -- the new code's client
    end)

    it("exits cleanly while commands wait, answered or not", function()
        assert.are.equal('nil "timeout"', ask(ws, "park"))
        local waiting = ask(ws, "heap"):match("%d+ %d+ (%d+)")
        assert.are.equal("4", waiting)
        local status = server:stop(15)
        -- Under ASan, a request, a context or a ref left behind is a leak
        -- report and a non-zero status.
        assert.are.equal(0, status, server:stderr():sub(-3000))
    end)
end)
