-- Workers (README "Workers"): moonport --workers N through the real binary,
-- with 2 and with 3 workers (so nothing assumes two). Where a connection
-- runs is asked of the app (moonport.worker), never guessed: connections
-- spread over the workers, topics reach subscribers in every worker in the
-- order each publisher published (small and multi-packet messages), apps/
-- chat.lua works unchanged across workers, an edit reloads in every worker
-- with one log line and a broken edit changes none, limits.max_connections
-- holds for the whole server, SIGTERM closes every connection with 1001 and
-- exits 0, a worker killed with SIGKILL is logged with its connections
-- and replaced, a stopped worker never blocks a publish in another (past
-- its queue, drops are logged with a count), a killed master takes its
-- workers with it, and wss:// works in every worker. One worker (the
-- default) runs no master at all.
local testing = require "moonport.testing"
local socket = require "socket"

local WHERE = [[
local moonport = require "moonport"
local VERSION = "v1"
local app = {}
function app.on_connect(ws, req)
  if req.args.sub then ws:subscribe(req.args.sub) end
end
function app.on_message(ws, data)
  local cmd, a, b = data:match("^(%S+) ?(%S*) ?(.*)$")
  if cmd == "where" then
    ws:send("worker " .. moonport.worker .. " of " .. moonport.workers)
  elseif cmd == "version" then
    ws:send(VERSION .. " in " .. moonport.worker)
  elseif cmd == "pub" then
    ws:send("n " .. moonport.publish(a, b))
  elseif cmd == "burst" then
    -- b numbered messages; every tenth is 100 KB and more, which travels
    -- between workers in several packets.
    for i = 1, tonumber(b) do
      if i % 10 == 0 then
        moonport.publish(a, i .. " " .. string.rep("x", 100000 + i))
      else
        moonport.publish(a, i .. " small")
      end
    end
    ws:send("done")
  elseif cmd == "bigburst" then
    for i = 1, tonumber(b) do moonport.publish(a, i .. " " .. string.rep("z", 1048576)) end
    ws:send("done")
  end
end
return app
]]

-- chat.lua as shipped, with one more command to ask where it runs.
-- The close frame's code, without waiting for the server to end the TCP
-- connection: it waits timeouts.close for an answering close frame, which
-- these tests do not send (they shut the socket instead).
local function close_code(ws, timeout)
  local deadline = socket.gettime() + timeout
  while true do
    local f, err = ws:receive(math.max(0, deadline - socket.gettime()))
    if not f then return nil, err end
    if f.opcode == 8 then return f.code end
  end
end

local CHATW = [[
local moonport = require "moonport"
local chat = require "chat"
local app = {}
for k, v in pairs(chat) do app[k] = v end
function app.on_message(ws, data, kind)
  if data == "/where" then return ws:send("worker " .. moonport.worker) end
  return chat.on_message(ws, data, kind)
end
return app
]]

local function start(n, opts)
  opts = opts or {}
  opts.apps = opts.apps or { where = WHERE }
  opts.args = opts.args or {}
  table.insert(opts.args, 1, "--workers")
  table.insert(opts.args, 2, tostring(n))
  local server, err, stderr = testing.start(opts)
  assert(server, tostring(err) .. "\n" .. tostring(stderr))
  return server
end

local function ask(ws, question)
  assert(ws:send(question))
  local answer, err = ws:receive_message(10)
  assert(answer, "no answer to " .. question .. ": " .. tostring(err))
  return answer
end

local function worker_of(ws)
  return tonumber(ask(ws, "where"):match("^worker (%d+)"))
end

-- A connection to path that runs in worker k: connections land where the
-- kernel puts them, so connect until one lands there (others are closed).
local function on_worker(server, k, path)
  for _ = 1, 300 do
    local ws = assert(server:connect(path))
    if worker_of(ws) == k then
      return ws
    end
    ws:close(1000)
    ws:shutdown()
  end
  error("no connection landed on worker " .. k)
end

local function read_all(path)
  local f = io.open(path, "rb")
  if not f then return "" end
  local s = f:read("*a")
  f:close()
  return s
end

-- Whether pid runs (a zombie waiting for whoever adopted it does not).
local function running(pid)
  local status = read_all("/proc/" .. pid .. "/status")
  return status ~= "" and not status:match("State:%s*Z")
end

