-- moonport.http: HTTP/1.1 requests from handlers, over moonport.tcp.
-- Built into bin/moonport (src/lhttpc.c loads it and hands it the moonport
-- table and the response parser, src/httpc.c with llhttp); apps reach it as
-- moonport.http or require "moonport.http". It builds the request, sends
-- it, and reads the response through the parser, never past its end, so
-- that a connection it keeps alive holds nothing of this response.
-- Every wait is the socket's: one deadline (`timeout`, in milliseconds like
-- sock:settimeout) covers connect, send and read together.
local moonport, new_parser = ...

local http = {}

local DEFAULT_TIMEOUT = 30000           -- ms, for the whole request
local DEFAULT_MAX_BODY = 16 * 1024 * 1024
local MAX_HEAD = 64 * 1024              -- status line and headers
local READ_CAP = 64 * 1024              -- the most one receive asks for
local FNAME = "moonport.http.request"

local now, floor, ceil = moonport.now, math.floor, math.ceil
local type, tostring, tonumber, pairs, ipairs = type, tostring, tonumber, pairs, ipairs
local concat, lower = table.concat, string.lower

-- Raise at the app's call of request (level 3: bad <- request <- app).
local function bad(n, msg)
  error(("bad argument #%d to '%s' (%s)"):format(n, FNAME, msg), 3)
end

-- Methods that a retry on a fresh connection may repeat (RFC 9110 9.2.2).
local idempotent = { GET = true, HEAD = true, PUT = true, DELETE = true, OPTIONS = true,
                     TRACE = true }

-- Headers the request sets from its other fields.
local reserved = { ["content-length"] = "body", ["transfer-encoding"] = "body" }

-- url -> scheme, host (without brackets), port, host header, target; or
-- nil, why.
local function parse_url(url)
  local scheme, authority, rest = url:match("^(%a[%w+.-]*)://([^/?#]*)(.*)$")
  if not scheme then
    return nil, "not an absolute http or https URL"
  end
  scheme = lower(scheme)
  if scheme ~= "http" and scheme ~= "https" then
    return nil, "scheme must be http or https"
  end
  if authority:find("@", 1, true) then
    return nil, "user information in the URL is not supported"
  end
  local host, port, hostport
  if authority:sub(1, 1) == "[" then
    local v6, tail = authority:match("^%[([%x:.]+)%](.*)$")
    if not v6 then
      return nil, "bad IPv6 address in the URL"
    end
    host, port = v6, tail:match("^:(%d+)$")
    if tail ~= "" and not port then
      return nil, "bad port in the URL"
    end
    hostport = "[" .. v6 .. "]"
  else
    host, port = authority:match("^([^:]*):(%d+)$")
    if not host then
      if authority:find(":", 1, true) then
        return nil, "bad port in the URL"
      end
      host = authority
    end
    if not host:match("^[%w.%-_~%%]+$") then
      return nil, "bad host in the URL"
    end
    hostport = host
  end
  local default = scheme == "https" and 443 or 80
  port = port and tonumber(port) or default
  if port < 1 or port > 65535 then
    return nil, "bad port in the URL"
  end
  if port ~= default then
    hostport = hostport .. ":" .. port
  end
  rest = rest:gsub("#.*$", "")
  if rest == "" then
    rest = "/"
  elseif rest:sub(1, 1) == "?" then
    rest = "/" .. rest
  end
  if rest:find("[%z\1-\32\127]") then
    return nil, "the URL's path may not hold spaces or control characters"
  end
  return scheme, host, port, hostport, rest
end

local function check_header(name, value)
  if type(name) ~= "string" or not name:match("^[%w!#$%%&'*+.^_`|~-]+$") then
    return "header name " .. tostring(name) .. " is not a token"
  end
  if type(value) ~= "string" and type(value) ~= "number" then
    return "header " .. name .. " must be a string, not " .. type(value)
  end
  if tostring(value):find("[%z\r\n]") then
    return "header " .. name .. " holds CR, LF or NUL"
  end
end

