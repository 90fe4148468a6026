--[[ support.redis: a real redis-server for a spec, on a free port.

The backplane specs talk to a real Redis (Debian's redis-server), never to a
fake: this starts one without persistence, bound to 127.0.0.1, in a private
temporary directory, and stops it by its own pid (nothing else is killed).

  local redis = require "support.redis"
  local r = assert(redis.start())
  -- moonport ... --backplane r:url()
  assert(r:cli("PUBLISH", "moonport:news", "hello") == "0\n")
  r:stop()

redis.start(opts) -> r | nil, err, log_text
  opts (all optional):
    port     = a fixed port (default: a free one; if another process takes
               it before redis-server binds it, start tries a new one).
    password = requirepass: the server then wants AUTH (r:cli sends it).
    args     = { ... } more redis-server arguments ("--maxclients", "100").
    timeout  = seconds to wait for the server to answer PING (default 10).

The server object:
  .port .pid .dir (the temp dir) .password
  :url(db)                "redis://127.0.0.1:PORT" (with ":password@" when
                          it has one, percent-escaped, and "/db" when db is
                          given).
  :cli(args...)           runs `redis-cli -p PORT --raw args...` (each
                          argument passed as one word, never split by a
                          shell) and returns its output and exit status.
                          Killed after 5 s, so a paused server cannot hang
                          the spec (the status is then 137).
  :publish_bytes(channel, bytes) -> how many subscribers got it (a number),
                          or nil and the output: PUBLISH with any payload,
                          binary or with newlines (it goes through redis-cli
                          -x from a file, so no byte is changed).
  :numsub(channel)        -> PUBSUB NUMSUB's count for one channel.
  :channels(pattern)      -> sorted list of PUBSUB CHANNELS [pattern].
  :cpu_ticks()            -> utime + stime of the server so far, in clock
                          ticks (from /proc/PID/stat).
  :alive()                true while the process runs.
  :pause() / :resume()    SIGSTOP / SIGCONT: a server that accepts nothing
                          and reads nothing, as a stuck Redis.
  :kill()                 SIGKILL, and waits until it is gone.
  :restart()              starts it again on the same port after :kill(),
                          waiting until it answers PING (as a Redis that
                          crashed and came back: with no subscriptions).
  :stop()                 SIGTERM (SIGCONT first, if paused); SIGKILL after
                          5 s; removes the temp dir. Safe to call twice.
  :log()                  what redis-server has written to its log.
]]

local socket = require "socket"
local testing = require "moonport.testing"

local quote, run, read_file = testing.quote, testing.run, testing.read_file

local redis = {}

local server = {}
server.__index = server

-- Another process may take a free port before redis-server does; start
-- then tries again.
local free_port = testing.free_port

-- Ask with RESP's PING over a plain socket (no process per try). A server
-- that wants a password answers -NOAUTH, which also says it is up.
local function answers_ping(port)
    local c = socket.tcp()
    c:settimeout(0.5)
    if not c:connect("127.0.0.1", port) then
        c:close()
        return false
    end
    c:send("*1\r\n$4\r\nPING\r\n")
    local line = c:receive("*l")
    c:close()
    return line == "+PONG" or (line ~= nil and line:find("^%-NOAUTH") ~= nil)
end

function server:exit_status()
    local rc = read_file(self.dir .. "/rc")
    if rc and rc:find("\n") then
        return tonumber(rc:match("%d+"))
    end
    return nil
end

function server:alive()
    if not self.dir or not self.pid or self:exit_status() then
        return false
    end
    return run("kill -0 " .. self.pid .. " 2>/dev/null")
end

function server:log()
    return read_file(self.dir .. "/redis.log") or ""
end

-- Start redis-server on self.port in the background; its pid and, once it
-- exits, its status land in files of self.dir (the way moonport.testing
-- runs the server). Returns true once it answers PING, or nil and why.
function server:launch(timeout)
    os.remove(self.dir .. "/pid")
    os.remove(self.dir .. "/rc")
    local argv = {"redis-server", "--port", tostring(self.port), "--bind", "127.0.0.1",
        "--save", "''", "--appendonly", "no", "--daemonize", "no", "--dir", quote(self.dir),
        "--logfile", quote(self.dir .. "/redis.log")}
    if self.password then
        argv[#argv + 1] = "--requirepass"
        argv[#argv + 1] = quote(self.password)
    end
    for _, a in ipairs(self.args) do
        argv[#argv + 1] = quote(a)
    end
    local d = quote(self.dir)
    local inner = string.format("%s >>%s/redis.out 2>&1 </dev/null & echo $! >%s/pid.tmp; " ..
        "mv %s/pid.tmp %s/pid; wait $!; echo $? >%s/rc.tmp; mv %s/rc.tmp %s/rc",
        table.concat(argv, " "), d, d, d, d, d, d, d)
    if not run("sh -c " .. quote(inner) .. " >/dev/null 2>&1 </dev/null &") then
        return nil, "cannot run sh"
    end
    local deadline = socket.gettime() + (timeout or 10)
    self.pid = nil
    while true do
        self.pid = self.pid or tonumber(read_file(self.dir .. "/pid") or "")
        if self:exit_status() then
            return nil, "redis-server exited with status " .. self:exit_status()
        end
        if self.pid and answers_ping(self.port) then
            self.paused = false
            return true
        end
        if socket.gettime() > deadline then
            if self.pid then
                run("kill -KILL " .. self.pid .. " 2>/dev/null")
            end
            return nil, "redis-server did not answer PING on port " .. self.port
        end
        socket.sleep(0.02)
    end
end

function redis.start(opts)
    opts = opts or {}
    if not run("command -v redis-server >/dev/null 2>&1") then
        return nil, "no redis-server (sh .ci/deps test installs it)", ""
    end
    local self = setmetatable({dir = testing.temp_dir(), password = opts.password,
        args = opts.args or {}, timeout = opts.timeout}, server)
    local tries = opts.port and 1 or 5
    local ok, err
    for _ = 1, tries do
        self.port = opts.port or free_port()
        ok, err = self:launch(opts.timeout)
        if ok then
            return self
        end
        -- Taken between free_port and the bind: try another port.
        if not self:log():find("Address already in use") then
            break
        end
    end
    local log = self:log() .. (read_file(self.dir .. "/redis.out") or "")
    run("rm -rf " .. quote(self.dir))
    return nil, err, log
end

-- Characters other than unreserved ones are percent-escaped in the password.
local function escape(s)
    return (s:gsub("[^%w%-%._~]", function(c)
        return string.format("%%%02X", c:byte())
    end))
end

function server:url(db)
    local auth = self.password and (":" .. escape(self.password) .. "@") or ""
    return "redis://" .. auth .. "127.0.0.1:" .. self.port .. (db and ("/" .. db) or "")
end

local function cli_prefix(self)
    local cmd = "redis-cli -p " .. self.port
    if self.password then
        cmd = cmd .. " --no-auth-warning -a " .. quote(self.password)
    end
    return cmd .. " --raw"
end

-- testing.capture returns (status, output); cli returns (output, status).
function server:cli(...)
    local words = {}
    for i = 1, select("#", ...) do
        words[#words + 1] = quote(tostring((select(i, ...))))
    end
    local status, out = testing.capture(cli_prefix(self) .. " " .. table.concat(words, " "), 5)
    return out, status
end

function server:publish_bytes(channel, bytes)
    local file = self.dir .. "/payload"
    testing.write_file(file, bytes)
    local status, out = testing.capture(cli_prefix(self) .. " -x PUBLISH " .. quote(channel) ..
        " <" .. quote(file), 5)
    local n = status == 0 and tonumber(out:match("^(%d+)%s*$"))
    if n then
        return n
    end
    return nil, out
end

function server:numsub(channel)
    local out = self:cli("PUBSUB", "NUMSUB", channel)
    -- --raw prints the channel, then its count, one per line.
    local n = out:match("\n(%d+)%s*$")
    return tonumber(n)
end

function server:channels(pattern)
    local out = pattern and self:cli("PUBSUB", "CHANNELS", pattern) or self:cli("PUBSUB", "CHANNELS")
    local list = {}
    for line in out:gmatch("[^\n]+") do
        list[#list + 1] = line
    end
    table.sort(list)
    return list
end

function server:cpu_ticks()
    local stat = read_file("/proc/" .. self.pid .. "/stat")
    if not stat then
        return nil
    end
    -- Fields after the ")" that ends the command name: state is field 3,
    -- utime field 14 and stime field 15.
    local rest = stat:match("%)%s+(.*)$")
    local f = {}
    for w in rest:gmatch("%S+") do
        f[#f + 1] = w
    end
    return tonumber(f[12]) + tonumber(f[13])
end

function server:pause()
    assert(self:alive(), "redis-server is not running")
    run("kill -STOP " .. self.pid)
    self.paused = true
end

function server:resume()
    run("kill -CONT " .. self.pid)
    self.paused = false
end

-- Wait up to 5 s for the wrapper to record the exit.
local function wait_exit(self)
    local deadline = socket.gettime() + 5
    while socket.gettime() < deadline do
        if self:exit_status() then
            return true
        end
        socket.sleep(0.02)
    end
    return false
end

function server:kill()
    if self:alive() then
        run("kill -KILL " .. self.pid)
        wait_exit(self)
    end
    self.paused = false
end

function server:restart()
    assert(not self:alive(), "redis-server still runs: kill() or stop() it first")
    local ok, err = self:launch(self.timeout)
    assert(ok, err)
    return self
end

function server:stop()
    if not self.dir then
        return
    end
    if self:alive() then
        if self.paused then
            self:resume()
        end
        run("kill -TERM " .. self.pid)
        if not wait_exit(self) then
            run("kill -KILL " .. self.pid)
            wait_exit(self)
        end
    end
    run("rm -rf " .. quote(self.dir))
    self.dir = nil
end

return redis
