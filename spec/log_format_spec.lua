-- log.format = "json" (README "Operating moonport", log formats): the
-- access log as one JSON object per line, through the real binary. Every
-- line stdout gets is parsed by Python's json module, also when the path
-- or the close reason holds quotes, backslashes, control characters,
-- invalid UTF-8 or many kilobytes; the fields are those of the text line
-- (which stays as it was: spec/logs_spec.lua), plus the time, the route
-- and the close frame's reason.
local testing = require "moonport.testing"
local socket = require "socket"

local ECHO = [[
local app = {}
function app.on_message(ws, data, kind) ws:send(data, kind) end
return app
]]

-- Parse every line of text as JSON (strictly: no NaN, the whole line one
-- object), and give back each object re-encoded with ASCII escapes and
-- sorted keys, one per line; or nil and Python's complaint.
local function parse_lines(text)
    local dir = testing.temp_dir()
    testing.write_file(dir .. "/log.txt", text)
    local status, out = testing.capture("python3 -c " .. testing.quote([[
import json, sys
def strict(c):
    raise ValueError("not JSON: " + c)
n = 0
for i, line in enumerate(open(sys.argv[1], "rb").read().split(b"\n")[:-1]):
    obj = json.loads(line.decode("utf-8"), parse_constant=strict)
    assert isinstance(obj, dict), "line %d is not an object" % i
    print(json.dumps(obj, sort_keys=True, ensure_ascii=True))
    n += 1
print("lines:", n)
]]) .. " " .. testing.quote(dir .. "/log.txt"))
    os.execute("rm -rf " .. testing.quote(dir))
    if status ~= 0 then return nil, out end
    return out
end

local function find_line(objs, ...)
    for line in objs:gmatch("[^\n]+") do
        local all = true
        for _, part in ipairs { ... } do
            if not line:find(part, 1, true) then all = false end
        end
        if all then return line end
    end
    return nil
end

describe("log.format = \"json\"", function()
    local server
    setup(function()
        server = assert(testing.start { apps = { echo = ECHO },
            config = 'return { apps = "apps", log = { format = "json" }, ' ..
                'timeouts = { handshake = 0.3 } }' })
    end)
    teardown(function() server:cleanup() end)

    it("writes every access log event as one JSON object per line, escaped", function()
        -- A session with counts each way and a close reason full of
        -- characters that need escaping.
        local ws = assert(server:connect("/echo"))
        assert(ws:send("hello"))
        assert.are.equal("hello", (ws:receive_message(5)))
        assert(ws:send(string.rep("b", 300), "binary"))
        assert(ws:receive_message(5))
        assert(ws:close(4000, 'q"uo\\te\1\t\127 é'))
        assert.are.equal(4000, (ws:expect_close(5)))
        ws:shutdown()
        -- Requests whose path has invalid UTF-8, quotes and backslashes, a
        -- control character, and many kilobytes.
        local function raw(target)
            local c = assert(socket.connect("127.0.0.1", server.port))
            c:settimeout(5)
            c:send("GET " .. target .. " HTTP/1.1\r\nHost: x\r\n\r\n")
            local got = c:receive("*l")
            c:close()
            return got
        end
        raw('/no\255"\\where')
        raw("/ctl\1x")
        raw("/" .. string.rep("a", 3000) .. string.rep("\255", 3000))
        -- A handshake that never finishes.
        local idle = assert(socket.connect("127.0.0.1", server.port))
        assert(server:wait_log('"event":"WSTIMEOUT"', 5))
        idle:close()
        assert(server:wait_log('"event":"WSREJECT".-"id":5', 5), server:stdout())

        local objs, err = parse_lines(server:stdout())
        assert(objs, err)
        -- Nothing but JSON lines on stdout.
        local n = tonumber(objs:match("lines: (%d+)"))
        assert.are.equal(select(2, server:stdout():gsub("\n", "")), n)

        assert.truthy(find_line(objs, '"event": "WSCONNECTING"', '"path": "/echo"',
            '"route": "/echo"', '"id": 1,'), objs)
        assert.truthy(find_line(objs, '"event": "WSCONNECT"', '"id": 1,'), objs)
        local bye = find_line(objs, '"event": "WSDISCONNECT"', '"id": 1,')
        assert.truthy(bye, objs)
        for _, part in ipairs { '"code": 4000', '"msgs_in": 2', '"bytes_in": 305', '"msgs_out": 2',
            '"bytes_out": 305', '"close_reason": "q\\"uo\\\\te\\u0001\\t\\u007f \\u00e9"',
            '"client": "127.0.0.1:', '"duration": ', '"time": "20' } do
            assert.truthy(bye:find(part, 1, true), part .. " in " .. bye)
        end
        assert.truthy(find_line(objs, '"event": "WSREJECT"', '"path": "/no\\ufffd\\"\\\\where"',
            '"status": 404', '"reason": "no route"'), objs)
        -- The control character: llhttp refuses the request line.
        assert.truthy(find_line(objs, '"event": "WSREJECT"', '"status": 400'), objs)
        -- The long path is cut, the line still valid.
        local long = find_line(objs, '"event": "WSREJECT"', '"path": "/aaaa')
        assert.truthy(long, objs)
        assert.is_true(#long < 8192)
        assert.truthy(find_line(objs, '"event": "WSTIMEOUT"',
            '"reason": "handshake not complete after 0.3s"'), objs)
        assert.is_true(server:alive())
    end)
end)

describe("log.format", function()
    it("is text or json, nothing else", function()
        local s, why, err = testing.start { apps = { echo = ECHO },
            config = 'return { apps = "apps", log = { format = "xml" } }' }
        assert.is_nil(s)
        assert.truthy(err:find('log.format must be "text" or "json", not "xml"', 1, true),
            tostring(why) .. ": " .. err)
    end)
end)