-- The request head as a list of strings, or nil, why.
local function build_head(method, target, hostport, headers, body, keepalive)
  local out = { method, " ", target, " HTTP/1.1\r\n" }
  local given = {}
  if headers ~= nil then
    for name, value in pairs(headers) do
      local values = type(value) == "table" and value or { value }
      for _, v in ipairs(values) do
        local why = check_header(name, v)
        if why then
          return nil, why
        end
      end
      local lname = lower(name)
      if reserved[lname] then
        return nil, "header " .. name .. " is set from " .. reserved[lname]
      end
      given[lname] = true
      for _, v in ipairs(values) do
        out[#out + 1] = name .. ": " .. tostring(v) .. "\r\n"
      end
    end
  end
  if not given.host then
    out[#out + 1] = "Host: " .. hostport .. "\r\n"
  end
  if not given["user-agent"] then
    out[#out + 1] = "User-Agent: moonport/" .. moonport.version .. "\r\n"
  end
  if not given.connection then
    out[#out + 1] = keepalive and "Connection: keep-alive\r\n" or "Connection: close\r\n"
  end
  if body or method == "POST" or method == "PUT" or method == "PATCH" then
    out[#out + 1] = "Content-Length: " .. (body and #body or 0) .. "\r\n"
  end
  out[#out + 1] = "\r\n"
  return concat(out)
end

-- Read the response from sock with parser p until it is complete.
-- Returns true (and, as its fourth value, whether bytes after the response
-- were read), or nil, err, got (got: some of the response arrived).
local function read_response(sock, p, left)
  local got = false
  while true do
    local ms = left()
    if not ms then
      return nil, "timeout", got
    end
    sock:settimeout(ms)
    local want = p:want(READ_CAP)
    local data, err, partial
    if want == 0 then
      data, err, partial = sock:receive("*l")
      if data then
        data = data .. "\r\n"
      end
    else
      data, err, partial = sock:receive(want)
    end
    if not data then
      if err == "line too long" then
        return nil, "bad response: head too large", true
      elseif err ~= "closed" then
        return nil, err, got or (partial and partial ~= "")
      end
      if partial and partial ~= "" then
        got = true
        local done, perr = p:feed(partial)
        if done then
          return true
        elseif done == nil then
          return nil, perr, true
        end
      end
      local ok, perr = p:eof()
      if ok then
        return true
      end
      return nil, perr, got
    end
    got = true
    local done, perr = p:feed(data)
    if done then
      -- Bytes after the end (a head that ended inside a line): the
      -- connection is out of step and cannot be kept.
      return true, nil, nil, perr > 0
    elseif done == nil then
      return nil, perr, true
    end
  end
end

-- One attempt on one connection. Returns the response, or nil, err,
-- retry (the request may go again on a fresh connection: a reused
-- connection failed before any of the response came).
local function attempt(req, left)
  local sock = moonport.tcp()
  local ms = left()
  if not ms then
    return nil, "timeout"
  end
  sock:settimeout(ms)
  local ok, err = sock:connect(req.host, req.port, req.tls)
  if not ok then
    sock:close()
    return nil, err
  end
  local reused = (sock:getreusedtimes() or 0) > 0
  ms = left()
  if not ms then
    sock:close()
    return nil, "timeout"
  end
  sock:settimeout(ms)
  ok, err = sock:send(req.body and { req.head, req.body } or req.head)
  if not ok then
    sock:close()
    return nil, err, reused
  end
  local p = new_parser(MAX_HEAD, req.max_body, req.method == "HEAD")
  sock:setreceivelimit(MAX_HEAD) -- no line of a head, chunk size or trailer is longer
  local got, extra
  ok, err, got, extra = read_response(sock, p, left)
  if not ok then
    sock:close()
    return nil, err, reused and not got and err ~= "timeout"
  end
  if req.keepalive and p:keepalive() and not extra then
    if not sock:setkeepalive(req.keepalive_timeout, req.keepalive_pool) then
      sock:close()
    end
  else
    sock:close()
  end
  return p:response()
end

-- moonport.http.request{ url =, method =, headers =, body =, timeout =,
-- max_body =, verify =, ca_file =, keepalive =, keepalive_timeout =,
-- keepalive_pool = } -> { status =, headers =, body = } or nil, err
function http.request(opts)
  if type(opts) ~= "table" then
    bad(1, "table expected, got " .. type(opts))
  end
  local url = opts.url
  if type(url) ~= "string" then
    bad(1, "url: string expected, got " .. type(url))
  end
  local scheme, host, port, hostport, target = parse_url(url)
  if not scheme then
    bad(1, "url: " .. host)
  end
  local method = opts.method or "GET"
  if type(method) ~= "string" or not method:match("^[%w!#$%%&'*+.^_`|~-]+$") then
    bad(1, "method must be a token such as \"GET\"")
  end
  local body = opts.body
  if body ~= nil and type(body) ~= "string" then
    bad(1, "body: string expected, got " .. type(body))
  end
  local timeout = opts.timeout or DEFAULT_TIMEOUT
  if type(timeout) ~= "number" or not (timeout > 0 and timeout < 1e12) then
    bad(1, "timeout must be a positive number of milliseconds")
  end
  local max_body = opts.max_body or DEFAULT_MAX_BODY
  if type(max_body) ~= "number" or not (max_body >= 0 and max_body <= 2 ^ 40) then
    bad(1, "max_body must be a number of bytes")
  end
  if opts.headers ~= nil and type(opts.headers) ~= "table" then
    bad(1, "headers: table expected, got " .. type(opts.headers))
  end
  if opts.verify ~= nil and type(opts.verify) ~= "boolean" then
    bad(1, "verify: boolean expected, got " .. type(opts.verify))
  end
  if opts.ca_file ~= nil and type(opts.ca_file) ~= "string" then
    bad(1, "ca_file: string expected, got " .. type(opts.ca_file))
  end
  if opts.keepalive_timeout ~= nil and type(opts.keepalive_timeout) ~= "number" then
    bad(1, "keepalive_timeout: number expected, got " .. type(opts.keepalive_timeout))
  end
  if opts.keepalive_pool ~= nil and type(opts.keepalive_pool) ~= "number" then
    bad(1, "keepalive_pool: number expected, got " .. type(opts.keepalive_pool))
  end
  local keepalive = opts.keepalive ~= false
  local head, why = build_head(method, target, hostport, opts.headers, body, keepalive)
  if not head then
    bad(1, "headers: " .. why)
  end
  local req = {
    host = host, port = port, method = method, head = head, body = body,
    max_body = floor(max_body), keepalive = keepalive,
    keepalive_timeout = opts.keepalive_timeout, keepalive_pool = opts.keepalive_pool,
    tls = scheme == "https" and { tls = true, server_name = host, verify = opts.verify,
                                  ca_file = opts.ca_file } or nil,
  }
  local deadline = now() + timeout / 1000
  local function left()
    local ms = (deadline - now()) * 1000
    return ms >= 1 and ceil(ms) or nil
  end
  local res, err, retry = attempt(req, left)
  if not res and retry and idempotent[method] then
    res, err = attempt(req, left)
  end
  return res, err
end

return http
