-- The Redis backplane (README "Scaling out"): topics across moonport nodes
-- through a real redis-server that each test starts on a free port without
-- persistence (spec/support/redis.lua) and stops. Two and three nodes:
-- every subscriber everywhere gets each message once, in the publisher's
-- order, ws:publish skips only its sender, kind survives; the node's
-- subscriptions in Redis follow its local subscribers (PUBSUB NUMSUB);
-- redis-cli PUBLISH and `moonport publish` reach subscribers; bad payloads
-- are dropped with a log line; sharding over two Redis servers puts each
-- topic where FNV-1a says; Redis down at start, killed and restarted, and
-- paused with SIGSTOP (memory bounded by backplane.max_pending); --workers
-- 2 on each node. Nothing waits for a fixed time: every wait is for a
-- condition, with a deadline.
package.path = "spec/?.lua;" .. package.path
local testing = require "moonport.testing"
local redis = require "support.redis"
local socket = require "socket"

local APP = [[
local moonport = require "moonport"
local app = {}
function app.on_connect(ws, req)
  for t in (req.args.sub or ""):gmatch("[^,]+") do assert(ws:subscribe(t)) end
end
function app.on_message(ws, data, kind)
  local cmd, a, b = data:match("^(%S+) ?(%S*) ?(.*)$")
  if cmd == "pub" then
    ws:send("n " .. moonport.publish(a, b, kind))
  elseif cmd == "wspub" then
    ws:send("n " .. ws:publish(a, b, kind))
  elseif cmd == "burst" then
    local n, size = b:match("^(%d+) ?(%d*)$")
    local pad = string.rep("x", tonumber(size) or 0)
    for i = 1, tonumber(n) do moonport.publish(a, i .. " " .. pad) end
    ws:send("done")
  elseif cmd == "sub" then
    ws:send("sub " .. tostring(ws:subscribe(a)))
  elseif cmd == "unsub" then
    ws:send("unsub " .. tostring(ws:unsubscribe(a)))
  elseif cmd == "where" then
    ws:send("worker " .. moonport.worker)
  elseif cmd == "stats" then
    local t = moonport.backplane()
    if not t then return ws:send("none") end
    local keys = {}
    for k, v in pairs(t) do keys[#keys + 1] = k .. "=" .. tostring(v) end
    table.sort(keys)
    ws:send("stats " .. table.concat(keys, " "))
  end
end
return app
]]

local BIN = os.getenv("MOONPORT_BIN") or "bin/moonport"

local function wait_until(what, fn, timeout)
  local deadline = socket.gettime() + (timeout or 10)
  while true do
    local v = fn()
    if v then return v end
    if socket.gettime() > deadline then error("timed out waiting for " .. what, 2) end
    socket.sleep(0.02)
  end
end

local function recv(ws, what)
  what = what or debug.traceback("", 2):match("backplane_spec.lua:(%d+)")
  local data, kind = ws:receive_message(10)
  assert(data, "nothing received" .. (what and (" (" .. what .. ")") or "") .. ": " .. tostring(kind))
  return data, kind
end

local function ask(ws, q)
  assert(ws:send(q))
  return recv(ws, q)
end

local function stats(ws)
  local s = ask(ws, "stats")
  if s == "none" then return nil end
  local t = {}
  -- the node id is 16 hex digits, which tonumber may read as a number
  -- ("0123456789012345", "12e4..."): it stays a string
  for k, v in s:gmatch("(%w[%w_]*)=(%S+)") do t[k] = k ~= "node" and tonumber(v) or v end
  return t
end

local servers, rediss, clients = {}, {}, {}

local function connect(s, path)
  local ws, err = s:connect(path)
  clients[#clients + 1] = ws
  return ws, err
end

-- Stop servers (they must exit 0: under ASan, a leak would not) once the
-- clients have closed: a client that does not answer the server's close
-- would hold the shutdown for timeouts.close.
local function stop(...)
  for _, ws in ipairs(clients) do
    ws:close(1000)
    ws:shutdown()
  end
  clients = {}
  -- 15 s, not 5: an ASan build on a loaded machine (LeakSanitizer's scan at
  -- exit) was seen to take longer than 5 s to exit 0, and was then killed.
  for _, s in ipairs({...}) do assert.are.equal(0, s:stop(15)) end
end

local function start_redis(opts)
  local r, err, log = redis.start(opts)
  assert(r, tostring(err) .. "\n" .. tostring(log))
  rediss[#rediss + 1] = r
  return r
end

-- A node: moonport with the backplane on r (a server or a list of them).
local function node(r, opts)
  opts = opts or {}
  local args = {}
  for _, one in ipairs(r.port and {r} or r) do
    args[#args + 1] = "--backplane"
    args[#args + 1] = one:url()
  end
  for _, a in ipairs(opts.args or {}) do args[#args + 1] = a end
  local s, err, stderr = testing.start { apps = { bp = APP }, args = args, config = opts.config,
    env = opts.env }
  assert(s, tostring(err) .. "\n" .. tostring(stderr))
  servers[#servers + 1] = s
  return s
end

-- Wait until the node is connected to all its Redis servers (in the worker
-- that ws runs in).
local function connected(ws)
  wait_until("the backplane to connect", function()
    local t = stats(ws)
    return t and t.connected == t.servers
  end)
end

local function numsub(r, topic, n)
  wait_until(("NUMSUB moonport:%s to be %d"):format(topic, n), function()
    return r:numsub("moonport:" .. topic) == n
  end)
end

-- FNV-1a, 32 bits, computed here independently of the C code: the shard a
-- topic lives on, as the README tells other services to compute it.
local function xor8(a, b)
  local r, bit = 0, 1
  for _ = 1, 8 do
    if (a % 2) ~= (b % 2) then r = r + bit end
    a, b, bit = math.floor(a / 2), math.floor(b / 2), bit * 2
  end
  return r
end
local function fnv1a(s)
  local h = 2166136261
  for i = 1, #s do
    h = h - h % 256 + xor8(h % 256, s:byte(i))
    h = ((h % 256) * 16777216 + h * 403) % 4294967296 -- * 16777619, mod 2^32
  end
  return h
end

describe("backplane", function()
  after_each(function()
    for _, ws in ipairs(clients) do
      ws:close(1000)
      ws:shutdown()
    end
    for _, s in ipairs(servers) do s:cleanup() end
    for _, r in ipairs(rediss) do r:stop() end
    servers, rediss, clients = {}, {}, {}
  end)

  it("three nodes: each message once everywhere, in order; ws:publish skips only the sender", function()
    local r = start_redis()
    local a, b, c = node(r), node(r), node(r)
    local pa = assert(connect(a, "/bp?sub=room"))
    local sa = assert(connect(a, "/bp?sub=room"))
    local sb = assert(connect(b, "/bp?sub=room"))
    local sc = assert(connect(c, "/bp?sub=room"))
    numsub(r, "room", 3) -- one subscription per node
    assert(pa:send("burst room 50"))
    for _, ws in ipairs({pa, sa, sb, sc}) do
      for i = 1, 50 do assert.are.equal(i .. " ", recv(ws)) end
    end
    assert.are.equal("done", recv(pa))
    -- ws:publish from pa: everyone but pa, on every node, once.
    assert.are.equal("n 1", ask(pa, "wspub room end")) -- sa: the one local subscriber
    for _, ws in ipairs({sa, sb, sc}) do assert.are.equal("end", recv(ws)) end
    assert.are.equal("final", ask(sb, "pub room final")) -- its own, then the count
    assert.are.equal("n 1", recv(sb))
    for _, ws in ipairs({pa, sa, sc}) do assert.are.equal("final", recv(ws)) end
    -- Binary stays binary across nodes.
    assert(sc:send("pub room \0\1\255", "binary"))
    assert.are.same({"\0\1\255", "binary"}, {recv(sc)})
    assert.are.equal("n 1", recv(sc))
    for _, ws in ipairs({pa, sa, sb}) do
      local data, kind = recv(ws)
      assert.are.same({"\0\1\255", "binary"}, {data, kind})
    end
    -- Node a's own messages came back from Redis and were dropped there.
    local t = stats(pa)
    assert.are.equal(51, t.published)
    assert.are.equal(51, t.own)
    assert.are.equal(2, t.received)
    assert.are.equal(4, t.delivered)
    assert.are.equal(0, t.dropped_bad + t.dropped_unreachable + t.dropped_pending)
    assert.are.equal(16, #t.node)
    assert.are_not.equal(t.node, stats(sb).node)
    stop(a, b, c)
  end)

  it("subscribes a topic in Redis while the node has subscribers to it", function()
    local r = start_redis()
    local a = node(r)
    local w1 = assert(connect(a, "/bp?sub=t1,t2"))
    connected(w1)
    numsub(r, "t1", 1)
    local w2 = assert(connect(a, "/bp?sub=t1"))
    assert.are.equal("sub true", ask(w2, "sub t3"))
    numsub(r, "t3", 1)
    assert.are.same({"moonport:t1", "moonport:t2", "moonport:t3"}, r:channels("moonport:*"))
    assert.are.equal("unsub true", ask(w1, "unsub t2"))
    numsub(r, "t2", 0)
    w1:close(1000)
    assert(w1:expect_close(5))
    assert.are.equal(1, r:numsub("moonport:t1")) -- w2 is still there
    assert.are.equal("unsub true", ask(w2, "unsub t1"))
    numsub(r, "t1", 0)
    -- Quick churn: leave and join again before Redis answers.
    for _ = 1, 20 do
      assert(w2:send("unsub t3"))
      assert(w2:send("sub t3"))
    end
    for _ = 1, 20 do
      assert.are.equal("unsub true", recv(w2))
      assert.are.equal("sub true", recv(w2))
    end
    assert.are.equal("still", ask(w2, "pub t3 still"))
    assert.are.equal("n 1", recv(w2))
    assert.are.equal(1, r:numsub("moonport:t3"))
    w2:close(1000)
    numsub(r, "t3", 0)
    assert.are.same({}, r:channels("moonport:*"))
    stop(a)
  end)

  it("takes a plain PUBLISH from redis-cli and an envelope; drops bad payloads with a log line", function()
    local r = start_redis()
    local a = node(r, { config = "return { limits = { max_message = 1000 } }" })
    local ws = assert(connect(a, "/bp?sub=news"))
    numsub(r, "news", 1)
    local out = r:cli("PUBLISH", "moonport:news", "hello from a shell")
    assert.are.equal("1\n", out)
    assert.are.same({"hello from a shell", "text"}, {recv(ws)})
    assert.are.equal(1, r:publish_bytes("moonport:news", "\255b\0\0\1\2"))
    assert.are.same({"\0\1\2", "binary"}, {recv(ws)})
    assert.are.equal(1, r:publish_bytes("moonport:news", "\255t\3abcenveloped"))
    assert.are.same({"enveloped", "text"}, {recv(ws)})
    -- Not UTF-8, a bad kind, an origin past the end, over max_message.
    for _, bad in ipairs({"\195\40", "\255x\0abc", "\255t\9ab", string.rep("y", 1001)}) do
      assert.are.equal(1, r:publish_bytes("moonport:news", bad))
    end
    assert.are.equal(1, r:publish_bytes("moonport:news", "after the bad ones"))
    assert.are.equal("after the bad ones", recv(ws))
    local t = stats(ws)
    assert.are.equal(4, t.dropped_bad)
    assert.are.equal(4, t.received)
    assert.truthy(a:wait_log("backplane: dropped %d+ message%(s%) from Redis %(([^)]+)%)"))
    stop(a)
  end)

  it("moonport publish: through --backplane or a config, text or --binary, and its errors", function()
    local r = start_redis()
    local a = node(r)
    local ws = assert(connect(a, "/bp?sub=jobs"))
    numsub(r, "jobs", 1)
    local dir = testing.temp_dir()
    testing.write_file(dir .. "/config.lua", ("return { backplane = { redis = %q } }"):format(r:url()))
    local q = testing.quote
    local status, out = testing.capture(q(BIN) .. " publish --backplane " .. q(r:url()) ..
      " jobs 'nightly run done'", 10)
    assert.are.equal(0, status, out)
    assert.truthy(out:find("1 receiver", 1, true), out)
    assert.are.same({"nightly run done", "text"}, {recv(ws)})
    testing.write_file(dir .. "/blob", "\0\255\1")
    status, out = testing.capture(q(BIN) .. " publish --config " .. q(dir .. "/config.lua") ..
      " --binary jobs - <" .. q(dir .. "/blob"), 10)
    assert.are.equal(0, status, out)
    assert.are.same({"\0\255\1", "binary"}, {recv(ws)})
    -- Mistakes: no backplane, not UTF-8 without --binary, a bad URL.
    status, out = testing.capture(q(BIN) .. " publish jobs hi", 10)
    assert.are.equal(2, status)
    assert.truthy(out:find("no backplane", 1, true), out)
    status, out = testing.capture(q(BIN) .. " publish --backplane " .. q(r:url()) .. " jobs - <" ..
      q(dir .. "/blob"), 10)
    assert.are.equal(2, status)
    assert.truthy(out:find("not UTF-8", 1, true), out)
    status, out = testing.capture(q(BIN) .. " publish --backplane http://x jobs hi", 10)
    assert.are.equal(2, status)
    assert.truthy(out:find("bad Redis URL", 1, true), out)
    r:kill()
    status, out = testing.capture(q(BIN) .. " publish --backplane " .. q(r:url()) .. " jobs hi", 10)
    assert.are.equal(1, status)
    assert.truthy(out:find("unreachable", 1, true), out)
    testing.run("rm -rf " .. q(dir))
  end)

  it("shards topics over two Redis servers by FNV-1a of the name", function()
    local r1, r2 = start_redis(), start_redis()
    local a = node({r1, r2})
    local topics = {"alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"}
    local ws = assert(connect(a, "/bp?sub=" .. table.concat(topics, ",")))
    local on = {0, 0}
    for _, t in ipairs(topics) do
      local k = fnv1a(t) % 2 + 1
      on[k] = on[k] + 1
      local right, wrong = ({r1, r2})[k], ({r2, r1})[k]
      numsub(right, t, 1)
      assert.are.equal(0, wrong:numsub("moonport:" .. t))
    end
    assert.is_true(on[1] > 0 and on[2] > 0) -- the names do land on both
    -- moonport publish finds each topic's server by the same hash.
    for _, t in ipairs(topics) do
      local status, out = testing.capture(testing.quote(BIN) .. " publish --backplane " ..
        r1:url() .. " --backplane " .. r2:url() .. " " .. t .. " to-" .. t, 10)
      assert.are.equal(0, status, out)
      assert.are.equal("to-" .. t, recv(ws))
    end
    stop(a)
  end)

  it("starts with Redis down, keeps local delivery, and connects when it comes up", function()
    local probe = start_redis()
    local port = probe.port
    probe:kill()
    local a = node(probe)
    assert.truthy(a:wait_log("backplane: redis://127%.0%.0%.1:" .. port ..
      " unreachable %([^)]*%), retrying in [%d.]+s; local delivery goes on"))
    local ws = assert(connect(a, "/bp?sub=x"))
    assert.are.equal("local", ask(ws, "pub x local"))
    assert.are.equal("n 1", recv(ws))
    local t = stats(ws)
    assert.are.equal(0, t.connected)
    assert.are.equal(1, t.dropped_unreachable)
    probe:restart()
    connected(ws)
    numsub(probe, "x", 1)
    assert.truthy(a:wait_log("connected to redis://[^ ]+ %(node %x+%), reachable at last; 1 publish"))
    assert.are.equal(1, testing.count(a:stderr(), "unreachable %(")) -- logged once
    stop(a)
  end)

  it("gives up on a server that accepts the connection but never answers, and retries", function()
    -- A listening socket nobody accepts from: the kernel completes the TCP
    -- handshake, and nothing is ever said.
    local mute = assert(socket.bind("127.0.0.1", 0))
    local _, port = mute:getsockname()
    local s = assert(testing.start { apps = { bp = APP },
      args = { "--backplane", "redis://127.0.0.1:" .. port } })
    servers[#servers + 1] = s
    local ws = assert(connect(s, "/bp?sub=k"))
    assert.truthy(s:wait_log("unreachable %(no answer within 5 s%), retrying in", 10))
    assert.are.equal("local", ask(ws, "pub k local"))
    assert.are.equal("n 1", recv(ws))
    local t = stats(ws)
    assert.are.equal(0, t.connected)
    assert.are.equal(1, t.dropped_unreachable)
    mute:close()
    stop(s)
  end)

  it("Redis killed and restarted: local delivery goes on, it re-subscribes, no duplicate", function()
    local r = start_redis()
    local a, b = node(r, { args = { "--admin", "127.0.0.1:0" } }), node(r)
    -- /metrics shows the backplane's state (sampled twice a second).
    local function metric(sample)
      local _, _, text = a:admin("/metrics")
      return testing.metric(text, sample)
    end
    local sa = assert(connect(a, "/bp?sub=k,k2"))
    local sb = assert(connect(b, "/bp?sub=k"))
    numsub(r, "k", 2)
    assert.are.equal("before", ask(sa, "pub k before"))
    assert.are.equal("n 1", recv(sa))
    assert.are.equal("before", recv(sb))
    wait_until("metrics of the backplane up", function()
      return metric('moonport_backplane_connections{state="up"}') == 1
        and metric('moonport_backplane_messages_total{direction="published"}') == 1
    end)
    r:kill()
    assert.truthy(a:wait_log("backplane: lost redis://[^ ]+ %([^)]*%), retrying in"))
    wait_until("metrics of the backplane down", function()
      return metric('moonport_backplane_connections{state="down"}') == 1
    end)
    assert.are.equal("during", ask(sa, "pub k during"))
    assert.are.equal("n 1", recv(sa))
    r:restart()
    numsub(r, "k", 2)
    numsub(r, "k2", 1)
    connected(sa)
    assert.truthy(a:wait_log("connected to redis://[^ ]+ again; 2 topic%(s%) re%-subscribed; 1 publish"))
    assert.are.equal("after", ask(sa, "pub k after"))
    assert.are.equal("n 1", recv(sa))
    assert.are.equal("after", recv(sb)) -- "during" is lost (at-most-once), "before" not repeated
    local t = stats(sa)
    assert.are.equal(1, t.reconnects)
    assert.are.equal(1, t.dropped_unreachable)
    wait_until("metrics of the backplane's recovery", function()
      return metric('moonport_backplane_connections{state="up"}') == 1
        and metric("moonport_backplane_reconnects_total") == 1
        and metric('moonport_backplane_dropped_total{reason="unreachable"}') == 1
    end)
    stop(a, b)
  end)

  it("Redis paused (SIGSTOP): local delivery goes on, memory bounded by max_pending", function()
    local r = start_redis()
    local cfg = "return { backplane = { max_pending = 262144 } }"
    -- Under ASan, freed memory sits in a quarantine (256 MiB by default)
    -- and RSS only grows: without it, RSS measures what is held.
    local a = node(r, { config = cfg, env = 'ASAN_OPTIONS="${ASAN_OPTIONS:-}:quarantine_size_mb=0"' })
    local b = node(r)
    local sa = assert(connect(a, "/bp?sub=p"))
    local sb = assert(connect(b, "/bp?sub=p"))
    numsub(r, "p", 2)
    local rss0 = a:rss_kib()
    r:pause()
    -- 400 messages of 20 KB, 8 MB, published while Redis reads nothing, in
    -- bursts of 10 that the local subscriber reads as they come.
    for k = 0, 39 do
      assert(sa:send("burst p 10 20000"))
      for i = 1, 10 do assert.are.equal(i .. " ", (recv(sa):sub(1, #tostring(i) + 1))) end
      assert.are.equal("done", recv(sa), k)
    end
    local t = stats(sa)
    assert.is_true(t.dropped_pending > 0)
    assert.are.equal(400, t.published + t.dropped_pending)
    -- What Redis owes replies for is at most max_pending (256 KiB): far
    -- from the 8 MB published.
    assert.is_true(t.published * 20000 <= 262144, t.published .. " publishes accepted")
    assert.is_true(a:rss_kib() - rss0 < 4096, "RSS grew by " .. (a:rss_kib() - rss0) .. " KiB")
    assert.truthy(a:wait_log("does not keep up %(%d+ bytes of publishes unanswered, " ..
      "backplane.max_pending is 262144%); %d+ publish"))
    r:resume()
    -- b gets those written before the bound (the first burst or bursts), in
    -- order, and none of the dropped ones.
    local last = 0
    for _ = 1, t.published do
      local n = tonumber(recv(sb):match("^(%d+) "))
      assert.are.equal(last % 10 + 1, n)
      last = n
    end
    assert.are.equal("resumed", ask(sa, "pub p resumed"))
    assert.are.equal("n 1", recv(sa))
    assert.are.equal("resumed", recv(sb))
    stop(a)
  end)

  it("works with --workers 2 on each node: one subscription per worker", function()
    local r = start_redis()
    local a = node(r, { args = {"--workers", "2"} })
    local b = node(r, { args = {"--workers", "2"} })
    local function on_worker(s, k)
      for _ = 1, 300 do
        local ws = assert(connect(s, "/bp?sub=w"))
        if ask(ws, "where") == "worker " .. k then return ws end
        ws:close(1000)
        ws:shutdown()
      end
      error("no connection landed on worker " .. k)
    end
    local a1, a2 = on_worker(a, 1), on_worker(a, 2)
    local b1, b2 = on_worker(b, 1), on_worker(b, 2)
    numsub(r, "w", 4) -- every worker with a subscriber has its own
    connected(a1)
    assert(a1:send("burst w 30"))
    for _, ws in ipairs({a1, a2, b1, b2}) do
      for i = 1, 30 do assert.are.equal(i .. " ", recv(ws)) end
    end
    assert.are.equal("done", recv(a1))
    assert.are.equal("n 0", ask(b2, "wspub w last"))
    for _, ws in ipairs({a1, a2, b1}) do assert.are.equal("last", recv(ws)) end
    assert.are.equal("marker", ask(a2, "pub w marker"))
    assert.are.equal("n 1", recv(a2))
    for _, ws in ipairs({a1, b1, b2}) do assert.are.equal("marker", recv(ws)) end
    b2:close(1000)
    numsub(r, "w", 3)
    stop(a, b)
  end)

  it("AUTH: a password from the URL or MOONPORT_REDIS_PASSWORD; a wrong one is logged", function()
    local r = start_redis({ password = "p@ss word" })
    local a = node(r) -- r:url() carries the password, percent-escaped
    local b = assert(testing.start { apps = { bp = APP },
      args = {"--backplane", "redis://127.0.0.1:" .. r.port},
      env = "MOONPORT_REDIS_PASSWORD='p@ss word'" })
    servers[#servers + 1] = b
    local sa = assert(connect(a, "/bp?sub=sec"))
    local sb = assert(connect(b, "/bp?sub=sec"))
    numsub(r, "sec", 2)
    assert.are.equal("hi", ask(sa, "pub sec hi"))
    assert.are.equal("hi", recv(sb))
    local bad = assert(testing.start { apps = { bp = APP },
      args = {"--backplane", "redis://:wrong@127.0.0.1:" .. r.port} })
    servers[#servers + 1] = bad
    assert.truthy(bad:wait_log("backplane: redis://127%.0%.0%.1:%d+ unreachable %(AUTH refused: [^)]+%)"))
    assert.is_nil(bad:stderr():find("wrong", 1, true)) -- the password is never logged
    local status, out = testing.capture(testing.quote(BIN) .. " publish --backplane " ..
      testing.quote(r:url()) .. " sec 'from cli'", 10)
    assert.are.equal(0, status, out)
    assert.are.equal("from cli", recv(sb))
    -- An ACL user that may subscribe but not publish: the node works
    -- locally, and the refusals are logged with their count.
    assert.are.equal("OK\n", (r:cli("ACL", "SETUSER", "bob", "on", ">pw", "~*", "&*", "+@all",
      "-publish")))
    local limited = assert(testing.start { apps = { bp = APP },
      args = {"--backplane", "redis://bob:pw@127.0.0.1:" .. r.port} })
    servers[#servers + 1] = limited
    local sl = assert(connect(limited, "/bp?sub=sec"))
    numsub(r, "sec", 3)
    assert.are.equal("refused", ask(sl, "pub sec refused"))
    assert.truthy(limited:wait_log("refused 1 PUBLISH%(es%), the last with: NOPERM"))
    assert.are.equal("n 1", recv(sl))
    assert.are.equal("to-bob", ask(sb, "pub sec to-bob"))
    assert.are.equal("n 1", recv(sb))
    assert.are.equal("to-bob", recv(sl)) -- bob may subscribe
    assert.are.equal("n 1", recv(sa)) -- what a had not read yet, then, since
    assert.are.equal("from cli", recv(sa)) -- "refused" never reached it, "to-bob"
    assert.are.equal("to-bob", recv(sa))
    stop(a, b, bad, limited)
  end)

  it("config: backplane = {...}, --backplane, and their mistakes", function()
    local r = start_redis()
    local s, err, stderr = testing.start { apps = { bp = APP },
      config = ("return { backplane = { redis = { %q }, prefix = 'app1:' } }"):format(r:url()) }
    assert(s, tostring(err) .. tostring(stderr))
    servers[#servers + 1] = s
    local ws = assert(connect(s, "/bp?sub=z"))
    wait_until("app1:z", function() return r:numsub("app1:z") == 1 end)
    assert.are.equal("1\n", (r:cli("PUBLISH", "app1:z", "prefixed")))
    assert.are.equal("prefixed", recv(ws))
    -- SIGHUP reads the config again: the backplane stays as it started.
    testing.write_file(s.dir .. "/config.lua",
      ("return { backplane = { redis = %q, prefix = 'app2:' } }"):format(r:url()))
    s:signal("HUP")
    assert.truthy(s:wait_log("SIGHUP: the backplane changed; it takes effect on restart"))
    assert.are.equal("1\n", (r:cli("PUBLISH", "app1:z", "still app1")))
    assert.are.equal("still app1", recv(ws))
    -- Without a backplane, moonport.backplane() is nil.
    local plain = assert(testing.start { apps = { bp = APP } })
    servers[#servers + 1] = plain
    assert.is_nil(stats(assert(connect(plain, "/bp"))))
    local q = testing.quote
    local status, out = testing.capture(q(BIN) .. " --backplane redis://h:99999 --port 0 x", 10)
    assert.are.equal(2, status)
    assert.truthy(out:find('bad Redis URL "redis://h:99999"', 1, true), out)
    for _, bad in ipairs({"backplane = { redis = 5 }", "backplane = { redis = {} }",
                          "backplane = { redis = 'redis://x', max_pending = 1 }",
                          "backplane = { reddis = 'redis://x' }", "backplane = 'redis://x'"}) do
      local dir = testing.temp_dir()
      testing.write_file(dir .. "/c.lua", "return { apps = '.', " .. bad .. " }")
      status, out = testing.capture(q(BIN) .. " --config " .. q(dir .. "/c.lua") .. " --port 0", 10)
      testing.run("rm -rf " .. q(dir))
      assert.are.equal(1, status, bad)
      assert.truthy(out:find("backplane", 1, true), out)
    end
  end)
end)
