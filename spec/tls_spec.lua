-- TLS (README "TLS"): moonport serving wss:// itself, with a throwaway
-- self-signed certificate made by the openssl command for each run. The
-- clients are independent (python3-websockets, node's ws) and moonport's own
-- raw client over lua-sec; the failures a TLS port sees (a plain HTTP
-- client, garbage, silence, a broken certificate at start or at SIGHUP)
-- each end one connection, with a log line, and never the server.
local testing = require "moonport.testing"
local socket = require "socket"
local quote = testing.quote

local ECHO = [[
local app = {}
function app.on_message(ws, data, kind)
  if data == "scheme?" then return ws:send(ws.request.scheme) end
  ws:send(data, kind)
end
function app.on_close(ws, code, reason)
  require("moonport").log("info", "on_close", code, reason)
end
return app
]]

local function run(cmd)
    return testing.capture(cmd, 120)
end


local make_cert = testing.make_cert

local count = testing.count

-- A raw TCP connection to the TLS port, without TLS.
local function tcp(server)
    local s = assert(socket.tcp())
    s:settimeout(5)
    assert(s:connect(server.host, server.port))
    return s
end

-- Everything the server sends until it closes (or timeout): the data, and
-- "closed" or "timeout".
local function read_to_close(s, timeout)
    s:settimeout(timeout)
    local data, err, partial = s:receive("*a")
    return data or partial or "", data and "closed" or err
end

local PY = "/usr/bin/python3 spec/tls/wss_client.py"

describe("wss://", function()
    local dir, cert, key, server

    setup(function()
        dir = testing.temp_dir()
        cert, key = make_cert(dir, "a")
        local err, stderr
        server, err, stderr = testing.start {
            apps = {echo = ECHO},
            tls = {cert = cert, key = key},
            config = "return { timeouts = { handshake = 1 }, limits = { send_buffer = 4096 } }",
        }
        assert(server, tostring(err) .. "\n" .. tostring(stderr))
    end)

    teardown(function()
        if server then
            server:cleanup()
        end
        if dir then
            os.execute("rm -rf " .. quote(dir))
        end
    end)

    after_each(function()
        assert.is_true(server:alive(), "the server died:\n" .. server:stderr())
    end)

    local function url(host)
        return string.format("wss://%s:%d/echo", host or server.host, server.port)
    end

    it("says wss:// in its listening line", function()
        assert.equal("wss", server.scheme)
        assert.truthy(server:stderr():find("listening on wss://127.0.0.1:" .. server.port .. "/",
            1, true))
    end)

    it("python3-websockets: text and binary echoes (small, 150 KB, 1 MiB), with " ..
        "permessage-deflate, and the close code echoed", function()
        local status, out = run(PY .. " echo " .. quote(url()) .. " " .. quote(cert))
        assert.equal(0, status, "the client failed:\n" .. out)
        assert.truthy(out:find("wss_client.py: all 10 checks passed", 1, true), out)
        assert(server:wait_log("WSDISCONNECT /echo[^\n]*code=4000", 5),
            "no disconnect with 4000:\n" .. server:stdout())
        assert(server:wait_log("on_close 4000 bye", 5))
        local err = server:stderr()
        assert.is_nil(err:find("failing the connection", 1, true), err)
        assert.is_nil(err:find("TLS error", 1, true), err)
    end)

    it("node ws: echoes of 1 MiB and empty messages, then a normal close", function()
        local node_path = ((os.getenv("NODE_PATH") or "") ~= "" and
            os.getenv("NODE_PATH") .. ":" or "") .. "/usr/share/nodejs"
        local status, out = run("env NODE_PATH=" .. quote(node_path) .. " NODE_EXTRA_CA_CERTS=" ..
            quote(cert) .. " node spec/interop/echo_client.js " .. quote(url("localhost")))
        assert.equal(0, status, "the client failed:\n" .. out)
        assert.truthy(out:find("echo_client.js: all 7 checks passed", 1, true), out)
    end)

    it("raw frames over TLS: req.scheme is wss, fragments, a ping, a protocol error " ..
        "closed with 1002", function()
        local ws = assert(server:connect("/echo"))
        ws:send("scheme?")
        assert.equal("wss", (ws:receive_message(3)))
        ws:send_frame {opcode = "text", fin = false, payload = "hel"}
        ws:send_frame {opcode = "ping", payload = "p"}
        ws:send_frame {opcode = "continuation", payload = "lo"}
        local pong = assert(ws:receive(3))
        assert.equal(10, pong.opcode)
        assert.equal("p", pong.payload)
        assert.equal("hello", (ws:receive_message(3)))
        ws:send_frame {opcode = "text", mask = false, payload = "unmasked"}
        local close = assert(ws:receive(3))
        assert.equal(8, close.opcode)
        assert.equal(1002, close.code)
        assert.is_true(ws:is_closed(3))
        -- An HTTP error answer goes over TLS too.
        local r = assert(server:request("GET /nope HTTP/1.1\r\nHost: x\r\n\r\n", 3))
        assert.equal(404, r.status)
    end)

    it("a client that stops reading is paused and resumed, and loses nothing", function()
        local status, out = run(PY .. " flood " .. quote(url()) .. " " .. quote(cert) .. " 100")
        assert.equal(0, status, "the client failed:\n" .. out)
        assert.truthy(out:find("all 100 flooded messages echoed in order", 1, true), out)
    end)

    it("a plain ws:// client on the TLS port: closed, logged, no HTTP answer", function()
        local s = tcp(server)
        assert(s:send("GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n" ..
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n" ..
            "Sec-WebSocket-Version: 13\r\n\r\n"))
        local data, how = read_to_close(s, 3)
        s:close()
        assert.equal("closed", how)
        assert.is_nil(data:find("HTTP/", 1, true), data)
        assert(server:wait_log("conn %d+ from 127%.0%.0%.1:%d+: TLS handshake failed: " ..
            "http request: closing", 3), server:stderr())
    end)

    it("garbage instead of a ClientHello: closed, logged", function()
        local s = tcp(server)
        local before = count(server:stderr(), "TLS handshake failed")
        assert(s:send(("\22\3\1\0\5garbage!"):rep(20)))
        local _, how = read_to_close(s, 3)
        s:close()
        assert.equal("closed", how)
        local deadline = socket.gettime() + 3
        while count(server:stderr(), "TLS handshake failed") == before and
            socket.gettime() < deadline do
            socket.sleep(0.02)
        end
        assert.equal(before + 1, count(server:stderr(), "TLS handshake failed"),
            server:stderr())
    end)

    it("a client that connects and says nothing is closed by the handshake timeout", function()
        local s = tcp(server)
        local t0 = socket.gettime()
        local _, how = read_to_close(s, 4)
        s:close()
        assert.equal("closed", how)
        assert.is_true(socket.gettime() - t0 > 0.8, "closed too early")
        assert(server:wait_log("handshake not complete after 1s", 2))
    end)

    it("a client that completes TLS but sends no request is closed by the same timeout",
        function()
            local ssl = require "ssl"
            local s = tcp(server)
            local c = assert(ssl.wrap(s, {mode = "client", protocol = "any", verify = "peer",
                cafile = cert}))
            c:settimeout(3)
            assert(c:dohandshake())
            local t0 = socket.gettime()
            local _, err = c:receive("*a")
            c:close()
            -- The socket is closed at once, without close_notify: lua-sec
            -- says "closed" or "unexpected eof while reading".
            assert.is_true(err ~= "timeout", "not closed within 3 s")
            assert.is_true(socket.gettime() - t0 > 0.5, "closed too early")
        end)

    it("serves 100 connections one after another, then still serves", function()
        local status, out = run(PY .. " many " .. quote(url()) .. " " .. quote(cert) .. " 100")
        assert.equal(0, status, "the client failed:\n" .. out)
        assert.truthy(out:find("all 100 connections echoed and closed", 1, true), out)
        local ws = assert(server:connect("/echo"))
        ws:send("still here")
        assert.equal("still here", (ws:receive_message(3)))
        ws:close(1000)
        assert.equal(1000, assert(ws:receive(3)).code)
    end)

    it("SIGHUP loads a renewed certificate for new connections; a broken one is refused",
        function()
            -- Renew: a new key pair replaces the files the server was started with.
            local cert2, key2 = make_cert(dir, "b")
            assert(os.rename(cert2, cert) and os.rename(key2, key))
            assert(server:signal("HUP"))
            assert(server:wait_log("SIGHUP: TLS certificate [^\n]* reloaded", 5), server:stderr())
            local ws = assert(server:connect("/echo")) -- trusts the file, now the new cert
            ws:send("renewed")
            assert.equal("renewed", (ws:receive_message(3)))
            ws:close(1000)

            -- A key that does not match: the running certificate stays.
            local _, key3 = make_cert(dir, "c")
            assert(os.rename(key3, key))
            assert(server:signal("HUP"))
            assert(server:wait_log("SIGHUP: TLS certificate not reloaded, the running one " ..
                "stays: tls: the key [^\n]* does not match", 5), server:stderr())
            ws = assert(server:connect("/echo"))
            ws:send("kept")
            assert.equal("kept", (ws:receive_message(3)))
            ws:close(1000)
        end)
end)

describe("starting with TLS", function()
    local dir, cert, key

    setup(function()
        dir = testing.temp_dir()
        cert, key = make_cert(dir, "a")
    end)

    teardown(function()
        if dir then
            os.execute("rm -rf " .. quote(dir))
        end
    end)

    local BIN = os.getenv("MOONPORT_BIN") or "bin/moonport"

    -- A start that must fail: its status and its one line of stderr.
    local function start_fails(args)
        local status, out = run(quote(BIN) .. " --port 0 " .. args .. " " .. quote(dir) ..
            " </dev/null")
        assert.is_nil(out:find("listening on", 1, true), "it started:\n" .. out)
        local lines = {}
        for line in out:gmatch("[^\n]+") do
            lines[#lines + 1] = line
        end
        assert.equal(1, #lines, "not one line:\n" .. out)
        return status, lines[1]
    end

    it("--help documents --tls-cert and --tls-key", function()
        local status, out = run(quote(BIN) .. " --help")
        assert.equal(0, status)
        assert.truthy(out:find("--tls-cert FILE", 1, true), out)
        assert.truthy(out:find("--tls-key FILE", 1, true), out)
    end)

    it("a missing certificate file: exit 1, one line naming it", function()
        local status, line = start_fails("--tls-cert " .. quote(dir .. "/none.pem") ..
            " --tls-key " .. quote(key))
        assert.equal(1, status)
        assert.truthy(line:find("moonport: tls: cannot read certificate " .. dir ..
            "/none.pem: No such file or directory", 1, true), line)
    end)

    it("a key that does not match the certificate: exit 1, one line saying so", function()
        local _, other_key = make_cert(dir, "other")
        local status, line = start_fails("--tls-cert " .. quote(cert) .. " --tls-key " ..
            quote(other_key))
        assert.equal(1, status)
        assert.truthy(line:find("does not match the certificate", 1, true), line)
    end)

    it("a file that is not PEM: exit 1, one line", function()
        testing.write_file(dir .. "/junk.pem", "not a certificate\n")
        local status, line = start_fails("--tls-cert " .. quote(dir .. "/junk.pem") ..
            " --tls-key " .. quote(key))
        assert.equal(1, status)
        assert.truthy(line:find("cannot load the certificate " .. dir .. "/junk.pem: not a PEM file",
            1, true), line)
    end)

    it("a certificate and key given the wrong way round: one line saying which is which",
        function()
            local status, line = start_fails("--tls-cert " .. quote(key) .. " --tls-key " ..
                quote(cert))
            assert.equal(1, status)
            assert.truthy(line:find("cannot load the certificate " .. key ..
                ": it holds a private key, not a certificate", 1, true), line)
            status, line = start_fails("--tls-cert " .. quote(cert) .. " --tls-key " .. quote(cert))
            assert.equal(1, status)
            assert.truthy(line:find("cannot load the key " .. cert ..
                ": it holds a certificate, not a private key", 1, true), line)
            assert.is_nil(line:find("PEM lib", 1, true), line)
        end)

    it("an encrypted key: exit 1 at once, one line (no passphrase prompt)", function()
        local enc = dir .. "/enc-key.pem"
        local status, out = run("openssl pkey -in " .. quote(key) .. " -aes256 -passout pass:x" ..
            " -out " .. quote(enc))
        assert(status == 0, out)
        local t0 = socket.gettime()
        local rc, line = start_fails("--tls-cert " .. quote(cert) .. " --tls-key " .. quote(enc))
        assert.equal(1, rc)
        assert.truthy(line:find("cannot load the key " .. enc .. ": the key is encrypted", 1, true),
            line)
        assert.is_true(socket.gettime() - t0 < 5, "it waited")
    end)

    it("--tls-cert without --tls-key: exit 2", function()
        local status, line = start_fails("--tls-cert " .. quote(cert))
        assert.equal(2, status)
        assert.truthy(line:find("--tls-key", 1, true), line)
    end)

    it("tls = { cert, key } in the config file, relative to it, serves wss://", function()
        local server = assert(testing.start {
            apps = {echo = ECHO},
            files = {["tls/c.pem"] = testing.read_file(cert),
                     ["tls/k.pem"] = testing.read_file(key)},
            config = "return { tls = { cert = 'tls/c.pem', key = 'tls/k.pem' } }",
        })
        finally(function() server:cleanup() end)
        assert.equal("wss", server.scheme)
        local ws = assert(server:connect("/echo", {tls = {cafile = cert}}))
        ws:send("from the config")
        assert.equal("from the config", (ws:receive_message(3)))
        ws:close(1000)
        assert.equal(1000, assert(ws:receive(3)).code)
    end)

    it("tls in the config without a key: exit 1, one line", function()
        testing.write_file(dir .. "/half.lua", "return { tls = { cert = 'a-cert.pem' } }")
        local status, line = start_fails("--config " .. quote(dir .. "/half.lua"))
        assert.equal(1, status)
        assert.truthy(line:find("tls needs both cert and key", 1, true), line)
    end)
end)
