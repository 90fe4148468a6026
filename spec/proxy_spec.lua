-- Real client addresses behind proxies (README "Operating moonport"): from a
-- peer in proxy.trusted, X-Forwarded-For (its right-most untrusted
-- address) and X-Forwarded-Proto set req.client.host and req.scheme, and
-- with proxy.protocol a PROXY v1/v2 header must come first; from anyone
-- else all of that is ignored or refused. Checked through the real binary,
-- with Debian's HAProxy (send-proxy, send-proxy-v2) and nginx (proxy_pass
-- with X-Forwarded-For) in front, started on free ports. Clients connect
-- from 127.0.0.2 or 127.0.0.3 (all of 127/8 is this machine) so that the
-- real client and the proxy (127.0.0.1) have different addresses.
local testing = require "moonport.testing"
local socket = require "socket"

-- Sends who the server thinks the client is, as its first message.
-- "count" gets how many times on_connect ran.
local WHO = [[
local app = {}
local connects = 0
function app.on_connect(ws, req)
  connects = connects + 1
  ws:send(req.client.host .. " " .. req.client.port .. " " .. req.scheme)
end
function app.on_message(ws, data)
  ws:send(data == "count" and tostring(connects) or data)
end
return app
]]

local KEY = "dGhlIHNhbXBsZSBub25jZQ=="

local function request(path, headers)
    return "GET " .. (path or "/who") .. " HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n" ..
        "Connection: Upgrade\r\nSec-WebSocket-Key: " .. KEY .. "\r\nSec-WebSocket-Version: 13\r\n" ..
        (headers or "") .. "\r\n"
end

-- Read the response head; for a 101, the first (short, unmasked) message.
local function answer(s)
    local status_line, err = s:receive("*l")
    if not status_line then return nil, err end
    local status = tonumber(status_line:match("^HTTP/1%.1 (%d+)"))
    repeat
        local line = assert(s:receive("*l"))
    until line == ""
    if status ~= 101 then
        local body = s:receive("*a")
        return nil, status, body
    end
    local head = assert(s:receive(2))
    assert(head:byte(1) == 0x81 and head:byte(2) < 126, "a short text message")
    return assert(s:receive(head:byte(2))), status
end

-- open(port, opts) -> the socket and "host port scheme" the app saw, or
-- nil, status, body. opts.from: the local address; opts.prefix: bytes
-- before the request (a PROXY header); opts.headers: more header lines;
-- opts.split: send the prefix a byte at a time.
local function open(port, opts)
    opts = opts or {}
    local s = socket.tcp()
    s:settimeout(10)
    assert(s:bind(opts.from or "127.0.0.2", 0))
    assert(s:connect("127.0.0.1", port))
    local prefix = opts.prefix or ""
    if opts.split then
        for i = 1, #prefix do
            assert(s:send(prefix:sub(i, i)))
            socket.sleep(0.002)
        end
        prefix = ""
    end
    s:send(prefix .. request(opts.path, opts.headers))
    local seen, status, body = answer(s)
    if not seen then
        s:close()
        return nil, status, body
    end
    return s, seen
end

-- who(port, opts) -> what open's app saw, the connection closed again.
local function who(port, opts)
    local s, seen, body = open(port, opts)
    if not s then return nil, seen, body end
    s:close()
    return seen, 101
end

local function be16(n) return string.char(math.floor(n / 256), n % 256) end

