-- Many messages in one read: the server hands them to on_message together
-- (one protected call per batch), and this must look exactly like one call
-- per message: the same order of outgoing frames, an error or a ws:close()
-- in one message stops the rest, fragments and kinds survive. Each case
-- sends its frames in one write, so that they arrive in one read.
local testing = require "moonport.testing"
local client = require "moonport.client"

-- Messages are "tag:body". The app records every body that reaches it, per
-- tag; "ask:TAG" answers with that record.
local BATCH = [[
local app = {}
local seen = {}
function app.on_message(ws, data, kind)
  local tag, body = data:match("^([^:]*):(.*)$")
  if tag == "ask" then
    ws:send(table.concat(seen[body] or {}, ","), "binary")
    return
  end
  seen[tag] = seen[tag] or {}
  table.insert(seen[tag], body)
  if body == "raise" then error("boom in batch") end
  if body == "close" then ws:close(4000, "app closed"); return end
  if body:sub(1, 6) == "astext" then ws:send(data, "text"); return end
  ws:send(data, kind)
end
return app
]]

local function frame(payload, opcode, fin)
    return client.encode_frame {opcode = opcode or "text", payload = payload, fin = fin}
end

describe("messages that arrive together", function()
    local server

    setup(function()
        local err, stderr
        server, err, stderr = testing.start {apps = {batch = BATCH}}
        assert(server, tostring(err) .. "\n" .. tostring(stderr))
    end)

    teardown(function()
        if server then
            server:cleanup()
        end
    end)

    local function open()
        local ws, err = server:connect("/batch")
        assert(ws, tostring(err))
        return ws
    end

    -- What reached on_message for tag, asked on a new connection.
    local function seen(tag)
        local ws = open()
        assert(ws:send("ask:" .. tag))
        local answer = ws:receive_message(5)
        ws:shutdown()
        return answer
    end

    it("are all echoed in order, also more than one batch holds", function()
        local ws = open()
        local bytes = {}
        for i = 1, 200 do
            bytes[i] = frame("n:" .. i)
        end
        assert(ws:send_raw(table.concat(bytes)))
        for i = 1, 200 do
            assert.equal("n:" .. i, (ws:receive_message(5)))
        end
        ws:shutdown()
    end)

    it("an error in the 3rd of 5 closes with 1011 after echoing the first two; " ..
        "the 4th and 5th never reach the app", function()
        local ws = open()
        assert(ws:send_raw(frame("e:m1") .. frame("e:m2") .. frame("e:raise") ..
            frame("e:m4") .. frame("e:m5")))
        assert.equal("e:m1", (ws:receive_message(5)))
        assert.equal("e:m2", (ws:receive_message(5)))
        local data, what, code = ws:receive_message(5)
        assert.is_nil(data)
        assert.equal("close", what)
        assert.equal(1011, code)
        ws:close(1011)
        ws:shutdown()
        assert(server:wait_log("boom in batch", 5), "not logged:\n" .. server:stderr())
        assert.equal("m1,m2,raise", seen("e"))
        assert.is_true(server:alive())
    end)

    it("ws:close() in the 2nd of 5 stops the rest", function()
        local ws = open()
        assert(ws:send_raw(frame("c:m1") .. frame("c:close") .. frame("c:m3") ..
            frame("c:m4") .. frame("c:m5")))
        assert.equal("c:m1", (ws:receive_message(5)))
        local data, what, code, reason = ws:receive_message(5)
        assert.is_nil(data)
        assert.equal("close", what)
        assert.equal(4000, code)
        assert.equal("app closed", reason)
        ws:close(4000)
        ws:shutdown()
        assert.equal("m1,close", seen("c"))
    end)

    it("a ping between messages is answered between their echoes", function()
        local ws = open()
        assert(ws:send_raw(frame("p:m1") .. frame("p:m2") .. frame("x", "ping") ..
            frame("p:m3")))
        local want = {{1, "p:m1"}, {1, "p:m2"}, {10, "x"}, {1, "p:m3"}}
        for _, w in ipairs(want) do
            local f = assert(ws:receive(5))
            assert.equal(w[1], f.opcode)
            assert.equal(w[2], f.payload)
        end
        ws:shutdown()
    end)

    it("a protocol error after two messages: both are echoed, then 1002", function()
        local ws = open()
        assert(ws:send_raw(frame("f:m1") .. frame("f:m2") .. frame("bad", 3) .. frame("f:m3")))
        assert.equal("f:m1", (ws:receive_message(5)))
        assert.equal("f:m2", (ws:receive_message(5)))
        local data, what, code = ws:receive_message(5)
        assert.is_nil(data)
        assert.equal("close", what)
        assert.equal(1002, code)
        ws:shutdown()
        assert.equal("m1,m2", seen("f"))
    end)

    it("a fragmented message among whole ones, and kinds, arrive intact", function()
        local ws = open()
        assert(ws:send_raw(frame("g:ab", "text", false) .. frame("cd", "continuation", true) ..
            frame("g:\0\255", "binary") .. frame("g:m3") ..
            frame("g:x", "binary", false) .. frame("yz", "continuation", true)))
        local want = {{"g:abcd", "text"}, {"g:\0\255", "binary"}, {"g:m3", "text"},
            {"g:xyz", "binary"}}
        for _, w in ipairs(want) do
            local data, kind = ws:receive_message(5)
            assert.equal(w[1], data)
            assert.equal(w[2], kind)
        end
        ws:shutdown()
    end)

    it("a binary message sent back as text is checked as UTF-8, next to checked text", function()
        local ws = open()
        assert(ws:send_raw(frame("u:astext ok") .. frame("u:astext\255", "binary") ..
            frame("u:m3")))
        assert.equal("u:astext ok", (ws:receive_message(5)))
        local data, what, code = ws:receive_message(5)
        assert.is_nil(data)
        assert.equal("close", what)
        assert.equal(1011, code)
        ws:shutdown()
        assert(server:wait_log("not valid UTF%-8", 5), "not logged:\n" .. server:stderr())
        assert.equal("astext ok,astext\255", seen("u"))
    end)
end)
