--[[ moonport.client: a small, raw WebSocket client (RFC 6455) for tests.

It ships with moonport so app authors can test their apps the way moonport's
own specs do: it speaks the protocol from the client side and lets a test
break every rule on purpose (unmasked frames, reserved bits, bad lengths,
pipelined bytes). It never answers anything by itself: no automatic pong, no
automatic close reply; the test decides. Pure Lua on luasocket; runs on Lua
5.1 to 5.4 and LuaJIT.

  local client = require "moonport.client"

client.connect(host, port, path, opts) -> ws, response | nil, err, response
  Opens a TCP connection and performs the opening handshake. opts (all
  optional):
    headers   = { Name = value, ... } or { {name, value}, ... }: add headers,
                or override the default ones (matched without regard to case).
                A value of false removes a default header. In the list form a
                name given twice is sent twice.
    protocols = { "a", "b" }: sent as Sec-WebSocket-Protocol.
    key       = the Sec-WebSocket-Key to send (default: 16 random bytes).
    timeout   = seconds for connecting and for the answer (default 5).
    raw       = send this exact request string instead of building one.
    extra     = bytes sent in the same write right after the request head
                (frames pipelined behind the handshake).
    tls       = { cafile = FILE }: speak TLS first (wss://), trusting the
                certificates in FILE, through lua-sec (require "ssl").
  The 101 answer is checked: Upgrade, Connection and Sec-WebSocket-Accept
  (SHA-1 of the key and the RFC's GUID) must be right, else nil, err.
  response = { status = number, reason = string, headers = { lowercase
  name = value, repeated headers joined by ", " }, body = string, raw = the
  head as received }. A status other than 101 gives nil, "status NNN",
  response, with body holding Content-Length bytes.

client.request(host, port, raw_request, timeout, tls) -> response | nil, err
  Sends raw_request (over TLS when tls = { cafile = FILE } is given) as is and reads one HTTP answer: its head, then
  Content-Length bytes of body or, without Content-Length, everything until
  the server closes. For plain HTTP tests (400, 404, 405, 426, 431...).
  err is "timeout", "closed" (no answer before the server closed) or a
  connect error.

The ws object (one connection):
  ws:send(data, kind)    one masked frame; kind "text" (default) or "binary".
  ws:send_frame(f)       one frame built from f = {
                           opcode  = number, or "continuation", "text",
                                     "binary", "close", "ping", "pong";
                           fin     = true (default) or false;
                           rsv     = the three RSV bits as a number 0-7, the
                                     value of (byte1 & 0x70) >> 4: 4 is RSV1,
                                     2 is RSV2, 1 is RSV3 (default 0);
                           payload = string (default "");
                           mask    = true (default) or false;
                           key     = the 4-byte masking key (default random;
                                     "\0\0\0\0" sends the payload unchanged,
                                     which is cheap for large payloads);
                           length  = the value to put in the length field
                                     instead of #payload (to lie about it);
                           length_size = 0, 2 or 8: force the extended length
                                     width (default: the minimal one) }
  ws:send_raw(bytes)     bytes as they are.
  ws:receive(timeout)    -> frame | nil, "timeout" | "closed"
                           frame = { opcode, fin, rsv, masked, payload, and
                           for close frames code and reason (nil when the
                           payload has fewer than 2 bytes) }.
  ws:receive_message(timeout) -> data, kind ("text" or "binary")
                         | nil, "close", code, reason
                         | nil, "timeout" | "closed" | "protocol", detail
                           Assembles fragments. Ping and pong frames are
                           skipped (not answered) and kept, in order, in
                           ws.control_frames.
  ws:ping(payload)       sends a masked ping.
  ws:close(code, reason) sends a close frame; without code, an empty one.
  ws:expect_close(timeout) -> code, reason, tcp_closed | nil, err
                           Reads until a close frame, skipping data frames,
                           then waits (the rest of timeout) for the server to
                           close TCP. An empty close frame gives nil, nil,
                           tcp_closed; no close frame at all gives nil and
                           "timeout" or "closed".
  ws:is_closed(timeout)  -> true if the server closes TCP (EOF or reset)
                           within timeout; bytes read meanwhile are dropped.
  ws:shutdown()          closes the socket.
  ws.response            the handshake response; ws.protocol the chosen
                           subprotocol (or nil).

Helpers: client.sha1(s) (20-byte digest), client.base64(s),
client.accept_key(key), client.encode_frame(f) (the bytes ws:send_frame
writes).
]]

local socket = require "socket"

local client = {}

local byte, char, concat = string.byte, string.char, table.concat
local floor = math.floor
local unpack = rawget(table, "unpack") or rawget(_G, "unpack")

-- Bit operations on 32-bit unsigned values: bit32 (5.2, some 5.3 builds),
-- LuaJIT's bit (signed results, brought back to 0..2^32-1), the native
-- operators (5.3+, compiled through load so older parsers never see them),
-- or plain arithmetic for a bare Lua 5.1.
local band, bor, bxor, bnot, lshift, rshift
do
    local M = 0x100000000
    local b32 = rawget(_G, "bit32")
    local ok, bj = pcall(require, "bit")
    if type(b32) == "table" then
        band, bor, bxor, bnot = b32.band, b32.bor, b32.bxor, b32.bnot
        lshift, rshift = b32.lshift, b32.rshift
    elseif ok and type(bj) == "table" and bj.bxor then
        band = function(a, c) return bj.band(a, c) % M end
        bor = function(a, c) return bj.bor(a, c) % M end
        bxor = function(a, c) return bj.bxor(a, c) % M end
        bnot = function(a) return bj.bnot(a) % M end
        lshift = function(a, n) return bj.lshift(a, n) % M end
        rshift = function(a, n) return bj.rshift(a, n) % M end
    else
        local native
        if _VERSION ~= "Lua 5.1" and _VERSION ~= "Lua 5.2" then
            native = load([[
                local M = 0xffffffff
                return {
                    band = function(a, b) return a & b end,
                    bor = function(a, b) return a | b end,
                    bxor = function(a, b) return a ~ b end,
                    bnot = function(a) return ~a & M end,
                    lshift = function(a, n) return (a << n) & M end,
                    rshift = function(a, n) return (a & M) >> n end,
                }]])
        end
        if native then
            local ops = native()
            band, bor, bxor, bnot = ops.band, ops.bor, ops.bxor, ops.bnot
            lshift, rshift = ops.lshift, ops.rshift
        else
            -- Bit by bit: slow, but only a bare Lua 5.1 ever gets here.
            local function op(a, c, f)
                local r, p = 0, 1
                while a > 0 or c > 0 do
                    local x, y = a % 2, c % 2
                    r = r + f(x, y) * p
                    a, c, p = (a - x) / 2, (c - y) / 2, p * 2
                end
                return r
            end
            band = function(a, c) return op(a, c, function(x, y) return x * y end) end
            bor = function(a, c) return op(a, c, function(x, y) return (x + y > 0) and 1 or 0 end) end
            bxor = function(a, c) return op(a, c, function(x, y) return (x + y) % 2 end) end
            bnot = function(a) return M - 1 - a % M end
            lshift = function(a, n) return (a * 2 ^ n) % M end
            rshift = function(a, n) return floor((a % M) / 2 ^ n) end
        end
    end
end

local function rol(x, n)
    return bor(lshift(x, n), rshift(x, 32 - n))
end

-- Masking XORs every payload byte. A table of byte XORs makes it one lookup
-- per byte whatever the bit library; it costs 64K entries, built once, on
-- first use.
local xor_table
local function byte_xor_table()
    if not xor_table then
        xor_table = {}
        for a = 0, 255 do
            local row = {}
            for c = 0, 255 do
                row[c] = bxor(a, c)
            end
            xor_table[a] = row
        end
    end
    return xor_table
end

-- SHA-1 (FIPS 180-4), enough for Sec-WebSocket-Accept.
local function be32(n)
    return char(floor(n / 0x1000000) % 256, floor(n / 0x10000) % 256, floor(n / 0x100) % 256,
        n % 256)
end

function client.sha1(msg)
    local len = #msg
    local bits = len * 8
    -- Pad to 56 mod 64 bytes, then the 64-bit big-endian bit length.
    local pad = 56 - (len + 1) % 64
    if pad < 0 then
        pad = pad + 64
    end
    msg = msg .. "\128" .. string.rep("\0", pad) .. be32(floor(bits / 0x100000000)) ..
        be32(bits % 0x100000000)

    local h0, h1, h2, h3, h4 = 0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0
    local w = {}
    for block = 1, #msg, 64 do
        for i = 0, 15 do
            local a, b, c, d = byte(msg, block + i * 4, block + i * 4 + 3)
            w[i] = ((a * 256 + b) * 256 + c) * 256 + d
        end
        for i = 16, 79 do
            w[i] = rol(bxor(bxor(w[i - 3], w[i - 8]), bxor(w[i - 14], w[i - 16])), 1)
        end
        local a, b, c, d, e = h0, h1, h2, h3, h4
        for i = 0, 79 do
            local f, k
            if i < 20 then
                f, k = bor(band(b, c), band(bnot(b), d)), 0x5A827999
            elseif i < 40 then
                f, k = bxor(bxor(b, c), d), 0x6ED9EBA1
            elseif i < 60 then
                f, k = bor(bor(band(b, c), band(b, d)), band(c, d)), 0x8F1BBCDC
            else
                f, k = bxor(bxor(b, c), d), 0xCA62C1D6
            end
            local t = (rol(a, 5) + f + e + k + w[i]) % 0x100000000
            a, b, c, d, e = t, a, rol(b, 30), c, d
        end
        h0 = (h0 + a) % 0x100000000
        h1 = (h1 + b) % 0x100000000
        h2 = (h2 + c) % 0x100000000
        h3 = (h3 + d) % 0x100000000
        h4 = (h4 + e) % 0x100000000
    end
    return be32(h0) .. be32(h1) .. be32(h2) .. be32(h3) .. be32(h4)
end

local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

function client.base64(s)
    local out = {}
    for i = 1, #s, 3 do
        local a, b, c = byte(s, i, i + 2)
        local n = a * 65536 + (b or 0) * 256 + (c or 0)
        local q = {floor(n / 262144), floor(n / 4096) % 64, floor(n / 64) % 64, n % 64}
        local chunk = {}
        for j = 1, 4 do
            chunk[j] = B64:sub(q[j] + 1, q[j] + 1)
        end
        if not c then
            chunk[4] = "="
        end
        if not b then
            chunk[3] = "="
        end
        out[#out + 1] = concat(chunk)
    end
    return concat(out)
end

local GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

function client.accept_key(key)
    return client.base64(client.sha1(key .. GUID))
end

local function random_bytes(n)
    local t = {}
    for i = 1, n do
        t[i] = math.random(0, 255)
    end
    return char(unpack(t))
end

-- XOR data with the 4-byte key, in chunks so neither string.byte nor
-- unpack ever sees more values than a C stack takes.
local function mask(data, key)
    if key == "\0\0\0\0" or data == "" then
        return data
    end
    local x = byte_xor_table()
    local k = {byte(key, 1, 4)}
    local rows = {x[k[1]], x[k[2]], x[k[3]], x[k[4]]}
    local out, CHUNK = {}, 4096 -- a multiple of 4: every chunk starts at key byte 1
    local t = {}
    for i = 1, #data, CHUNK do
        local n = math.min(CHUNK, #data - i + 1)
        for j = 1, n, 256 do
            local bytes = {byte(data, i + j - 1, i + math.min(j + 255, n) - 1)}
            for m = 1, #bytes do
                local pos = j + m - 1
                t[pos] = rows[(pos - 1) % 4 + 1][bytes[m]]
            end
        end
        local parts = {}
        for j = 1, n, 256 do
            parts[#parts + 1] = char(unpack(t, j, math.min(j + 255, n)))
        end
        out[#out + 1] = concat(parts)
    end
    return concat(out)
end

local OPCODES = {continuation = 0, text = 1, binary = 2, close = 8, ping = 9, pong = 10}

local function encode_length(n, size)
    if size == nil then
        size = (n < 126 and 0) or (n < 65536 and 2) or 8
    end
    if size == 0 then
        return n, ""
    elseif size == 2 then
        return 126, char(floor(n / 256) % 256, n % 256)
    end
    return 127, be32(floor(n / 0x100000000)) .. be32(n % 0x100000000)
end

function client.encode_frame(f)
    local opcode = f.opcode or 1
    if type(opcode) == "string" then
        opcode = assert(OPCODES[opcode], "unknown opcode name")
    end
    local payload = f.payload or ""
    local fin = f.fin ~= false
    local masked = f.mask ~= false
    local b1 = (fin and 0x80 or 0) + (f.rsv or 0) * 0x10 + opcode
    local code, ext = encode_length(f.length or #payload, f.length_size)
    local head = char(b1, (masked and 0x80 or 0) + code) .. ext
    if not masked then
        return head .. payload
    end
    local key = f.key or random_bytes(4)
    assert(#key == 4, "a masking key has 4 bytes")
    return head .. key .. mask(payload, key)
end

--[[ Connections. A conn wraps a luasocket TCP object with our own read
buffer (buf, read from pos on), so a frame can arrive in any number of
pieces and bytes that follow the handshake head are not lost. ]]
local conn = {}
conn.__index = conn

local function new_conn(sock)
    return setmetatable({sock = sock, buf = "", pos = 1, eof = false}, conn)
end

local function deadline_of(timeout)
    return socket.gettime() + (timeout or 5)
end

function conn:available()
    return #self.buf - self.pos + 1
end

-- Ensures n bytes are buffered. Returns true, or nil and "timeout" or
-- "closed" (EOF, a reset or another socket error: the stream is over).
function conn:need(n, deadline)
    while self:available() < n do
        if self.eof then
            return nil, "closed"
        end
        -- Even with no time left, take what has already arrived.
        local remaining = math.max(0, deadline - socket.gettime())
        self.sock:settimeout(remaining)
        local data, err, partial = self.sock:receive(n - self:available())
        local got = data or partial
        if got and got ~= "" then
            if self.pos > 1 then
                self.buf, self.pos = self.buf:sub(self.pos), 1
            end
            self.buf = self.buf .. got
        end
        if err and err ~= "timeout" then
            self.eof, self.error = true, err
        elseif err and remaining == 0 then
            return nil, "timeout"
        end
    end
    return true
end

function conn:take(n)
    local s = self.buf:sub(self.pos, self.pos + n - 1)
    self.pos = self.pos + n
    return s
end

function conn:send_all(data, timeout)
    self.sock:settimeout(timeout or 5)
    local i = 1
    while i <= #data do
        local last, err = self.sock:send(data, i)
        if not last then
            return nil, err
        end
        i = last + 1
    end
    return true
end

-- Reads an HTTP head, up to and including the empty line.
function conn:read_head(deadline)
    local limit = 65536
    while true do
        local s, e = self.buf:find("\r\n\r\n", self.pos, true)
        if s then
            return self:take(e - self.pos + 1)
        end
        if self:available() > limit then
            return nil, "head too long"
        end
        local ok, err = self:need(self:available() + 1, deadline)
        if not ok then
            return nil, err
        end
    end
end

local function parse_head(head)
    local status_line = head:match("^([^\r\n]*)")
    local status, reason = status_line:match("^HTTP/%d%.%d (%d%d%d) ?(.*)$")
    local headers = {}
    for line in head:gmatch("\r\n([^\r\n]+)") do
        local name, value = line:match("^([^:]+):[ \t]*(.-)[ \t]*$")
        if name then
            name = name:lower()
            headers[name] = headers[name] and (headers[name] .. ", " .. value) or value
        end
    end
    return {status = tonumber(status), reason = reason, headers = headers, raw = head, body = ""}
end

-- Reads the answer's body: Content-Length bytes, or (when read_to_eof)
-- everything until the server closes.
function conn:read_body(response, deadline, read_to_eof)
    local n = tonumber(response.headers["content-length"] or "")
    if n then
        local ok, err = self:need(n, deadline)
        response.body = self:take(math.min(n, self:available()))
        return ok, err
    end
    if read_to_eof then
        while not self.eof and socket.gettime() < deadline do
            self:need(self:available() + 1, deadline)
        end
        response.body = self:take(self:available())
    end
    return true
end

-- The TLS handshake on a connected socket: the lua-sec object, which
-- receives, sends and closes as the luasocket one does.
local function tls_wrap(sock, host, timeout, tls)
    local ssl = require "ssl"
    local s, err = ssl.wrap(sock, {mode = "client", protocol = "any", verify = "peer",
        options = "all", cafile = tls.cafile})
    if not s then
        sock:close()
        return nil, err
    end
    if s.sni then
        s:sni(host)
    end
    s:settimeout(timeout)
    local ok, herr = s:dohandshake()
    if not ok then
        s:close()
        return nil, "TLS handshake: " .. tostring(herr)
    end
    return s
end

local function tcp_connect(host, port, timeout, tls)
    local sock, err = socket.tcp()
    if not sock then
        return nil, err
    end
    sock:settimeout(timeout)
    local ok, cerr = sock:connect(host, port)
    if not ok then
        sock:close()
        return nil, cerr
    end
    sock:setoption("tcp-nodelay", true)
    if tls then
        sock, err = tls_wrap(sock, host, timeout, tls)
        if not sock then
            return nil, err
        end
    end
    return new_conn(sock)
end

function client.request(host, port, raw_request, timeout, tls)
    timeout = timeout or 5
    local deadline = deadline_of(timeout)
    local c, err = tcp_connect(host, port, timeout, tls)
    if not c then
        return nil, err
    end
    local ok, serr = c:send_all(raw_request, timeout)
    -- A server may answer and close before reading all of a long request;
    -- the answer is still there to read.
    local head, herr = c:read_head(deadline)
    if not head then
        c.sock:close()
        return nil, herr or serr
    end
    local response = parse_head(head)
    c:read_body(response, deadline, true)
    c.sock:close()
    return response, (not ok) and serr or nil
end

-- Builds the request head from the defaults and opts.headers.
local function build_request(host, port, path, key, opts)
    local lines = {
        {"Host", host .. ":" .. port},
        {"Upgrade", "websocket"},
        {"Connection", "Upgrade"},
        {"Sec-WebSocket-Key", key},
        {"Sec-WebSocket-Version", "13"},
    }
    if opts.protocols then
        lines[#lines + 1] = {"Sec-WebSocket-Protocol", concat(opts.protocols, ", ")}
    end
    local extra = {}
    local headers = opts.headers or {}
    if #headers > 0 then
        for _, h in ipairs(headers) do
            extra[#extra + 1] = {h[1], h[2]}
        end
    else
        local names = {}
        for name in pairs(headers) do
            names[#names + 1] = name
        end
        table.sort(names)
        for _, name in ipairs(names) do
            extra[#extra + 1] = {name, headers[name]}
        end
    end
    -- An extra header replaces a default one of the same name (once); any
    -- other extra header is added, so a name given twice is sent twice.
    local replaced, ndefault = {}, #lines
    for _, h in ipairs(extra) do
        local done = false
        for i = 1, ndefault do
            local line = lines[i]
            if not replaced[i] and line[1]:lower() == h[1]:lower() then
                line[2], replaced[i], done = h[2], true, true
                break
            end
        end
        if not done then
            lines[#lines + 1] = {h[1], h[2]}
        end
    end
    local out = {"GET " .. path .. " HTTP/1.1"}
    for _, line in ipairs(lines) do
        if line[2] ~= false then
            out[#out + 1] = line[1] .. ": " .. tostring(line[2])
        end
    end
    return concat(out, "\r\n") .. "\r\n\r\n"
end

local function header_has_token(value, token)
    for item in (value or ""):gmatch("[^,]+") do
        if item:match("^%s*(.-)%s*$"):lower() == token then
            return true
        end
    end
    return false
end

local ws = {}
ws.__index = ws

function client.connect(host, port, path, opts)
    opts = opts or {}
    local timeout = opts.timeout or 5
    local deadline = deadline_of(timeout)
    local key = opts.key or client.base64(random_bytes(16))
    local request = opts.raw or build_request(host, port, path or "/", key, opts)
    if opts.raw then
        key = request:match("\n[Ss][Ee][Cc]%-[Ww][Ee][Bb][Ss][Oo][Cc][Kk][Ee][Tt]%-[Kk][Ee][Yy]:%s*([^\r\n]-)%s*\r?\n")
    end
    local c, err = tcp_connect(host, port, timeout, opts.tls)
    if not c then
        return nil, err
    end
    local ok, serr = c:send_all(request .. (opts.extra or ""), timeout)
    local head, herr = c:read_head(deadline)
    if not head then
        c.sock:close()
        return nil, herr or serr
    end
    local response = parse_head(head)
    if response.status ~= 101 then
        c:read_body(response, deadline, false)
        c.sock:close()
        return nil, "status " .. tostring(response.status), response
    end
    local h = response.headers
    local why
    if (h.upgrade or ""):lower() ~= "websocket" then
        why = "bad Upgrade header in the 101 answer"
    elseif not header_has_token(h.connection, "upgrade") then
        why = "bad Connection header in the 101 answer"
    elseif not key or h["sec-websocket-accept"] ~= client.accept_key(key) then
        why = "bad Sec-WebSocket-Accept in the 101 answer"
    end
    if why then
        c.sock:close()
        return nil, why, response
    end
    if not ok then
        c.sock:close()
        return nil, serr, response
    end
    local self = setmetatable({
        conn = c,
        response = response,
        protocol = h["sec-websocket-protocol"],
        timeout = timeout,
        control_frames = {},
    }, ws)
    return self, response
end

function ws:send_raw(bytes)
    return self.conn:send_all(bytes, self.timeout)
end

function ws:send_frame(f)
    return self:send_raw(client.encode_frame(f))
end

function ws:send(data, kind)
    return self:send_frame {opcode = kind or "text", payload = data}
end

function ws:ping(payload)
    return self:send_frame {opcode = "ping", payload = payload or ""}
end

function ws:close(code, reason)
    local payload = ""
    if code then
        payload = char(floor(code / 256) % 256, code % 256) .. (reason or "")
    end
    return self:send_frame {opcode = "close", payload = payload}
end

function ws:receive(timeout)
    local c = self.conn
    local deadline = deadline_of(timeout or self.timeout)
    local ok, err = c:need(2, deadline)
    if not ok then
        return nil, err
    end
    local b1, b2 = byte(c.buf, c.pos, c.pos + 1)
    local len, masked = b2 % 128, b2 >= 128
    local header = 2 + (len == 126 and 2 or len == 127 and 8 or 0) + (masked and 4 or 0)
    ok, err = c:need(header, deadline)
    if not ok then
        return nil, err
    end
    if len == 126 then
        local x, y = byte(c.buf, c.pos + 2, c.pos + 3)
        len = x * 256 + y
    elseif len == 127 then
        len = 0
        for i = 2, 9 do
            len = len * 256 + byte(c.buf, c.pos + i)
        end
    end
    ok, err = c:need(header + len, deadline)
    if not ok then
        return nil, err
    end
    local head = c:take(header)
    local payload = c:take(len)
    if masked then
        payload = mask(payload, head:sub(-4))
    end
    local frame = {
        opcode = b1 % 16,
        fin = b1 >= 128,
        rsv = floor(b1 / 16) % 8,
        masked = masked,
        payload = payload,
    }
    if frame.opcode == 8 and #payload >= 2 then
        local x, y = byte(payload, 1, 2)
        frame.code, frame.reason = x * 256 + y, payload:sub(3)
    end
    return frame
end

local KINDS = {[1] = "text", [2] = "binary"}

function ws:receive_message(timeout)
    local deadline = deadline_of(timeout or self.timeout)
    local parts, kind = {}, nil
    while true do
        local f, err = self:receive(math.max(0, deadline - socket.gettime()))
        if not f then
            return nil, err
        end
        if f.opcode == 8 then
            return nil, "close", f.code, f.reason
        elseif f.opcode == 9 or f.opcode == 10 then
            self.control_frames[#self.control_frames + 1] = f
        elseif f.opcode == 0 then
            if not kind then
                return nil, "protocol", "continuation frame without a message to continue"
            end
            parts[#parts + 1] = f.payload
        elseif KINDS[f.opcode] then
            if kind then
                return nil, "protocol", "new message inside a fragmented message"
            end
            kind, parts[1] = KINDS[f.opcode], f.payload
        else
            return nil, "protocol", "unexpected opcode " .. f.opcode
        end
        if kind and f.fin and f.opcode ~= 9 and f.opcode ~= 10 then
            return concat(parts), kind
        end
    end
end

function ws:is_closed(timeout)
    local c = self.conn
    local deadline = deadline_of(timeout or self.timeout)
    while not c.eof do
        -- Drop what was read: only the end of the stream matters here.
        c.buf, c.pos = "", 1
        local ok, err = c:need(1, deadline)
        if not ok and err == "timeout" then
            return false
        end
    end
    return true
end

function ws:expect_close(timeout)
    local deadline = deadline_of(timeout or self.timeout)
    while true do
        local f, err = self:receive(math.max(0, deadline - socket.gettime()))
        if not f then
            return nil, err
        end
        if f.opcode == 8 then
            local closed = self:is_closed(math.max(0, deadline - socket.gettime()))
            return f.code, f.reason, closed
        end
    end
end

function ws:shutdown()
    self.conn.sock:close()
end

return client