-- A PROXY v2 header for TCP over IPv4 (command 1: PROXY; 0: LOCAL).
local function v2(src, sport, dst, dport, command, extra)
    local function ip(a)
        local b = {}
        for x in a:gmatch("%d+") do b[#b + 1] = string.char(tonumber(x)) end
        return table.concat(b)
    end
    local body = ip(src) .. ip(dst) .. be16(sport) .. be16(dport) .. (extra or "")
    return "\r\n\r\n\0\r\nQUIT\n" .. string.char(0x20 + (command or 1), 0x11) .. be16(#body) .. body
end

-- A config file: /who serves WHO unless t.routes says otherwise; each
-- other key of t is a setting, as Lua source.
local function config(t)
    local lines = { "return {" }
    if not t.routes then lines[#lines + 1] = '  routes = { ["/who"] = "who.lua" },' end
    for k, v in pairs(t) do lines[#lines + 1] = "  " .. k .. " = " .. v .. "," end
    lines[#lines + 1] = "}"
    return table.concat(lines, "\n")
end

local function start(settings, args)
    return assert(testing.start { config = config(settings),
        files = { ["who.lua"] = WHO, ["other.lua"] = WHO }, args = args })
end

-- One masked text frame (short; a zero mask key leaves the payload as
-- it is), and the reply to it.
local function ask(s, text)
    assert(s:send(string.char(0x81, 0x80 + #text) .. "\0\0\0\0" .. text))
    local head = assert(s:receive(2))
    return assert(s:receive(head:byte(2)))
end

describe("behind a proxy", function()
    local server
    after_each(function()
        if server then server:cleanup() end
        server = nil
    end)

    it("believes X-Forwarded-For and -Proto from a trusted peer only", function()
        server = start { proxy = '{ trusted = { "127.0.0.2/32", "10.0.0.0/8", "::1/128" } }' }
        local xff = "X-Forwarded-For: 198.51.100.1, 203.0.113.9, 10.1.2.3\r\nX-Forwarded-Proto: https\r\n"
        -- trusted: the right-most address that is not trusted; the forged
        -- left part (198.51.100.1) is never read
        assert.are.equal("203.0.113.9 0 wss", who(server.port, { from = "127.0.0.2", headers = xff }))
        -- several header lines are one list, the last line last
        assert.are.equal("192.0.2.8 0 ws", who(server.port, { from = "127.0.0.2",
            headers = "X-Forwarded-For: 192.0.2.7, 192.0.2.8\r\nX-Forwarded-For: 10.0.0.1\r\n" ..
                "X-Forwarded-Proto: http\r\n" }))
        -- every address trusted: the left-most
        assert.are.equal("10.9.9.9 0 ws", who(server.port, { from = "127.0.0.2",
            headers = "X-Forwarded-For: 10.9.9.9, 10.0.0.1\r\n" }))
        -- garbage ends the walk at the hop that handed it over
        assert.are.equal("10.0.0.4 0 ws", who(server.port, { from = "127.0.0.2",
            headers = "X-Forwarded-For: <script>, 10.0.0.4\r\n" }))
        -- an unknown X-Forwarded-Proto keeps the server's own scheme
        assert.are.equal("203.0.113.1 0 ws", who(server.port, { from = "127.0.0.2",
            headers = "X-Forwarded-For: 203.0.113.1\r\nX-Forwarded-Proto: gopher\r\n" }))
        -- untrusted: a forged header changes nothing
        local seen = who(server.port, { from = "127.0.0.3", headers = xff })
        assert.truthy(seen:match("^127%.0%.0%.3 %d+ ws$"), seen)
        -- the access log shows the real client, and the forged one nowhere
        assert.truthy(server:wait_log('203%.0%.113%.9:0 "WSCONNECT /who"'))
        assert.truthy(server:wait_log('127%.0%.0%.3:%d+ "WSCONNECT /who"'))
        assert.is_nil(server:stdout():find("198.51.100.1", 1, true))
    end)

    it("takes the PROXY header (v1 and v2) from a trusted peer, even a byte at a time", function()
        server = start { proxy = '{ trusted = { "127.0.0.2/32" }, protocol = true }',
            timeouts = "{ handshake = 2 }" }
        assert.are.equal("203.0.113.9 51234 ws", who(server.port,
            { prefix = "PROXY TCP4 203.0.113.9 10.0.0.1 51234 8080\r\n" }))
        assert.are.equal("2001:db8::7 4242 ws", who(server.port,
            { prefix = "PROXY TCP6 2001:db8::7 ::1 4242 443\r\n" }))
        assert.are.equal("198.51.100.7 4000 ws", who(server.port,
            { prefix = v2("198.51.100.7", 4000, "10.0.0.1", 80) }))
        -- TLVs after the addresses are read past
        assert.are.equal("198.51.100.8 4001 ws", who(server.port,
            { prefix = v2("198.51.100.8", 4001, "10.0.0.1", 80, 1, "\1\0\2h2") }))
        assert.are.equal("198.51.100.9 4002 ws", who(server.port,
            { prefix = v2("198.51.100.9", 4002, "10.0.0.1", 80), split = true }))
        assert.are.equal("192.0.2.99 1 ws", who(server.port,
            { prefix = "PROXY TCP4 192.0.2.99 10.0.0.1 1 2\r\n", split = true }))
        -- LOCAL and UNKNOWN: the balancer's own check; the peer stays the client
        local seen = who(server.port, { prefix = v2("1.1.1.1", 1, "2.2.2.2", 2, 0) })
        assert.truthy(seen:match("^127%.0%.0%.2 %d+ ws$"), seen)
        seen = who(server.port, { prefix = "PROXY UNKNOWN\r\n" })
        assert.truthy(seen:match("^127%.0%.0%.2 %d+ ws$"), seen)
        -- the source in the PROXY header is not trusted: its X-Forwarded-For is not read
        assert.are.equal("203.0.113.5 7 ws", who(server.port,
            { prefix = "PROXY TCP4 203.0.113.5 10.0.0.1 7 8\r\n",
              headers = "X-Forwarded-For: 6.6.6.6\r\n" }))
        assert.truthy(server:wait_log('203%.0%.113%.9:51234 "WSCONNECT /who"'))
        assert.truthy(server:wait_log('198%.51%.100%.7:4000 "WSCONNECT /who"'))
    end)

    it("refuses a missing, truncated, oversized or garbage PROXY header with 400 and a log line", function()
        server = start { proxy = '{ trusted = { "127.0.0.2/32" }, protocol = true }',
            timeouts = "{ handshake = 1 }", admin = '"127.0.0.1:0"' }
        local cases = {
            { "", "no PROXY protocol header first" },
            { "PROXY TCP4 1.2.3.4\r\n", "PROXY v1: wrong number of fields" },
            { "PROXY TCP4 1.2.3.4 5.6.7.8 99999 1\r\n", "PROXY v1: bad port" },
            { "PROXY TCP4 ::1 5.6.7.8 1 1\r\n", "PROXY v1: bad address" },
            { "PROXY UNKNOWN " .. string.rep("x", 120) .. "\r\n", "PROXY v1: line longer than 107 bytes" },
            { "PROXY " .. string.rep("A", 300), "PROXY v1: line longer than 107 bytes" },
            { v2("1.2.3.4", 1, "5.6.7.8", 2, 1, string.rep("\0", 1000)), "PROXY v2: header longer than 255 bytes" },
            { "\r\n\r\n\0\r\nQUIT\n\x21\x11\xff\xff", "PROXY v2: header longer than 255 bytes" },
            { "\r\n\r\n\0\r\nQUIT\n\x31\x11\0\12" .. string.rep("\1", 12), "PROXY v2: unsupported version" },
            { "\r\n\r\n\0\r\nQUIT\n\x21\x12\0\12" .. string.rep("\1", 12), "PROXY v2: not a TCP connection" },
            { "\r\n\r\n\0\r\nQUIT\n\x21\x11\0\4\1\2\3\4", "PROXY v2: address block too short" },
            { "\r\n\r\n\0\r\nQUUX\n", "no PROXY protocol header first" },
            { "GET /who HTTP/1.1\r\n", "no PROXY protocol header first" },
        }
        for _, case in ipairs(cases) do
            local seen, status, body = who(server.port, { prefix = case[1] })
            assert.is_nil(seen, case[2])
            assert.are.equal(400, status, case[2])
            assert.truthy(body:find(case[2], 1, true), case[2] .. ": " .. tostring(body))
            assert.truthy(server:wait_log("bad PROXY protocol header: " .. case[2]:gsub("%p", "%%%0")),
                case[2])
        end
        -- a truncated header and then silence: closed at timeouts.handshake, not held
        local s = socket.tcp()
        s:settimeout(5)
        assert(s:bind("127.0.0.2", 0))
        assert(s:connect("127.0.0.1", server.port))
        s:send("PROXY TCP4 1.2.3.4 5.6")
        local data, err, partial = s:receive("*a")
        assert.are.equal("", data or partial)
        assert.are.equal("closed", data and "closed" or err) -- not "timeout": no hang
        s:close()
        -- a truncated header and then EOF: a log line
        s = socket.tcp()
        s:settimeout(5)
        assert(s:bind("127.0.0.2", 0))
        assert(s:connect("127.0.0.1", server.port))
        s:send("\r\n\r\n\0\r\nQUIT\n\x21\x11\0\12\1\2")
        s:shutdown("send")
        s:receive("*a")
        s:close()
        assert.truthy(server:wait_log("closed before its PROXY header was complete"))
        -- counted as handshakes answered 400 (no app reached)
        local _, _, text = testing.http(server.admin_port, "/metrics")
        assert.truthy(testing.metric(text,
            'moonport_handshakes_total{app="(none)",route="",status="400"}') >= #cases)
        assert.are.equal(#cases, testing.metric(text,
            'moonport_handshake_refusals_total{reason="proxy_header"}'))
        -- and the server still serves
        assert.are.equal("203.0.113.1 1 ws", who(server.port,
            { prefix = "PROXY TCP4 203.0.113.1 10.0.0.1 1 2\r\n" }))
        assert.is_true(server:alive())
    end)

    it("reads the PROXY header before TLS on a wss:// server", function()
        local ssl = require "ssl"
        local dir = testing.temp_dir()
        local cert, key = testing.make_cert(dir, "p")
        server = start({ proxy = '{ trusted = { "127.0.0.2/32" }, protocol = true }' },
            { "--tls-cert", cert, "--tls-key", key })
        assert.are.equal("wss", server.scheme)
        local function over_tls(prefix)
            local s = socket.tcp()
            s:settimeout(10)
            assert(s:bind("127.0.0.2", 0))
            assert(s:connect("127.0.0.1", server.port))
            assert(s:send(prefix))
            local t = assert(ssl.wrap(s, { mode = "client", protocol = "any", verify = "none" }))
            t:settimeout(10)
            local ok, err = t:dohandshake()
            if not ok then
                t:close()
                return nil, err
            end
            t:send(request("/who"))
            local seen = answer(t)
            t:close()
            return seen
        end
        assert.are.equal("198.51.100.7 4000 wss", over_tls(v2("198.51.100.7", 4000, "10.0.0.1", 443)))
        assert.are.equal("203.0.113.9 5 wss", over_tls("PROXY TCP4 203.0.113.9 10.0.0.1 5 443\r\n"))
        -- no header: no HTTP answer can reach a TLS client; the socket closes
        local seen, err = over_tls("")
        assert.is_nil(seen)
        assert.truthy(err, "the TLS handshake fails")
        assert.truthy(server:wait_log("bad PROXY protocol header: no PROXY protocol header first"))
        assert.truthy(server:wait_log('"WSREJECT %-" id=%d+ status=400 reason=bad PROXY header'))
        os.execute("rm -rf " .. testing.quote(dir))
    end)

    it("refuses a PROXY header from a peer that is not trusted, and serves it plain HTTP", function()
        server = start { proxy = '{ trusted = { "127.0.0.2/32" }, protocol = true }' }
        local seen, status, body = who(server.port, { from = "127.0.0.3",
            prefix = "PROXY TCP4 203.0.113.9 10.0.0.1 51234 8080\r\n" })
        assert.is_nil(seen)
        assert.are.equal(400, status)
        assert.truthy(body:find("PROXY header from an untrusted peer", 1, true), body)
        assert.truthy(server:wait_log("PROXY header from a peer not in proxy.trusted"))
        seen, status = who(server.port, { from = "127.0.0.3", prefix = v2("203.0.113.9", 1, "10.0.0.1", 2) })
        assert.is_nil(seen)
        assert.are.equal(400, status)
        seen = who(server.port, { from = "127.0.0.3" })
        assert.truthy(seen:match("^127%.0%.0%.3 %d+ ws$"), seen)
    end)

    it("refuses a config it cannot follow, saying why", function()
        local bad = {
            { '{ trusted = { "10.1.2.3/8" } }', 'proxy.trusted[1] "10.1.2.3/8" is not an address range' },
            { '{ trusted = { "example.com" } }', 'proxy.trusted[1] "example.com" is not an address range' },
            { '{ trusted = "10.0.0.0/8" }', "proxy.trusted must be a list of address ranges" },
            { '{ protocol = true }', "proxy.protocol needs proxy.trusted" },
            { '{ trusted = {}, protocol = "yes" }', "proxy.protocol must be true or false" },
            { '{ trusted = {}, protcol = true }', 'unknown key "proxy.protcol" (did you mean "proxy.protocol"?)' },
        }
        for _, case in ipairs(bad) do
            local s, why, err = testing.start { config = config { proxy = case[1] },
                files = { ["who.lua"] = WHO } }
            if s then s:cleanup() end
            assert.is_nil(s, case[1])
            assert.truthy(why:find("status", 1, true), why)
            assert.truthy(err:find(case[2], 1, true), case[1] .. ": " .. err)
        end
    end)
end)

-- Start a program in the background; its pid, for stopping it by its own id.
local function spawn(cmd, dir, name)
    local pidfile = dir .. "/" .. name .. ".pid"
    os.execute("sh -c " .. testing.quote(cmd .. " >" .. dir .. "/" .. name .. ".log 2>&1 & echo $! >" ..
        pidfile) .. " </dev/null")
    return tonumber(testing.read_file(pidfile))
end

local function listening(port)
    return testing.eventually(function()
        local s = socket.connect("127.0.0.1", port)
        if s then s:close() end
        return s ~= nil
    end, 10)
end

-- The path of an installed program (Debian puts haproxy and nginx in /usr/sbin).
local function have(program)
    for _, dir in ipairs { "/usr/sbin/", "/usr/bin/", "/usr/local/sbin/" } do
        if testing.run("test -x " .. dir .. program) then return dir .. program end
    end
    return nil
end

describe("with real proxies in front", function()
    local server, dir, pids
    before_each(function()
        dir = testing.temp_dir()
        pids = {}
    end)
    after_each(function()
        for _, pid in ipairs(pids) do os.execute("kill " .. pid .. " 2>/dev/null") end
        if server then server:cleanup() end
        server = nil
        os.execute("rm -rf " .. testing.quote(dir))
    end)

    it("HAProxy with send-proxy-v2 and send-proxy: req.client is the real client", function()
        local bin = have("haproxy")
        assert.truthy(bin, "haproxy is not installed (apt-get install haproxy)")
        server = start { proxy = '{ trusted = { "127.0.0.1/32" }, protocol = true }' }
        local p2, p1 = testing.free_port(), testing.free_port()
        testing.write_file(dir .. "/haproxy.cfg", table.concat({
            "global", "  maxconn 200",
            "defaults", "  mode tcp", "  timeout connect 5s", "  timeout client 30s", "  timeout server 30s",
            "frontend v2", "  bind 127.0.0.1:" .. p2, "  default_backend moonport_v2",
            "frontend v1", "  bind 127.0.0.1:" .. p1, "  default_backend moonport_v1",
            "backend moonport_v2", "  server m 127.0.0.1:" .. server.port .. " send-proxy-v2",
            "backend moonport_v1", "  server m 127.0.0.1:" .. server.port .. " send-proxy",
            "",
        }, "\n"))
        pids[#pids + 1] = spawn(bin .. " -db -f " .. dir .. "/haproxy.cfg", dir, "haproxy")
        assert.truthy(listening(p2) and listening(p1), testing.read_file(dir .. "/haproxy.log"))
        for _, port in ipairs { p2, p1 } do
            local s = socket.tcp()
            s:settimeout(10)
            assert(s:bind("127.0.0.2", 0))
            assert(s:connect("127.0.0.1", port))
            local _, my_port = s:getsockname()
            s:send(request("/who", "X-Forwarded-For: 6.6.6.6\r\n"))
            local seen = answer(s)
            s:close()
            -- the client's own address and port, not HAProxy's (127.0.0.1),
            -- and not what the client claimed
            assert.are.equal("127.0.0.2 " .. my_port .. " ws", seen)
            assert.truthy(server:wait_log("127%.0%.0%.2:" .. my_port .. ' "WSCONNECT /who"'))
        end
        -- a direct connection from the trusted address without the header is refused
        local seen, status = who(server.port, { from = "127.0.0.1" })
        assert.is_nil(seen)
        assert.are.equal(400, status)
    end)

    it("nginx with proxy_pass and X-Forwarded-For: req.client is the real client", function()
        local bin = have("nginx")
        assert.truthy(bin, "nginx is not installed (apt-get install nginx)")
        server = start { proxy = '{ trusted = { "127.0.0.1/32" } }' }
        local port = testing.free_port()
        os.execute("mkdir -p " .. dir .. "/tmp")
        testing.write_file(dir .. "/nginx.conf", table.concat({
            "daemon off;", "master_process off;", "pid " .. dir .. "/nginx.pid;",
            "error_log " .. dir .. "/nginx-error.log;",
            "events { worker_connections 64; }",
            "http {",
            "  access_log off;",
            "  client_body_temp_path " .. dir .. "/tmp; proxy_temp_path " .. dir .. "/tmp;",
            "  fastcgi_temp_path " .. dir .. "/tmp; uwsgi_temp_path " .. dir .. "/tmp;",
            "  scgi_temp_path " .. dir .. "/tmp;",
            "  server {",
            "    listen 127.0.0.1:" .. port .. ";",
            "    location / {",
            "      proxy_pass http://127.0.0.1:" .. server.port .. ";",
            "      proxy_http_version 1.1;",
            "      proxy_set_header Upgrade $http_upgrade;",
            '      proxy_set_header Connection "upgrade";',
            "      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
            "      proxy_set_header X-Forwarded-Proto $scheme;",
            "    }",
            "  }",
            "}", "",
        }, "\n"))
        pids[#pids + 1] = spawn(bin .. " -p " .. dir .. " -c " .. dir .. "/nginx.conf -e " .. dir ..
            "/nginx-error.log", dir, "nginx")
        assert.truthy(listening(port), testing.read_file(dir .. "/nginx.log"))
        -- the real client
        assert.are.equal("127.0.0.2 0 ws", who(port, { from = "127.0.0.2" }))
        -- a client that forges X-Forwarded-For: nginx appends the real
        -- address, and the right-most untrusted one is that
        assert.are.equal("127.0.0.3 0 ws", who(port, { from = "127.0.0.3",
            headers = "X-Forwarded-For: 6.6.6.6\r\n" }))
        assert.truthy(server:wait_log('127%.0%.0%.3:0 "WSCONNECT /who"'))
        -- straight to moonport from an untrusted address, the forgery is ignored
        local seen = who(server.port, { from = "127.0.0.3", headers = "X-Forwarded-For: 6.6.6.6\r\n" })
        assert.truthy(seen:match("^127%.0%.0%.3 %d+ ws$"), seen)
        assert.is_nil(server:stdout():find("6.6.6.6", 1, true))
    end)
end)

describe("origins", function()
    local server
    after_each(function()
        if server then server:cleanup() end
        server = nil
    end)

    local function origin(o) return o and ("Origin: " .. o .. "\r\n") or nil end

    it("refuses an Origin not allowed with 403 before the app runs, globally and per route", function()
        server = start {
            routes = '{ ["/who"] = "who.lua", ["/b"] = { app = "other.lua", origins = { "https://b.example" } } }',
            origins = '{ "https://chat.example.com", "http://localhost:*" }',
            admin = '"127.0.0.1:0"',
        }
        local ok = { "https://chat.example.com", "HTTPS://Chat.Example.com:443", "http://localhost:3000",
            "http://localhost" }
        for _, o in ipairs(ok) do
            assert.truthy(who(server.port, { headers = origin(o) }), o)
        end
        -- no Origin: not a browser; allowed unless origins_required
        assert.truthy(who(server.port, {}))
        local refused = { "https://evil.example", "http://chat.example.com", "https://chat.example.com.evil.net",
            "https://chat.example.com:8443", "null", "https://b.example" }
        for _, o in ipairs(refused) do
            local seen, status, body = who(server.port, { headers = origin(o) })
            assert.is_nil(seen, o)
            assert.are.equal(403, status, o)
            assert.are.equal("403 Forbidden: origin not allowed\n", body)
        end
        -- on_connect ran for the allowed ones only
        local s, seen = open(server.port, {})
        assert.truthy(seen)
        assert.are.equal(tostring(#ok + 2), ask(s, "count"))
        s:close()
        -- a route's own list replaces the global one
        assert.truthy(who(server.port, { path = "/b", headers = origin("https://b.example") }))
        local _, status = who(server.port, { path = "/b", headers = origin("https://chat.example.com") })
        assert.are.equal(403, status)
        -- the reason in the access log, the Origin in the server log
        assert.truthy(server:wait_log('"WSREJECT /who" id=%d+ status=403 reason=origin not allowed'))
        assert.truthy(server:wait_log('Origin "https://evil%.example" is not in origins: refused with 403'))
        -- counted as handshakes answered 403, by app
        local _, _, text = testing.http(server.admin_port, "/metrics")
        assert.are.equal(#refused, testing.metric(text,
            'moonport_handshakes_total{app="who",route="/who",status="403"}'))
        assert.are.equal(1, testing.metric(text,
            'moonport_handshakes_total{app="other",route="/b",status="403"}'))
        assert.are.equal(#refused + 1, testing.metric(text,
            'moonport_handshake_refusals_total{reason="origin"}'))
        assert.are.equal(0, testing.metric(text,
            'moonport_handshake_refusals_total{reason="per_ip"}'))
        -- the exposition stays valid for Prometheus
        testing.write_file(server.dir .. "/m.txt", text)
        local rc, out = testing.capture("promtool check metrics < " .. testing.quote(server.dir .. "/m.txt"))
        assert.are.equal(0, rc, out)
    end)

    it("refuses a handshake without an Origin when origins_required", function()
        server = start { origins = '{ "https://chat.example.com" }', origins_required = "true" }
        local seen, status, body = who(server.port, {})
        assert.is_nil(seen)
        assert.are.equal(403, status)
        assert.truthy(body:find("no Origin header (origins_required)", 1, true), body)
        assert.truthy(who(server.port, { headers = origin("https://chat.example.com") }))
        -- origins_required alone: any Origin, but one there
        server:cleanup()
        server = start { origins_required = "true" }
        assert.truthy(who(server.port, { headers = origin("https://anything.example") }))
        _, status = who(server.port, {})
        assert.are.equal(403, status)
    end)

    it("follows the config on SIGHUP", function()
        server = start { origins = '{ "https://a.example" }' }
        local function status_for(o)
            local seen, status = who(server.port, { headers = origin(o) })
            return seen and 101 or status
        end
        assert.are.equal(101, status_for("https://a.example"))
        assert.are.equal(403, status_for("https://b.example"))
        testing.write_file(server.dir .. "/config.lua", config {
            routes = '{ ["/who"] = { app = "who.lua", origins = { "https://b.example" } } }',
            proxy = '{ trusted = { "127.0.0.2/32" } }' })
        server:signal("HUP")
        assert.truthy(server:wait_log("SIGHUP: config .- reloaded"))
        assert.are.equal(403, status_for("https://a.example"))
        assert.are.equal(101, status_for("https://b.example"))
        -- and the proxy settings
        assert.are.equal("203.0.113.3 0 ws", who(server.port, { headers = origin("https://b.example") ..
            "X-Forwarded-For: 203.0.113.3\r\n" }))
    end)

    it("refuses a config whose origins it cannot read, saying why", function()
        local bad = {
            { { origins = '{ "https://a.example/" }' }, 'origins[1] "https://a.example/": not SCHEME://HOST[:PORT]' },
            { { origins = '{ "a.example" }' }, 'origins[1] "a.example": not SCHEME://HOST[:PORT]' },
            { { origins = '{ "https://a.*.example" }' }, "a '*' in the host must be its first label" },
            { { origins = '"https://a.example"' }, "origins must be a list of origins" },
            { { origins = '{ 42 }' }, "origins[1] must be a string" },
            { { routes = '{ ["/x"] = { app = "who.lua", origins = { "ftp//x" } } }' },
              'routes["/x"].origins[1] "ftp//x"' },
            { { routes = '{ ["/x"] = { app = "who.lua", origin = {} } }' },
              'routes["/x"]: a route table has app and origins only' },
            { { routes = '{ ["/x"] = { origins = {} } }' }, 'routes["/x"].app must be a file name' },
        }
        for _, case in ipairs(bad) do
            local s, why, err = testing.start { config = config(case[1]), files = { ["who.lua"] = WHO } }
            if s then s:cleanup() end
            assert.is_nil(s, case[2])
            assert.truthy(why:find("status", 1, true), why)
            assert.truthy(err:find(case[2], 1, true), case[2] .. ": " .. err)
        end
    end)
end)

describe("limits.max_connections_per_ip", function()
    local server
    after_each(function()
        if server then server:cleanup() end
        server = nil
    end)

    it("refuses the handshake with 429 past the limit, per client address after the proxy", function()
        server = start { limits = "{ max_connections_per_ip = 2 }",
            proxy = '{ trusted = { "127.0.0.4/32" } }', admin = '"127.0.0.1:0"' }
        local held = {}
        for _ = 1, 2 do
            local s = assert(open(server.port, { from = "127.0.0.2" }))
            held[#held + 1] = s
        end
        local seen, status, body = who(server.port, { from = "127.0.0.2" })
        assert.is_nil(seen)
        assert.are.equal(429, status)
        assert.truthy(body:find("too many connections from this address", 1, true), body)
        assert.truthy(server:wait_log('127%.0%.0%.2:%d+ "WSREJECT /who" id=%d+ status=429'))
        -- another address has its own count
        assert.truthy(who(server.port, { from = "127.0.0.3" }))
        -- behind the trusted proxy, each forwarded client is counted apart
        local xff = function(a) return "X-Forwarded-For: " .. a .. "\r\n" end
        for _ = 1, 2 do
            held[#held + 1] = assert(open(server.port, { from = "127.0.0.4", headers = xff("203.0.113.1") }))
        end
        _, status = who(server.port, { from = "127.0.0.4", headers = xff("203.0.113.1") })
        assert.are.equal(429, status)
        assert.truthy(who(server.port, { from = "127.0.0.4", headers = xff("203.0.113.2") }))
        assert.truthy(server:wait_log('203%.0%.113%.1:0 "WSREJECT /who" id=%d+ status=429'))
        -- an untrusted peer's X-Forwarded-For does not get it more room
        _, status = who(server.port, { from = "127.0.0.2", headers = xff("203.0.113.77") })
        assert.are.equal(429, status)
        -- a connection that ends makes room again
        held[1]:close()
        assert.truthy(testing.eventually(function()
            local s = open(server.port, { from = "127.0.0.2" })
            if s then held[1] = s end
            return s ~= nil
        end))
        local _, _, text = testing.http(server.admin_port, "/metrics")
        assert.are.equal(3, testing.metric(text,
            'moonport_handshakes_total{app="who",route="/who",status="429"}'))
        assert.are.equal(3, testing.metric(text,
            'moonport_handshake_refusals_total{reason="per_ip"}'))
        for _, s in ipairs(held) do s:close() end
        -- everyone gone: each address has its full room back
        assert.truthy(testing.eventually(function()
            local a = open(server.port, { from = "127.0.0.2" })
            local b = a and open(server.port, { from = "127.0.0.2" })
            if a then a:close() end
            if b then b:close() end
            return b ~= nil
        end))
    end)

    it("counts per worker with --workers 2: one address gets from the limit to twice it", function()
        server = start({ limits = "{ max_connections_per_ip = 2 }" }, { "--workers", "2" })
        local held, refused = {}, 0
        for _ = 1, 12 do
            local s, status = open(server.port, { from = "127.0.0.2" })
            if s then
                held[#held + 1] = s
            else
                assert.are.equal(429, status)
                refused = refused + 1
            end
        end
        assert.truthy(#held >= 2 and #held <= 4, #held .. " accepted")
        assert.are.equal(12 - #held, refused)
        for _, s in ipairs(held) do s:close() end
    end)
end)