describe("workers", function()
  local server, stopped
  after_each(function()
    if stopped then -- a stopped worker would outlive the server
      testing.run("kill -CONT " .. stopped)
      stopped = nil
    end
    if server then
      server:cleanup()
      server = nil
    end
  end)

  it("one worker by default: no master, moonport.worker and .workers are 1", function()
    server = assert(testing.start { apps = { where = WHERE } })
    local ws = assert(server:connect("/where"))
    assert.are.equal("worker 1 of 1", ask(ws, "where"))
    assert.is_nil(server:stderr():find("worker 1 started", 1, true))
    assert.is_nil(server:stderr():find("[w1]", 1, true))
  end)

  it("refuses a bad --workers or workers = and takes auto", function()
    for _, bad in ipairs({ "0", "-1", "x", "257", "" }) do
      local status, out = testing.capture(testing.quote(os.getenv("MOONPORT_BIN") or "bin/moonport")
        .. " --workers " .. testing.quote(bad) .. " --port 0 apps", 10)
      assert.are.equal(2, status, bad)
      assert.truthy(out:find("--workers must be a number from 1 to 256 or auto", 1, true), out)
    end
    local s, err, stderr = testing.start { apps = { where = WHERE },
      config = [[return { apps = "apps", workers = "many" }]] }
    assert.is_nil(s)
    assert.truthy(stderr:find('workers must be a number from 1 to 256 or "auto", not "many"', 1, true),
      stderr)
    server = assert(testing.start { apps = { where = WHERE },
      config = [[return { apps = "apps", workers = "auto" }]] })
    local n = tonumber(server:stderr():match("listening on %S+ %(1 routes, (%d+) workers%)") or
      (server:stderr():find("listening on %S+ %(1 routes%)") and "1"))
    assert.truthy(n and n >= 1, server:stderr())
    local ws = assert(server:connect("/where"))
    assert.are.equal("worker " .. worker_of(ws) .. " of " .. n, ask(ws, "where"))
  end)

  it("spreads 1,000 connections over 2 workers within 60/40", function()
    server = start(2)
    local conns, count = {}, { 0, 0 }
    for i = 1, 1000 do
      conns[i] = assert(server:connect("/where"))
    end
    for i = 1, 1000 do
      local k = worker_of(conns[i])
      count[k] = count[k] + 1
    end
    -- The kernel hashes each connection's addresses and ports: for 1,000
    -- connections, 600 or more on one worker is 6 standard deviations out.
    assert.is_true(count[1] >= 400 and count[2] >= 400, count[1] .. "/" .. count[2])
    assert.are.equal(1000, count[1] + count[2])
    -- Ids are unique in the whole server, not per worker.
    local ids = {}
    for id in read_all(server.dir .. "/stdout"):gmatch('"WSCONNECT /where" id=(%d+)') do
      assert.is_nil(ids[id], "id " .. id .. " twice")
      ids[id] = true
    end
    for i = 1, 1000 do
      conns[i]:shutdown()
    end
  end)

  for _, n in ipairs({ 2, 3 }) do
    describe("with " .. n .. " workers", function()
      it("delivers a publish to subscribers in every worker, in publish order", function()
        server = start(n)
        local subs = {}
        for k = 1, n do
          subs[k] = on_worker(server, k, "/where?sub=t")
        end
        -- From each worker, 1,000 numbered publishes: every subscriber, in
        -- every worker, gets them all, in order.
        for from = 1, n do
          local pub = on_worker(server, from, "/where")
          assert.are.equal("done", ask(pub, "burst t 1000"))
          for k = 1, n do
            for i = 1, 1000 do
              local msg, err = subs[k]:receive_message(10)
              assert(msg, "worker " .. k .. " message " .. i .. " from " .. from .. ": " .. tostring(err))
              local num = tonumber(msg:match("^(%d+) "))
              assert.are.equal(i, num)
              if i % 10 == 0 then
                assert.are.equal(#tostring(i) + 1 + 100000 + i, #msg)
              end
            end
          end
          pub:close(1000)
        end
        -- The count is of this worker's subscribers only (README).
        local pub = on_worker(server, 1, "/where")
        assert.are.equal("n 1", ask(pub, "pub t hello"))
        for k = 1, n do
          assert.are.equal("hello", (subs[k]:receive_message(10)))
        end
      end)

      it("runs apps/chat.lua unchanged across workers", function()
        local chat = read_all("apps/chat.lua")
        assert.truthy(#chat > 0)
        server = start(n, { apps = { chat = chat, chatw = CHATW } })
        local people = {}
        for k = 1, n do
          for _ = 1, 300 do
            local ws = assert(server:connect("/chatw?name=p" .. k))
            assert.are.equal("* p" .. k .. " joined", (ws:receive_message(10)))
            assert(ws:send("/where"))
            local answer
            repeat -- others' join and leave notices may come first
              answer = assert(ws:receive_message(10))
            until answer:sub(1, 2) ~= "* "
            if answer == "worker " .. k then
              people[k] = ws
              break
            end
            ws:close(1000)
            ws:shutdown()
          end
          assert.truthy(people[k], "no chat connection on worker " .. k)
        end
        -- Everyone sees everyone's message, whatever worker it runs in
        -- (skipping join and leave notices of the connections above).
        for k = 1, n do
          assert(people[k]:send("hello from " .. k))
        end
        for k = 1, n do
          local seen = {}
          while true do
            local msg = assert(people[k]:receive_message(10))
            local from = msg:match("^p(%d+): hello from")
            if from then
              seen[#seen + 1] = tonumber(from)
              if #seen == n then break end
            end
          end
          table.sort(seen)
          for i = 1, n do
            assert.are.equal(i, seen[i])
          end
        end
      end)

      it("reloads an edit in every worker with one log line; a broken edit changes none", function()
        server = start(n, { args = { "--log-level", "debug" } })
        local conns = {}
        for k = 1, n do
          conns[k] = on_worker(server, k, "/where")
          assert.are.equal("v1 in " .. k, ask(conns[k], "version"))
        end
        server:write_app("where", (WHERE:gsub('"v1"', '"v2"')))
        assert.truthy(server:wait_log("info  %[w1%] reload where %(%S+%) v2 ok in [%d.]+ ms %(file changed%) in "
          .. n .. " workers", 10), server:stderr())
        for k = 2, n do
          assert.truthy(server:wait_log("debug %[w" .. k .. "%] reload where %(%S+%) v2 ok", 10))
        end
        for k = 1, n do
          assert.are.equal("v2 in " .. k, ask(conns[k], "version"))
        end
        server:write_app("where", "return { on_message = function( }\n")
        assert.truthy(server:wait_log("error %[w1%] reload where %(%S+%) failed in [%d.]+ ms, v2 keeps serving in "
          .. n .. " workers: ", 10), server:stderr())
        for k = 2, n do
          assert.truthy(server:wait_log("debug %[w" .. k .. "%] reload where %(%S+%) failed", 10))
        end
        for k = 1, n do
          assert.are.equal("v2 in " .. k, ask(conns[k], "version"))
        end
        local log = server:stderr()
        assert.are.equal(1, testing.count(log, "info  %[w%d+%] reload where"))
        assert.are.equal(1, testing.count(log, "error %[w%d+%] reload where"))
      end)

      it("counts the workers a reload is live in: one that fails it is not one of them", function()
        server = start(n, { args = { "--log-level", "debug" } })
        local conns = {}
        for k = 1, n do
          conns[k] = on_worker(server, k, "/where")
        end
        -- v2 loads in every worker but the last: its reload fails there.
        local v2 = WHERE:gsub('"v1"', '"v2"'):gsub("local app = {}", "if moonport.worker == "
          .. n .. ' then error("not in worker ' .. n .. '") end\nlocal app = {}', 1)
        server:write_app("where", v2)
        local line = server:wait_log("error %[w1%] reload where %(%S+%) v2 ok in [%d.]+ ms %(file changed%) in "
          .. (n - 1) .. " of " .. n .. " workers %(1 failed, 0 did not answer%)", 10)
        assert.truthy(line, server:stderr())
        for k = 1, n - 1 do
          assert.are.equal("v2 in " .. k, ask(conns[k], "version"))
        end
        assert.are.equal("v1 in " .. n, ask(conns[n], "version"))
        assert.are.equal(0, testing.count(server:stderr(), "info  %[w%d+%] reload where"))
      end)

      for _, sig in ipairs({ "TERM", "INT" }) do
        it("closes every connection in every worker with 1001 on SIG" .. sig .. " and exits 0", function()
          server = start(n)
          local conns = {}
          for k = 1, n do
            conns[k] = on_worker(server, k, "/where")
          end
          assert.truthy(server:signal(sig))
          for k = 1, n do
            assert.are.equal(1001, (close_code(conns[k], 10)))
            conns[k]:shutdown()
          end
          assert.are.equal(0, server:wait(15))
          for k = 1, n do
            assert.truthy(server:stderr():find("[w" .. k .. "] SIG" .. sig .. ": closing", 1, true))
          end
          assert.truthy(server:stderr():find("[master] SIG" .. sig .. ": stopping " .. n .. " workers", 1, true),
                        server:stderr())
        end)
      end
    end)
  end

  it("serves wss:// from every worker", function()
    local dir = testing.temp_dir()
    local cert, key = testing.make_cert(dir, "w")
    local ok, err = pcall(function()
      server = start(2, { tls = { cert = cert, key = key } })
      assert.are.equal("wss", server.scheme)
      for k = 1, 2 do
        local ws = on_worker(server, k, "/where")
        assert.are.equal("worker " .. k .. " of 2", ask(ws, "where"))
      end
    end)
    os.execute("rm -rf " .. testing.quote(dir))
    assert(ok, err)
  end)

  it("holds limits.max_connections for the whole server", function()
    server = start(2, { config = [[return { apps = "apps", limits = { max_connections = 20 } }]] })
    local open, on = {}, { 0, 0 }
    for i = 1, 20 do
      open[i] = assert(server:connect("/where"))
      local k = worker_of(open[i])
      on[k] = on[k] + 1
    end
    -- Both workers hold some (all 20 in one: a chance of 2 in a million).
    assert.is_true(on[1] > 0 and on[2] > 0)
    for _ = 1, 10 do
      local ws, err = server:connect("/where")
      assert.is_nil(ws)
      assert.is_string(err)
    end
    assert.truthy(server:wait_log("refused %d+ connection%(s%): limits.max_connections %(20%) reached", 5))
    -- Closing three frees three slots, wherever they were.
    for i = 1, 3 do
      open[i]:close(1000)
      open[i]:expect_close(5)
      open[i]:shutdown()
    end
    local got = 0
    for _ = 1, 200 do
      local ws = server:connect("/where")
      if ws then
        got = got + 1
        open[#open + 1] = ws
        if got == 3 then break end
      else
        socket.sleep(0.02)
      end
    end
    assert.are.equal(3, got)
    local ws = server:connect("/where")
    assert.is_nil(ws)
  end)

  it("never blocks a publish on a stopped worker, and drops past its queue with a count", function()
    server = start(2)
    local pid = tonumber(server:stderr():match("worker 2 started %(pid (%d+)%)"))
    local pub = on_worker(server, 1, "/where")
    local w2 = on_worker(server, 2, "/where")
    assert.truthy(testing.run("kill -STOP " .. pid))
    stopped = pid
    -- 100 MiB for a worker that reads nothing: the publishing handler
    -- returns, its worker keeps serving, the excess is dropped and counted.
    assert.are.equal("done", ask(pub, "bigburst t 100"))
    assert.are.equal("worker 1 of 2", ask(pub, "where"))
    assert.truthy(server:wait_log("warn  %[w1%] publish to worker 2: %d+ message%(s%) dropped: "
      .. "the worker does not keep up", 10), server:stderr())
    assert.truthy(testing.run("kill -CONT " .. pid))
    stopped = nil
    -- Worker 2 catches up with what was queued, and the link works on.
    assert.are.equal(2, worker_of(w2))
    local sub = on_worker(server, 2, "/where?sub=u")
    assert.are.equal("n 0", ask(pub, "pub u after"))
    assert.are.equal("after", (sub:receive_message(20)))
  end)

  it("ends every worker, closing with 1001, when the master dies", function()
    server = start(2)
    local pids = {}
    for k = 1, 2 do
      pids[k] = tonumber(server:stderr():match("worker " .. k .. " started %(pid (%d+)%)"))
    end
    local conns = {}
    for k = 1, 2 do
      conns[k] = on_worker(server, k, "/where")
    end
    assert.truthy(server:signal("KILL"))
    for k = 1, 2 do
      assert.are.equal(1001, (close_code(conns[k], 10)))
      conns[k]:shutdown()
    end
    local gone = false
    for _ = 1, 200 do
      gone = not running(pids[1]) and not running(pids[2])
      if gone then break end
      socket.sleep(0.05)
    end
    assert.is_true(gone, "a worker outlived its master")
  end)

  it("logs a worker killed with SIGKILL, with its connections, and replaces it", function()
    server = start(2)
    local pid = tonumber(server:stderr():match("worker 2 started %(pid (%d+)%)"))
    assert.truthy(pid)
    local theirs = {}
    for i = 1, 3 do
      theirs[i] = on_worker(server, 2, "/where?sub=t")
    end
    local mine = on_worker(server, 1, "/where")
    local sub1 = on_worker(server, 1, "/where?sub=t")
    assert.truthy(testing.run("kill -KILL " .. pid))
    assert.truthy(server:wait_log("%[master%] worker 2 %(pid " .. pid .. "%) was killed by signal 9 [^;]*; "
      .. "3 connection%(s%) lost with it; starting another", 10), server:stderr())
    for i = 1, 3 do
      assert.truthy(theirs[i]:is_closed(5))
    end
    assert.truthy(server:wait_log("worker 2 serving again", 10), server:stderr())
    -- The new worker 2 takes connections and topics, and worker 1 never
    -- stopped.
    local fresh = on_worker(server, 2, "/where?sub=t")
    assert.are.equal("n 1", ask(mine, "pub t after"))
    assert.are.equal("after", (fresh:receive_message(10)))
    assert.are.equal("after", (sub1:receive_message(10)))
    assert.truthy(server:alive())
  end)
end)
