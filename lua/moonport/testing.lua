--[[ moonport.testing: starts a real moonport server for a spec.

It boots the binary on a free port with a temporary directory holding the
apps, the config and the server's logs, so specs talk to the server through
real sockets exactly as clients do. It never kills anything but the server
it started, by its pid.

  local testing = require "moonport.testing"
  local server = assert(testing.start { apps = { echo = ECHO_SOURCE } })

testing.start(opts) -> server | nil, err, stderr_text
  opts (all optional):
    apps     = { name = lua_source }: written to DIR/apps/name.lua, and
               DIR/apps is passed as the apps directory.
    apps_dir = an existing apps directory to serve instead.
    config   = Lua source of a config file, written to DIR/config.lua and
               passed with --config. Paths in it are relative to DIR, so the
               apps above are "apps/name.lua" for routes.
    files    = { relative_path = content }: more files to write under DIR.
    args     = { ... } extra command line arguments (before the apps dir).
    tls      = { cert = FILE, key = FILE }: serve wss:// with this PEM
               certificate chain and key (--tls-cert, --tls-key).
    bin      = the binary (default $MOONPORT_BIN; else the moonport installed
               next to this module: bin/moonport in the repository for
               lua/moonport/testing.lua, PREFIX/bin/moonport for
               PREFIX/share/lua/5.x/moonport/testing.lua, as luarocks and
               make install lay them out; else "moonport" from PATH).
    env      = a prefix of shell assignments, like "FOO=1 BAR=2".
    host     = the --host value (default "127.0.0.1"; false: no --host).
    port     = the --port value (default 0, a free port; false: no --port).
    timeout  = seconds to wait for "listening on ws://HOST:PORT" (or wss://;
               default 10).
  When neither apps nor apps_dir is given and there is no config, an empty
  DIR/apps is served. If the server exits, or does not say it listens
  within timeout (then it is killed), start returns nil, a reason, and what
  it wrote to stderr.

The server object:
  .host .port .pid .dir (the temp dir) .apps_dir
  .admin_port             the admin listener's port, when started with --admin
  .scheme                 "ws", or "wss" when the server said it serves TLS
  :stderr() :stdout()     what the server wrote so far (stdout is the
                          access log, stderr everything else).
  :alive()                true while the process runs.
  :signal(name)           sends a signal ("TERM", "HUP", "KILL", ...).
  :stop(timeout)          -> exit status: TERM, then waits up to timeout
                          (default 5 s); KILL if it is still running then, and
                          a second value "killed". A status above 128 means
                          death by signal 128 - status, as in the shell.
  :exit_status()          -> the status if the process has exited, else nil.
  :wait(timeout)          -> the status once it exits, or nil after timeout.
  :rss_kib()              VmRSS from /proc/PID/status, in KiB.
  :wait_log(pattern, timeout) -> the first match of a Lua pattern in stderr
                          or stdout, polled until timeout (default 5 s), or nil.
  :write_app(name, src)   writes APPS_DIR/name.lua.
  :admin(path, method, raw) testing.http to the admin listener (--admin).
  :connect(path, opts)    client.connect to this server (over TLS, trusting
                          opts.tls.cert, when it was started with tls).
  :request(raw, timeout)  client.request to this server (the same).
  :cleanup()              stops the server if it runs (TERM; a second TERM after
                          0.5 s drops clients that do not answer the drain's
                          close), removes DIR.

testing.sleep(seconds)
testing.read_file(path) -> contents, or nil if it cannot be read
testing.write_file(path, content)
testing.quote(s) -> s quoted for sh
testing.run(cmd) -> true if the shell command exited 0 (on Lua 5.1 to 5.4)
testing.capture(cmd, seconds) -> exit status, everything the command printed
                          (stdout and stderr); killed after seconds (default 90)
testing.temp_dir() -> a new private directory (the caller removes it)
testing.count(text, pattern) -> how many times a Lua pattern matches text
testing.http(port, path, method, raw) -> status, headers, body: one HTTP
                          request to 127.0.0.1:port (method: GET unless given; raw: bytes to send instead of
                          a request for path), read until the server closes.
                          Header names are lowercase.
testing.free_port() -> a TCP port of 127.0.0.1 nothing listens on right now
                          (another process may take it before the caller does)
testing.metric(text, sample) -> the value of one sample of a Prometheus
                          exposition, e.g. 'moonport_workers' or
                          'moonport_closes_total{code="1000",by="client"}', or nil.
testing.promtool_check(text) -> exit status and output of Debian's
                          `promtool check metrics` on an exposition
testing.metrics(server) -> the text of GET /metrics on the server's admin
                          port (started with --admin), checked to be 200
testing.eventually(fn, seconds) -> true once fn() is, polled until seconds
                          (default 5) have passed; then fn()'s last answer
testing.make_cert(dir, name) -> cert, key: a throwaway self-signed PEM pair
                          for localhost and 127.0.0.1, valid one day, made
                          with the openssl command as dir/NAME-cert.pem and
                          dir/NAME-key.pem (for start's tls option)
]]

local socket = require "socket"
local client = require "moonport.client"

local testing = {}

local unpack = rawget(table, "unpack") or rawget(_G, "unpack")

function testing.sleep(s)
    socket.sleep(s)
end

local function quote(s)
    return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

-- os.execute's result differs between Lua 5.1 (a number) and 5.2+.
local function run(cmd)
    local a, _, c = os.execute(cmd)
    if type(a) == "number" then
        return a == 0
    end
    return a == true and (c == nil or c == 0)
end

local function read_file(path)
    local f = io.open(path, "rb")
    if not f then
        return nil
    end
    local s = f:read("*a")
    f:close()
    return s
end

local function write_file(path, content)
    local f = assert(io.open(path, "wb"))
    assert(f:write(content))
    f:close()
end

local function capture(cmd, seconds)
    local p = assert(io.popen("timeout -s KILL " .. (seconds or 90) .. " " .. cmd ..
                              " 2>&1; echo \"exit=$?\""))
    local out = p:read("*a")
    p:close()
    local status = tonumber(out:match("exit=(%d+)%s*$"))
    return status, (out:gsub("exit=%d+%s*$", ""))
end

local function make_cert(dir, name)
    local cert, key = dir .. "/" .. name .. "-cert.pem", dir .. "/" .. name .. "-key.pem"
    local status, out = capture("openssl req -x509 -newkey rsa:2048 -nodes -days 1" ..
        " -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1" ..
        " -keyout " .. quote(key) .. " -out " .. quote(cert))
    assert(status == 0, "openssl req failed:\n" .. out)
    return cert, key
end

local function count(text, pattern)
    local n = 0
    for _ in text:gmatch(pattern) do
        n = n + 1
    end
    return n
end

local function dirname(path)
    return path:match("^(.*)/[^/]*$") or "."
end

-- The moonport that goes with this copy of the harness. A spec may run from
-- any directory (an app author's own), so a path relative to the current
-- directory will not do: look beside this file, where the repository and
-- both installs put the binary, then fall back to PATH.
local function default_bin()
    local source = debug.getinfo(1, "S").source
    if source:sub(1, 1) == "@" then
        -- lua/moonport/testing.lua -> lua; PREFIX/share/lua/5.x/moonport/testing.lua -> 5.x
        local lua_dir = dirname(dirname(source:sub(2)))
        for _, up in ipairs {"/..", "/../../.."} do
            local bin = lua_dir .. up .. "/bin/moonport"
            local f = io.open(bin, "rb")
            if f then
                f:close()
                return bin
            end
        end
    end
    return "moonport"
end

local function make_temp_dir()
    local p = io.popen("mktemp -d \"${TMPDIR:-/tmp}/moonport-spec.XXXXXX\" 2>/dev/null")
    local dir = p and p:read("*l")
    if p then
        p:close()
    end
    if dir and dir ~= "" then
        return dir
    end
    -- No mktemp: reuse the name of a fresh temp file.
    dir = os.tmpname()
    os.remove(dir)
    assert(run("mkdir -m 700 " .. quote(dir)), "cannot create a temp dir")
    return dir
end

-- Small file and shell helpers, shared with the specs.
testing.read_file = read_file
testing.write_file = write_file
testing.quote = quote
testing.run = run
testing.capture = capture
testing.temp_dir = make_temp_dir
testing.make_cert = make_cert
testing.count = count

function testing.http(port, path, method, raw)
    local c = assert(socket.connect("127.0.0.1", port))
    c:settimeout(10)
    assert(c:send(raw or ((method or "GET") .. " " .. path .. " HTTP/1.1\r\nHost: x\r\n\r\n")))
    local all = {}
    while true do
        local data, err, partial = c:receive(65536)
        local got = data or partial
        if got and #got > 0 then all[#all + 1] = got end
        if not data then
            assert(err == "closed", err)
            break
        end
    end
    c:close()
    local text = table.concat(all)
    local head, body = text:match("^(.-)\r\n\r\n(.*)$")
    assert(head, "no HTTP answer: " .. text)
    local headers = {}
    for name, value in head:gmatch("\r\n([^:]+): ([^\r]*)") do headers[name:lower()] = value end
    return tonumber(head:match("^HTTP/1%.1 (%d+)")), headers, body
end

function testing.free_port()
    local s = assert(socket.bind("127.0.0.1", 0))
    local _, port = s:getsockname()
    s:close()
    return tonumber(port)
end

function testing.metric(text, sample)
    for line in text:gmatch("[^\n]+") do
        if line:sub(1, #sample + 1) == sample .. " " then return tonumber(line:sub(#sample + 2)) end
    end
    return nil
end

local server = {}
server.__index = server

function server:stderr()
    return read_file(self.dir .. "/stderr") or ""
end

function server:stdout()
    return read_file(self.dir .. "/stdout") or ""
end

function server:exit_status()
    local rc = read_file(self.dir .. "/rc")
    -- The wrapper may still be writing the file: only a full line counts.
    if rc and rc:find("\n") then
        return tonumber(rc:match("%d+"))
    end
    return nil
end

function server:alive()
    if self:exit_status() then
        return false
    end
    return run("kill -0 " .. self.pid .. " 2>/dev/null")
end

function server:signal(name)
    return run("kill -" .. name .. " " .. self.pid .. " 2>/dev/null")
end

-- server:wait(timeout) -> the exit status once the process has exited, or
-- nil if it still runs after timeout seconds (default 5).
function server:wait(timeout)
    local deadline = socket.gettime() + (timeout or 5)
    repeat
        local status = self:exit_status()
        if status then
            return status
        end
        socket.sleep(0.02)
    until socket.gettime() > deadline
    return nil
end

function server:stop(timeout)
    local status = self:exit_status()
    if status then
        return status
    end
    self:signal("TERM")
    status = self:wait(timeout)
    if status then
        return status
    end
    self:signal("KILL")
    return self:wait(5), "killed"
end

function server:admin(path, method, raw)
    return testing.http(assert(self.admin_port, "started without --admin"), path, method, raw)
end

function server:rss_kib()
    local status = read_file("/proc/" .. self.pid .. "/status")
    return status and tonumber(status:match("VmRSS:%s*(%d+)"))
end

function server:wait_log(pattern, timeout)
    local deadline = socket.gettime() + (timeout or 5)
    repeat
        for _, text in ipairs {self:stderr(), self:stdout()} do
            local found = {text:match(pattern)}
            if found[1] then
                return unpack(found)
            end
        end
        socket.sleep(0.02)
    until socket.gettime() > deadline
    return nil
end

function server:write_app(name, source)
    if not name:match("%.lua$") then
        name = name .. ".lua"
    end
    write_file(self.apps_dir .. "/" .. name, source)
end

function server:connect(path, opts)
    if self.tls and not (opts and opts.tls) then
        local o = {tls = {cafile = self.tls.cert}}
        for k, v in pairs(opts or {}) do
            o[k] = v
        end
        opts = o
    end
    return client.connect(self.host, self.port, path, opts)
end

function server:request(raw, timeout)
    return client.request(self.host, self.port, raw, timeout,
        self.tls and {cafile = self.tls.cert} or nil)
end

function server:cleanup()
    if self.pid and self:alive() then
        -- A drain would wait timeouts.close for every client still open to
        -- answer its close frame; a test's idle clients never do, so after
        -- a moment a second TERM drops them (the exit stays clean).
        self:signal("TERM")
        if not self:wait(0.5) then
            self:signal("TERM")
        end
        self:stop()
    end
    if self.dir and self.owns_dir then
        run("rm -rf " .. quote(self.dir))
    end
    self.dir = nil
end

function testing.start(opts)
    opts = opts or {}
    local dir = make_temp_dir()
    local self = setmetatable({dir = dir, owns_dir = true, host = opts.host or "127.0.0.1",
        tls = opts.tls}, server)

    local apps_dir = opts.apps_dir
    if not apps_dir and (opts.apps or not opts.config) then
        apps_dir = dir .. "/apps"
        assert(run("mkdir " .. quote(apps_dir)))
        for name, source in pairs(opts.apps or {}) do
            write_file(apps_dir .. "/" .. name .. ".lua", source)
        end
    end
    self.apps_dir = apps_dir
    for path, content in pairs(opts.files or {}) do
        run("mkdir -p " .. quote(dirname(dir .. "/" .. path)))
        write_file(dir .. "/" .. path, content)
    end

    local argv = {quote(opts.bin or os.getenv("MOONPORT_BIN") or default_bin())}
    if opts.port ~= false then
        argv[#argv + 1] = "--port " .. quote(opts.port or 0)
    end
    if opts.host ~= false then
        argv[#argv + 1] = "--host " .. quote(opts.host or "127.0.0.1")
    end
    if opts.config then
        write_file(dir .. "/config.lua", opts.config)
        argv[#argv + 1] = "--config " .. quote(dir .. "/config.lua")
    end
    if opts.tls then
        argv[#argv + 1] = "--tls-cert " .. quote(opts.tls.cert)
        argv[#argv + 1] = "--tls-key " .. quote(opts.tls.key)
    end
    for _, arg in ipairs(opts.args or {}) do
        argv[#argv + 1] = quote(arg)
    end
    if apps_dir then
        argv[#argv + 1] = quote(apps_dir)
    end

    -- The inner shell starts the server in the background so that $! is the
    -- server's own pid (signals reach it, not a wrapper), waits for it and
    -- records its exit status; the outer os.execute returns at once.
    local d = quote(dir)
    local inner = string.format("%s %s >%s/stdout 2>%s/stderr </dev/null & echo $! >%s/pid.tmp; " ..
        "mv %s/pid.tmp %s/pid; wait $!; echo $? >%s/rc.tmp; mv %s/rc.tmp %s/rc",
        opts.env or "", table.concat(argv, " "), d, d, d, d, d, d, d, d)
    if not run("sh -c " .. quote(inner) .. " >/dev/null 2>&1 </dev/null &") then
        self:cleanup()
        return nil, "cannot run sh", ""
    end

    local deadline = socket.gettime() + (opts.timeout or 10)
    while not self.pid do
        self.pid = tonumber(read_file(dir .. "/pid") or "")
        if not self.pid then
            if socket.gettime() > deadline then
                self:cleanup()
                return nil, "the server was not started", ""
            end
            socket.sleep(0.01)
        end
    end

    while true do
        local err = self:stderr()
        local scheme, host, port = err:match("listening on (wss?)://(%S+):(%d+)")
        if port then
            self.scheme = scheme
            self.port = tonumber(port)
            self.admin_port = tonumber(err:match("admin listening on http://%S-:(%d+)/"))
            if opts.host ~= false then
                self.host = opts.host or "127.0.0.1"
            else
                self.host = host:match("^%[(.*)%]$") or host
            end
            return self
        end
        local status = self:exit_status()
        if status then
            err = self:stderr()
            self:cleanup()
            local why = "the server exited with status " .. status
            if status == 127 then -- the shell found no such command: say which
                why = why .. " (" .. argv[1] .. ": " ..
                    ((err:match("[^\n]*not found[^\n]*")) or "not found") .. ")"
            end
            return nil, why, err
        end
        if socket.gettime() > deadline then
            err = self:stderr()
            self:cleanup()
            return nil, "the server did not say it listens", err
        end
        socket.sleep(0.02)
    end
end

function testing.metrics(srv)
    local status, headers, body = testing.http(srv.admin_port, "/metrics")
    assert(status == 200, "GET /metrics: " .. tostring(status))
    assert(headers["content-type"]:find("text/plain; version=0.0.4", 1, true),
        "GET /metrics: " .. tostring(headers["content-type"]))
    return body
end

function testing.eventually(fn, seconds)
    local deadline = socket.gettime() + (seconds or 5)
    repeat
        if fn() then return true end
        socket.sleep(0.05)
    until socket.gettime() > deadline
    return fn()
end

function testing.promtool_check(text)
    local dir = testing.temp_dir()
    testing.write_file(dir .. "/m.txt", text)
    local status, out = testing.capture("promtool check metrics < " .. testing.quote(dir .. "/m.txt"))
    os.execute("rm -rf " .. testing.quote(dir))
    return status, out
end

return testing
