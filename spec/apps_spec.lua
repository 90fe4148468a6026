-- The example apps that ship in apps/, served as they are: what each one's
-- header comment promises is what a client sees.
local testing = require "moonport.testing"

local function cwd()
    local p = assert(io.popen("pwd"))
    local d = p:read("*l")
    p:close()
    return d
end

-- A binary message to an app that speaks text: the server's close frame
-- with 1003, then the closing handshake.
local function expect_close_1003(ws)
    local f = ws:receive(5)
    assert(f, "no close frame")
    assert.equal(8, f.opcode)
    assert.equal(1003, f.code)
    assert(ws:close(1003))
    assert.is_true(ws:is_closed(5))
    ws:shutdown()
end

describe("shipped apps", function()
    local server

    local function connect(path, opts)
        local ws, response, err_response = server:connect(path, opts)
        assert(ws, "connecting to " .. path .. ": " .. tostring(response) .. "\n" ..
            tostring(err_response and err_response.raw))
        return ws, response
    end

    local function recv(ws)
        local data, kind, code, reason = ws:receive_message(5)
        assert(data, "expected a message, got " .. tostring(kind) .. " " .. tostring(code) ..
            " " .. tostring(reason))
        return data, kind
    end

    local function bye(ws)
        ws:close(1000)
        ws:expect_close(2)
        ws:shutdown()
    end

    local function start(opts)
        local err, stderr
        server, err, stderr = testing.start(opts)
        assert(server, tostring(err) .. "\n" .. tostring(stderr))
    end

    local function stop()
        if server then
            server:cleanup()
            server = nil
        end
    end

    describe("from apps/", function()
        -- MOONPORT_AUTH_TOKEN unset: auth.lua uses its default token.
        setup(function()
            start {apps_dir = "apps", env = "env -u MOONPORT_AUTH_TOKEN"}
        end)
        teardown(stop)

        describe("echo", function()
            it("echoes text as text", function()
                local ws = connect("/echo")
                assert(ws:send("hello, héllo"))
                local data, kind = recv(ws)
                assert.equal("hello, héllo", data)
                assert.equal("text", kind)
                bye(ws)
            end)

            it("echoes binary as binary, bytes unchanged", function()
                local ws = connect("/echo")
                local bytes = "\0\1\2\127\128\254\255"
                assert(ws:send(bytes, "binary"))
                local data, kind = recv(ws)
                assert.equal(bytes, data)
                assert.equal("binary", kind)
                bye(ws)
            end)

            it("echoes each message of a sequence, in order, with its kind", function()
                local ws = connect("/echo")
                assert(ws:send("one"))
                assert(ws:send("two", "binary"))
                assert(ws:send("three"))
                assert.same({"one", "text"}, {recv(ws)})
                assert.same({"two", "binary"}, {recv(ws)})
                assert.same({"three", "text"}, {recv(ws)})
                bye(ws)
            end)
        end)

        describe("chat", function()
            it("two clients see the joins, each other's messages and the leave notice",
                function()
                    local alice = connect("/chat?name=alice")
                    assert.equal("* alice joined", recv(alice))
                    local bob = connect("/chat?name=bob")
                    assert.equal("* bob joined", recv(bob))
                    assert.equal("* bob joined", recv(alice))

                    assert(alice:send("hi bob"))
                    assert.equal("alice: hi bob", recv(alice))
                    assert.equal("alice: hi bob", recv(bob))
                    assert(bob:send("hi alice"))
                    assert.equal("bob: hi alice", recv(bob))
                    assert.equal("bob: hi alice", recv(alice))

                    bye(bob)
                    assert.equal("* bob left", recv(alice))
                    bye(alice)
                end)

            it("names a client without ?name= guest<id>", function()
                local ws = connect("/chat")
                local notice = recv(ws)
                assert.truthy(notice:match("^%* guest%d+ joined$"), notice)
                bye(ws)
            end)

            it("closes a client that sends binary with 1003", function()
                local ws = connect("/chat?name=binary")
                assert.equal("* binary joined", recv(ws))
                assert(ws:send("\1\2", "binary"))
                expect_close_1003(ws)
            end)
        end)

        describe("auth", function()
            it("refuses a handshake without a token: 401 with WWW-Authenticate, no upgrade",
                function()
                    local ws, err, response = server:connect("/auth")
                    assert.is_nil(ws, "accepted without a token")
                    assert(response, tostring(err))
                    assert.equal(401, response.status)
                    assert.truthy(response.headers["www-authenticate"],
                        "no WWW-Authenticate:\n" .. response.raw)
                    assert.is_nil(response.headers["sec-websocket-accept"])
                end)

            it("refuses a wrong token: 401 with WWW-Authenticate", function()
                local ws, err, response = server:connect("/auth?token=let-me-out")
                assert.is_nil(ws, "accepted with a wrong token")
                assert(response, tostring(err))
                assert.equal(401, response.status)
                assert.truthy(response.headers["www-authenticate"])
            end)

            it("accepts the right token: a welcome, then an echo", function()
                local ws = connect("/auth?token=let-me-in&user=ada")
                assert.equal("welcome, ada", recv(ws))
                assert(ws:send("echo me"))
                assert.same({"echo me", "text"}, {recv(ws)})
                assert(ws:send("\0\255", "binary"))
                assert.same({"\0\255", "binary"}, {recv(ws)})
                bye(ws)
            end)

            it("welcomes a user without ?user= as anonymous", function()
                local ws = connect("/auth?token=let-me-in")
                assert.equal("welcome, anonymous", recv(ws))
                bye(ws)
            end)
        end)

        describe("rpc (JSON through lua-cjson)", function()
            -- Answers are compared decoded: JSON does not fix key order.
            local cjson = require "cjson"

            local function call(ws, text)
                assert(ws:send(text))
                local data, kind = recv(ws)
                assert.equal("text", kind)
                return cjson.decode(data), data
            end

            it("answers calls with their ids and results", function()
                local ws = connect("/rpc")
                assert.same({id = 1, result = 5},
                    call(ws, '{"id": 1, "method": "add", "params": [2, 3]}'))
                assert.same({id = "b", result = {k = {"v", 2}, ["é"] = true}},
                    call(ws, '{"id": "b", "method": "echo", "params": [{"k": ["v", 2], "é": true}]}'))
                assert.same({id = 3, result = 3}, call(ws, '{"id": 3, "method": "count"}'))
                bye(ws)
            end)

            it("answers a bad call with an error and keeps the connection", function()
                local ws = connect("/rpc")
                local answer, raw = call(ws, '{"id": 7, "method": "nope"}')
                assert.equal(7, answer.id)
                assert.truthy(answer.error:match("unknown method nope"), raw)
                answer, raw = call(ws, '{"id": 8, "method": "add", "params": [1, "x"]}')
                assert.equal(8, answer.id)
                assert.truthy(answer.error:match("param 2 is not a number"), raw)
                answer, raw = call(ws, "{not json")
                assert.equal(cjson.null, answer.id, raw)
                assert.equal("not a JSON object", answer.error)
                -- Every message counts, the bad ones too.
                assert.same({id = 9, result = 4}, call(ws, '{"id": 9, "method": "count"}'))
                bye(ws)
            end)

            it("pushes n ticks with ws:every after a tick call, then stops", function()
                local ws = connect("/rpc")
                assert.same({id = 1, result = "started"},
                    call(ws, '{"id": 1, "method": "tick", "params": [0.02, 3]}'))
                for n = 1, 3 do
                    local data = recv(ws)
                    assert.same({tick = n}, cjson.decode(data))
                end
                local more, err = ws:receive_message(0.2)
                assert.is_nil(more, "a fourth tick: " .. tostring(more))
                assert.equal("timeout", err)
                local answer, raw = call(ws, '{"id": 2, "method": "tick", "params": [0, 3]}')
                assert.truthy(answer.error:match("seconds must be"), raw)
                -- A long ticker, then the connection closes: the server
                -- lives on (the timer went with the connection).
                assert.same({id = 3, result = "started"},
                    call(ws, '{"id": 3, "method": "tick", "params": [0.01, 1000]}'))
                assert.same({tick = 1}, cjson.decode((recv(ws))))
                ws:shutdown()
                local other = connect("/rpc")
                assert.same({id = 4, result = 5},
                    call(other, '{"id": 4, "method": "add", "params": [2, 3]}'))
                bye(other)
            end)

            it("closes a client that sends binary with 1003", function()
                local ws = connect("/rpc")
                assert(ws:send("{}", "binary"))
                expect_close_1003(ws)
            end)
        end)

        it("still serves after these cases", function()
            assert.is_true(server:alive())
            local ws = connect("/echo")
            assert(ws:send("last"))
            assert.equal("last", recv(ws))
            bye(ws)
        end)
    end)

    describe("auth with MOONPORT_AUTH_TOKEN set", function()
        setup(function()
            start {apps_dir = "apps", env = "MOONPORT_AUTH_TOKEN=s3cret"}
        end)
        teardown(stop)

        it("accepts that token and refuses the default one", function()
            local ws = connect("/auth?token=s3cret")
            assert.equal("welcome, anonymous", recv(ws))
            bye(ws)
            local none, _, response = server:connect("/auth?token=let-me-in")
            assert.is_nil(none, "the default token still works")
            assert.equal(401, response and response.status)
        end)
    end)

    describe("chat at /rooms/:room from a config route", function()
        setup(function()
            start {
                apps_dir = false,
                config = "return { routes = { ['/rooms/:room'] = " ..
                    string.format("%q", cwd() .. "/apps/chat.lua") .. " } }",
            }
        end)
        teardown(stop)

        it("keeps each room's messages in that room", function()
            local red = connect("/rooms/red?name=ann")
            assert.equal("* ann joined", recv(red))
            local blue = connect("/rooms/blue?name=ben")
            assert.equal("* ben joined", recv(blue))
            assert(red:send("only red"))
            assert.equal("ann: only red", recv(red))
            assert(blue:send("only blue"))
            assert.equal("ben: only blue", recv(blue))
            bye(red)
            bye(blue)
        end)
    end)
end)
