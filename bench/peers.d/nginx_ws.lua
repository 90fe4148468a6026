-- nginx_ws: the echo and broadcast apps of the nginx peer, written the way
-- OpenResty apps are: one handler per request that reads and writes in a
-- blocking style on cosockets (lua-resty-websocket, which Debian ships as
-- nginx.websocket.server). A cosocket belongs to its request, so the
-- broadcast cannot write to other connections itself: it queues the message
-- for each subscriber and wakes that subscriber's writer with a semaphore.
local server = require "nginx.websocket.server"
local semaphore = require "ngx.semaphore"

local M = {}
local OPTS = { timeout = 3600 * 1000, max_payload_len = 16 * 1024 * 1024 }

local function handshake()
  local wb, err = server:new(OPTS)
  if not wb then
    ngx.log(ngx.ERR, "websocket handshake: ", err)
    return ngx.exit(400)
  end
  return wb
end

-- Every message back to its sender, with its kind.
function M.echo()
  local wb = handshake()
  while true do
    local data, typ, code = wb:recv_frame()
    if not data then
      return ngx.exit(444) -- the client is gone, or broke the protocol
    end
    local ok, err = true, nil
    if typ == "text" then
      ok, err = wb:send_text(data)
    elseif typ == "binary" then
      ok, err = wb:send_binary(data)
    elseif typ == "ping" then
      ok, err = wb:send_pong(data)
    elseif typ == "close" then
      wb:send_close(code or 1000, "")
      return ngx.exit(ngx.OK)
    end
    if not ok then
      ngx.log(ngx.ERR, "send: ", err)
      return ngx.exit(444)
    end
  end
end

-- Every message to every other connection on /broadcast.
local members = {} -- member -> true
local CLOSE = {}   -- a queue entry that tells the writer to close

local function push(m, data, typ)
  local t = m.tail + 1
  m.tail = t
  m.data[t] = data
  m.kind[t] = typ
  m.sema:post(1)
end

function M.broadcast()
  local wb = handshake()
  local me = { sema = semaphore.new(0), data = {}, kind = {}, head = 1, tail = 0 }
  members[me] = true

  -- A light thread reads; the request's own thread writes. A cosocket may
  -- have one of each at a time.
  local reader = ngx.thread.spawn(function()
    while true do
      local data, typ, code = wb:recv_frame()
      if not data then
        return push(me, CLOSE, nil)
      elseif typ == "text" or typ == "binary" then
        for m in pairs(members) do
          if m ~= me then push(m, data, typ) end
        end
      elseif typ == "ping" then
        push(me, data, "pong")
      elseif typ == "close" then
        return push(me, CLOSE, code or 1000)
      end
    end
  end)

  while true do
    local ok = me.sema:wait(3600)
    if ok then
      local h = me.head
      local data, typ = me.data[h], me.kind[h]
      me.data[h], me.kind[h] = nil, nil
      me.head = h + 1
      if data == CLOSE then
        members[me] = nil
        if typ then wb:send_close(typ, "") end
        return ngx.exit(ngx.OK)
      end
      local sent, err
      if typ == "text" then
        sent, err = wb:send_text(data)
      elseif typ == "binary" then
        sent, err = wb:send_binary(data)
      else
        sent, err = wb:send_pong(data)
      end
      if not sent then
        members[me] = nil
        ngx.thread.kill(reader)
        ngx.log(ngx.ERR, "send: ", err)
        return ngx.exit(444)
      end
    end
  end
end

return M
