-- Topics (README "Topics"): ws:subscribe, ws:unsubscribe, ws:subscribed,
-- ws:topics, ws:publish, moonport.publish and moonport.subscribers through
-- the real binary. Many topics and subscribers; order against ws:send;
-- publishes from on_connect, on_close and a timer; subscribers dropped for
-- limits.max_send_buffer in the middle of a fan-out; subscriptions across
-- hot reload; misuse; compressed and plain subscribers of one topic, checked
-- by a raw client (spec/support/topics_client.py), python3-websockets and
-- node ws; and memory that stays flat after 100,000 subscribe/unsubscribe
-- cycles and after 10,000 connections in 10 topics each have closed.
-- Unsubscribing in the middle of a fan-out, which no Lua code can do (a
-- fan-out runs no Lua), is covered by spec/c/test_topic.c.
local testing = require "moonport.testing"
local socket = require "socket"

local APP = [[
local moonport = require "moonport"
local app = {}
local by_id = {}      -- for the "dropmid" case only
local in_handler = false
local closes = {}     -- what on_close saw, for "closes"

local function split(s)
  local t = {}
  for w in (s or ""):gmatch("[^,]+") do t[#t + 1] = w end
  return t
end

function app.on_connect(ws, req)
  by_id[ws.id] = ws
  for _, t in ipairs(split(req.args.sub)) do assert(ws:subscribe(t) == true) end
  if req.args.hello then
    ws.data.hello_n = moonport.publish(req.args.hello, "hello from " .. ws.id)
  end
  if req.args.bye then ws.data.bye = req.args.bye end
end

function app.on_message(ws, data, kind)
  in_handler = true
  local cmd, a, b = data:match("^(%S+) ?(%S*) ?(.*)$")
  if cmd == "sub" then
    ws:send("sub " .. tostring(ws:subscribe(a)))
  elseif cmd == "unsub" then
    ws:send("unsub " .. tostring(ws:unsubscribe(a)))
  elseif cmd == "subscribed" then
    ws:send("subscribed " .. tostring(ws:subscribed(a)))
  elseif cmd == "topics" then
    local t = ws:topics()
    table.sort(t)
    ws:send("topics " .. table.concat(t, ","))
  elseif cmd == "count" then
    ws:send("count " .. moonport.subscribers(a))
  elseif cmd == "pub" then
    local n = moonport.publish(a, b, kind)
    ws:send("n " .. n)
  elseif cmd == "wspub" then
    local n = ws:publish(a, b, kind)
    ws:send("n " .. n)
  elseif cmd == "hello_n" then
    ws:send("hello_n " .. tostring(ws.data.hello_n))
  elseif cmd == "order" then
    -- ws is subscribed to a: sends and publishes interleave in order.
    for i = 1, 5 do
      ws:send("send " .. i)
      moonport.publish(a, "pub " .. i)
    end
  elseif cmd == "many" then
    -- a published to b times in one handler
    for i = 1, tonumber(b) do moonport.publish(a, "m " .. i) end
  elseif cmd == "timer" then
    moonport.after(0.05, function() moonport.publish(a, "from a timer: " .. b) end)
  elseif cmd == "dropmid" then
    -- Every other subscriber of a already holds most of max_send_buffer
    -- (32 KiB here): the publish pushes those over and drops them in the
    -- middle of the fan-out; the others get it. on_close of the dropped
    -- ones must wait until this handler returns.
    local big = string.rep("x", 30000)
    for id, peer in pairs(by_id) do
      if id ~= ws.id and id % 2 == 1 and peer:subscribed(a) then peer:send(big, "binary") end
    end
    local n = moonport.publish(a, string.rep("y", 4000))
    ws:send("n " .. n .. " left " .. moonport.subscribers(a))
  elseif cmd == "flood" then
    -- one message over max_send_buffer: every subscriber is dropped
    local n = moonport.publish(a, string.rep("z", 40000), "binary")
    ws:send("n " .. n .. " left " .. moonport.subscribers(a))
  elseif cmd == "gc" then
    collectgarbage("collect")
    collectgarbage("collect")
    ws:send("gc done")
  elseif cmd == "closes" then
    ws:send("closes " .. table.concat(closes, ","))
  elseif cmd == "cycle" then
    for i = 1, tonumber(a) do
      local t = "cycle/" .. (i % 1000)
      ws:subscribe(t)
      ws:unsubscribe(t)
    end
    ws:send("cycled " .. #ws:topics())
  elseif cmd == "closed" then
    -- after ws:close, the methods say so
    ws:close(1000)
    local r = {}
    for _, m in ipairs { "subscribe", "unsubscribe", "subscribed", "publish" } do
      local v, err = ws[m](ws, "t", "x")
      r[#r + 1] = m .. "=" .. tostring(v) .. "/" .. tostring(err)
    end
    moonport.log("info", "after close: " .. table.concat(r, " "))
  elseif cmd == "misuse" then
    local tests = {
      function() ws:subscribe() end,
      function() ws:subscribe("") end,
      function() ws:subscribe(string.rep("t", 257)) end,
      function() ws:unsubscribe({}) end,
      function() ws:subscribed(nil) end,
      function() ws:publish("t") end,
      function() ws:publish("t", "x", "json") end,
      function() ws:publish("t", "\255", "text") end,
      function() moonport.publish("", "x") end,
      function() moonport.publish("t", {}, "text") end,
      function() moonport.subscribers(false) end,
      function() ws.subscribe(42, "t") end,
    }
    local out = {}
    for i, f in ipairs(tests) do
      local ok, err = pcall(f)
      out[#out + 1] = ok and "no error" or err
    end
    ws:send(table.concat(out, "\n"))
    ws:send("max " .. tostring(ws:subscribe(string.rep("t", 256))))
  end
  in_handler = false
end

function app.on_close(ws, code)
  closes[#closes + 1] = ws.id .. ":" .. tostring(in_handler)
  by_id[ws.id] = nil
  if ws.data.bye then
    local n = moonport.publish(ws.data.bye, "bye from " .. ws.id)
    moonport.log("info", "bye published to " .. n .. " subscribed=" .. tostring(ws:subscribed(ws.data.bye)))
  end
end

return app
]]

local function recv_text(ws, timeout)
  local data, kind = ws:receive_message(timeout or 5)
  return data, kind
end

local function cmd(ws, line, timeout)
  ws:send(line)
  return (recv_text(ws, timeout))
end

describe("topics", function()
  local server
  setup(function()
    server = assert(testing.start {
      apps = { topics = APP },
      config = [[return { apps = "apps", limits = { send_buffer = 16384, max_send_buffer = 32768 } }]],
    })
  end)
  teardown(function() server:cleanup() end)

  local function connect(query)
    return assert(server:connect("/topics" .. (query and ("?" .. query) or "")))
  end

  it("subscribes, lists, checks and unsubscribes", function()
    local ws = connect()
    assert.are.equal("sub true", cmd(ws, "sub news"))
    assert.are.equal("sub false", cmd(ws, "sub news"))
    assert.are.equal("sub true", cmd(ws, "sub sport"))
    assert.are.equal("topics news,sport", cmd(ws, "topics"))
    assert.are.equal("subscribed true", cmd(ws, "subscribed news"))
    assert.are.equal("subscribed false", cmd(ws, "subscribed weather"))
    assert.are.equal("count 1", cmd(ws, "count news"))
    assert.are.equal("unsub true", cmd(ws, "unsub news"))
    assert.are.equal("unsub false", cmd(ws, "unsub news"))
    assert.are.equal("topics sport", cmd(ws, "topics"))
    assert.are.equal("count 0", cmd(ws, "count news"))
    ws:close()
  end)

  it("delivers to every subscriber of many topics, and only to them, with the kind kept", function()
    local subs = {}
    for i = 1, 30 do
      -- connection i is in topics t(i mod 3) and t(i mod 5 + 10)
      subs[i] = connect("sub=t" .. (i % 3) .. ",t" .. (i % 5 + 10))
    end
    local pub = connect()
    assert.are.equal("count 10", cmd(pub, "count t0"))
    assert.are.equal("count 6", cmd(pub, "count t12"))
    assert.are.equal("n 10", cmd(pub, "pub t1 for one"))
    assert.are.equal("n 6", cmd(pub, "pub t12 for twelve"))
    assert.are.equal("n 0", cmd(pub, "pub nobody nothing"))
    pub:send_frame { opcode = 2, payload = "pub t0 \0\1binary" }
    assert.are.equal("n 10", (recv_text(pub)))
    for i = 1, 30 do
      local want = {}
      if i % 3 == 1 then want[#want + 1] = "for one" end
      if i % 5 + 10 == 12 then want[#want + 1] = "for twelve" end
      if i % 3 == 0 then want[#want + 1] = "\0\1binary" end
      for _, w in ipairs(want) do
        local got, kind = recv_text(subs[i])
        assert.are.equal(w, got)
        assert.are.equal(w:sub(1, 1) == "\0" and "binary" or "text", kind)
      end
      -- nothing more arrives for it
      subs[i]:send("count t0")
      assert.are.equal("count 10", (recv_text(subs[i])))
    end
    for i = 1, 30 do subs[i]:close() end
    pub:close()
  end)

  it("ws:publish skips the publisher; moonport.publish does not", function()
    local a, b = connect("sub=room"), connect("sub=room")
    assert.are.equal("n 1", cmd(a, "wspub room hi from a"))
    assert.are.equal("hi from a", (recv_text(b)))
    a:send("pub room to all")
    -- a gets the published message and its reply, in the order they were queued
    assert.are.equal("to all", (recv_text(a)))
    assert.are.equal("n 2", (recv_text(a)))
    assert.are.equal("to all", (recv_text(b)))
    a:close()
    b:close()
  end)

  it("keeps the order of publishes and sends to one connection", function()
    local ws = connect("sub=ord")
    ws:send("order ord")
    for i = 1, 5 do
      assert.are.equal("send " .. i, (recv_text(ws)))
      assert.are.equal("pub " .. i, (recv_text(ws)))
    end
    local other = connect("sub=ord")
    ws:send("many ord 200")
    for i = 1, 200 do
      assert.are.equal("m " .. i, (recv_text(other)))
      assert.are.equal("m " .. i, (recv_text(ws)))
    end
    ws:close()
    other:close()
  end)

  it("publishes from on_connect after the 101, reaching the new connection too", function()
    local a = connect("sub=lobby")
    local b = connect("sub=lobby&hello=lobby")
    -- b subscribed before it published: both get it; b gets it right after the 101
    local msg = recv_text(b)
    assert.matches("^hello from %d+$", msg)
    assert.are.equal(msg, (recv_text(a)))
    assert.are.equal("hello_n 2", cmd(b, "hello_n"))
    a:close()
    b:close()
  end)

  it("ends subscriptions before on_close, so its publish does not reach the closing connection", function()
    local stay = connect("sub=exit")
    local leaving = connect("sub=exit&bye=exit")
    local id = cmd(leaving, "count exit")
    assert.are.equal("count 2", id)
    leaving:close()
    local msg = recv_text(stay)
    assert.matches("^bye from %d+$", msg)
    assert(server:wait_log("bye published to 1 subscribed=%a+", 5))
    assert.is_nil(server:stderr():find("bye published to %d+ subscribed=true"))
    assert.are.equal("count 1", cmd(stay, "count exit"))
    stay:close()
  end)

  it("publishes from a moonport.after timer", function()
    local ws = connect("sub=tick")
    ws:send("timer tick now")
    assert.are.equal("from a timer: now", (recv_text(ws)))
    ws:close()
  end)

  it("drops subscribers over limits.max_send_buffer in the middle of a fan-out, on_close after the handler", function()
    local subs = {}
    for i = 1, 12 do subs[i] = connect("sub=slow") end
    local pub = connect()
    local got = cmd(pub, "dropmid slow", 10)
    local n, left = got:match("^n (%d+) left (%d+)$")
    assert.truthy(n, got)
    -- odd ids were dropped, even ones got it; whatever the split, they add up
    assert.are.equal(n, left)
    assert.is_true(tonumber(n) > 0 and tonumber(n) < 12, got)
    local delivered = 0
    for i = 1, 12 do
      local data = subs[i]:receive_message(5)
      if data == string.rep("y", 4000) then delivered = delivered + 1 end
    end
    assert.are.equal(tonumber(n), delivered)
    -- every on_close ran outside the publishing handler
    local closes = cmd(pub, "closes")
    assert.is_nil(closes:find("true", 1, true), closes)
    assert(server:wait_log("over limits.max_send_buffer", 5))
    -- one message over max_send_buffer drops every subscriber, and the topic goes
    local all = {}
    for i = 1, 5 do all[i] = connect("sub=flood") end
    assert.are.equal("n 0 left 0", cmd(pub, "flood flood"))
    for i = 1, 5 do assert.is_true(all[i]:is_closed(5)) end
    assert.are.equal("count 0", cmd(pub, "count flood"))
    for i = 1, 12 do subs[i]:close() end
    pub:close()
    assert.is_true(server:alive())
  end)

  it("returns nil, \"closed\" once the connection is closed", function()
    local ws = connect("sub=t")
    ws:send("closed")
    -- closing: no new subscription, no publish (as ws:send); leaving still works
    assert(server:wait_log("after close: ", 5), server:stderr())
    assert.matches("after close: subscribe=nil/closed unsubscribe=true/nil "
      .. "subscribed=false/nil publish=nil/closed", server:stderr(), 1, true)
  end)

  it("raises on misuse, naming the method", function()
    local ws = connect()
    local errs = cmd(ws, "misuse")
    local want = {
      "bad argument #1 to 'ws:subscribe' (string expected, got no value)",
      "bad argument #1 to 'ws:subscribe' (a topic is a string of 1 to 256 bytes)",
      "bad argument #1 to 'ws:subscribe' (a topic is a string of 1 to 256 bytes)",
      "bad argument #1 to 'ws:unsubscribe' (string expected, got table)",
      "bad argument #1 to 'ws:subscribed' (string expected, got nil)",
      "bad argument #2 to 'ws:publish' (string expected, got no value)",
      "bad argument #3 to 'ws:publish' (kind must be \"text\" or \"binary\")",
      "bad argument #2 to 'ws:publish' (text is not valid UTF-8 (send it as \"binary\"))",
      "bad argument #1 to 'moonport.publish' (a topic is a string of 1 to 256 bytes)",
      "bad argument #2 to 'moonport.publish' (string expected, got table)",
      "bad argument #1 to 'moonport.subscribers' (string expected, got boolean)",
      "calling 'ws:subscribe' on bad self (ws expected, got number",
    }
    local i = 0
    for line in (errs .. "\n"):gmatch("(.-)\n") do
      i = i + 1
      assert.matches("topics.lua:%d+: ", line)
      assert.is_truthy(line:find(want[i], 1, true), "got: " .. line .. "\nwant: " .. want[i])
    end
    assert.are.equal(#want, i)
    assert.are.equal("max true", (recv_text(ws)))
    ws:close()
  end)

  it("keeps subscriptions across a hot reload of the app", function()
    local a = connect("sub=keep,other")
    local b = connect("sub=keep")
    local v2 = APP:gsub('ws:send%("count " %.%. moonport%.subscribers%(a%)%)',
      'ws:send("v2 count " .. moonport.subscribers(a))')
    assert.are_not.equal(APP, v2)
    server:write_app("topics", v2)
    assert(server:wait_log("reload topics %(.-%) v2", 10))
    assert.are.equal("v2 count 2", cmd(a, "count keep"))
    assert.are.equal("topics keep,other", cmd(a, "topics"))
    assert.are.equal("n 1", cmd(b, "wspub keep after reload"))
    assert.are.equal("after reload", (recv_text(a)))
    server:write_app("topics", APP)
    assert(server:wait_log("reload topics %(.-%) v3", 10))
    a:close()
    b:close()
  end)

  describe("compression", function()
    it("gives one topic's compressed and plain subscribers frames they can read (raw client, python3-websockets)", function()
      local status, out = testing.capture("/usr/bin/python3 spec/support/topics_client.py "
        .. server.port .. " /topics", 60)
      assert.are.equal(0, status, out)
      assert.matches("topics_client: 0 failed", out, 1, true)
    end)

    it("and to node ws clients with and without permessage-deflate", function()
      local nodepath = ((os.getenv("NODE_PATH") or "") ~= "" and os.getenv("NODE_PATH") .. ":" or "")
        .. "/usr/share/nodejs"
      local status, out = testing.capture("env NODE_PATH=" .. testing.quote(nodepath)
        .. " node spec/support/topics_client.js " .. server.port .. " /topics", 60)
      assert.are.equal(0, status, out)
      assert.matches("topics_client.js: all checks passed", out, 1, true)
    end)
  end)

  it("delivers small and large publishes, by copy and by reference, over ws:// and wss://", function()
    local function check(srv)
      local subs = {}
      for i = 1, 5 do subs[i] = assert(srv:connect("/topics?sub=big")) end
      local pub = assert(srv:connect("/topics"))
      local big = string.rep("0123456789abcdef", 1024) -- 16 KiB: queued by reference
      for _, m in ipairs { "small one", big, "small two", big .. "!", "small three" } do
        pub:send("pub big " .. m)
        assert.are.equal("n 5", (pub:receive_message(5)))
      end
      for i = 1, 5 do
        for _, m in ipairs { "small one", big, "small two", big .. "!", "small three" } do
          assert.are.equal(m, (subs[i]:receive_message(5)))
        end
        subs[i]:close()
      end
      pub:close()
    end
    check(server)
    local dir = testing.temp_dir()
    local cert, key = testing.make_cert(dir, "topics")
    local tls = assert(testing.start {
      apps = { topics = APP },
      tls = { cert = cert, key = key },
    })
    check(tls)
    tls:cleanup()
    os.execute("rm -rf " .. testing.quote(dir))
  end)

  describe("with timeouts.publish_delay", function()
    -- Published output may wait up to 0.2 s for more, to leave in fewer
    -- writes; anything else queued for the connection takes it along.
    local plain
    setup(function()
      plain = server
      server = assert(testing.start {
        apps = { topics = APP },
        config = [[return { apps = "apps", timeouts = { publish_delay = 0.2 } }]],
      })
    end)
    teardown(function()
      server:cleanup()
      server = plain
    end)

    it("delivers every publish, in order, also between ws:sends", function()
      local a, b = connect("sub=d"), connect("sub=d")
      a:send("many d 50")
      for i = 1, 50 do
        assert.are.equal("m " .. i, (recv_text(b)))
        assert.are.equal("m " .. i, (recv_text(a)))
      end
      a:send("order d")
      for i = 1, 5 do
        assert.are.equal("send " .. i, (recv_text(a)))
        assert.are.equal("pub " .. i, (recv_text(a)))
        assert.are.equal("pub " .. i, (recv_text(b)))
      end
      a:close()
      b:close()
    end)

    it("copes with subscribers that go away while their output waits", function()
      local subs = {}
      for i = 1, 20 do subs[i] = connect("sub=gone") end
      local pub = connect()
      pub:send("pub gone bye")
      assert.are.equal("n 20", (recv_text(pub)))
      for i = 1, 20, 2 do subs[i]:shutdown() end -- gone before the 0.2 s
      for i = 2, 20, 2 do assert.are.equal("bye", (recv_text(subs[i]))) end
      testing.sleep(0.3)
      assert.are.equal("count 10", cmd(pub, "count gone"))
      for i = 2, 20, 2 do subs[i]:close() end
      pub:close()
      assert.is_true(server:alive())
    end)
  end)

  describe("memory", function()
    -- A server of its own: under ASan, freed memory sits in a quarantine
    -- (256 MiB by default) and would read as growth, so none here. Other
    -- binaries ignore the variable.
    local plain
    setup(function()
      plain = server
      server = assert(testing.start {
        apps = { topics = APP },
        config = [[return { apps = "apps", log = { access = false } }]],
        env = 'ASAN_OPTIONS="${ASAN_OPTIONS:-}:quarantine_size_mb=0"',
      })
    end)
    teardown(function()
      server:cleanup()
      server = plain
    end)

    it("stays flat over 100,000 subscribe/unsubscribe cycles", function()
      local ws = connect()
      assert.are.equal("cycled 0", cmd(ws, "cycle 100000", 60))
      local before = server:rss_kib()
      for _ = 1, 3 do
        assert.are.equal("cycled 0", cmd(ws, "cycle 100000", 60))
      end
      local grown = server:rss_kib() - before
      assert.is_true(grown < 1024, "RSS grew by " .. grown .. " KiB")
      ws:close()
    end)

    it("stays flat after 10,000 connections in 10 topics each have closed", function()
      -- The first rounds grow the heaps to what 10,000 connections need
      -- (Lua's and malloc's, which keep freed memory for reuse) and then
      -- RSS stays put; a leak would keep it growing by 100,000
      -- subscriptions (over 6 MiB) every round.
      local ws = connect()
      local function round()
        local status, out = testing.capture("/usr/bin/python3 spec/support/topics_many.py "
          .. server.port .. " /topics 10000", 180)
        assert.are.equal(0, status, out)
        assert.matches("10000 connected, 10000 got it, 10000 closed", out, 1, true)
        assert.are.equal("gc done", cmd(ws, "gc", 30))
        return server:rss_kib()
      end
      local rss = { round() }
      repeat
        rss[#rss + 1] = round()
      until rss[#rss] - rss[#rss - 1] < 2048 or #rss == 6
      assert.is_true(rss[#rss] - rss[#rss - 1] < 2048,
        "RSS after each round, KiB: " .. table.concat(rss, ", "))
      for k = 0, 9 do assert.are.equal("count 0", cmd(ws, "count many/" .. k)) end
      ws:close()
    end)
  end)
end)
