-- Reload must not cost memory (README "Hot reload"): 2,000 reloads under
-- echoing connections, against the real binary, with the server's RSS read
-- from /proc. SIGHUP makes each reload immediate (no settle time for the
-- file watch), and each waits for its own log line, so the count is exact
-- and nothing depends on timing. With one worker and with --workers 2
-- (RSS summed over the workers).
local testing = require "moonport.testing"
local quote = testing.quote
local write_file = testing.write_file
local socket = require "socket"

local RELOADS = 2000
local SETTLED = 500 -- reloads after which the heap has found its size
-- Growth allowed from reload SETTLED to RELOADS, in KiB. Measured with the
-- app below (4 echoing connections): while the machine code LuaJIT compiled
-- for old versions stayed mapped, RSS grew by ~1.2 KiB per reload, +1,772
-- KiB over these 1,500 (+2,400 under ASan); since it is flushed after each
-- reload, by -92 to +76 KiB in 7 runs (bin/moonport and ASan): the heap
-- settling. 384 KiB is five times that noise and a fifth of the leak.
local MAX_GROWTH_KIB = 384

-- Each version runs hot loops at module level, as an app that builds a
-- table at load does: LuaJIT compiles them into traces of that version's
-- own code, which die with it. The handler is compiled too, under load.
local function version(tag)
    return (([[
local squares, words, sum = {}, {}, 0
for i = 1, 2000 do squares[i] = i * i end
for i = 1, 2000 do words[i] = "w" .. (i % 50) end
for i = 1, 2000 do sum = sum + squares[i] % 7 end
local app = {squares = squares, words = words, sum = sum}
function app.on_message(ws, data) ws:send("TAG " .. data) end
return app
]]):gsub("TAG", tag))
end

local function lit(s)
    return (s:gsub("%p", "%%%0"))
end

-- Reads the server's stderr as it grows: each wait looks only at what came
-- since the last match, so 2,000 waits do not reread the whole log.
local function log_follower(server)
    local path, pos, pending = server.dir .. "/stderr", 0, ""
    return function(pattern, timeout)
        local deadline = socket.gettime() + timeout
        repeat
            local f = io.open(path, "rb")
            if f then
                f:seek("set", pos)
                local more = f:read("*a") or ""
                f:close()
                pos = pos + #more
                pending = pending .. more
            end
            local _, stop = pending:find(pattern)
            if stop then
                pending = pending:sub(stop + 1)
                return true
            end
            pending = pending:match("[^\n]*$") -- only a partial line can match later
            socket.sleep(0.001)
        until socket.gettime() > deadline
        return false
    end
end

describe("hot reload memory", function()
    local server, load

    after_each(function()
        if server then
            server:cleanup()
            server = nil
        end
        if load then
            load:close()
            load = nil
        end
    end)

    -- With workers, RSS is that of all of them, and each reload is done
    -- when every worker has logged it (worker 1 at info, the others at
    -- debug: the log level is debug then).
    local function rss_of(srv, workers)
        if workers == 1 then
            return srv:rss_kib()
        end
        local f = assert(io.open("/proc/" .. srv.pid .. "/task/" .. srv.pid .. "/children"))
        local pids = f:read("*a")
        f:close()
        local sum, n = 0, 0
        for pid in pids:gmatch("%d+") do
            local st = assert(io.open("/proc/" .. pid .. "/status"))
            sum = sum + tonumber(st:read("*a"):match("VmRSS:%s*(%d+)"))
            st:close()
            n = n + 1
        end
        assert.are.equal(workers, n)
        return sum
    end

    for _, workers in ipairs({1, 2}) do
    it("stays flat over " .. RELOADS .. " reloads under echoing connections, " .. workers ..
       " worker(s)", function()
        -- Under ASan, freed memory sits in a quarantine (256 MiB by
        -- default) and would read as growth: no quarantine here. Other
        -- binaries ignore the variable.
        local err
        server, err = testing.start {
            apps = {echo = version("A")},
            args = {"--reload", "off", -- only SIGHUP reloads: one per signal
                    "--workers", tostring(workers), "--log-level", workers > 1 and "debug" or "info"},
            env = 'ASAN_OPTIONS="${ASAN_OPTIONS:-}:quarantine_size_mb=0"',
        }
        assert(server, err)
        local file = server.apps_dir .. "/echo.lua"
        local stop_file = server.dir .. "/stop-load"
        load = assert(io.popen(table.concat({"/usr/bin/python3", "spec/reload/echo_load.py",
                                             server.host, server.port, "/echo", 4,
                                             quote(stop_file), 120, "2>&1"}, " ")))
        local ready = load:read("*l")
        local wait_log = log_follower(server)
        local rss = {}
        local ok, why = pcall(function()
            assert.are.equal("ready", ready)
            for n = 2, RELOADS + 1 do
                -- A new tag each time, so the load sees the reloads reach it.
                write_file(file, version(n % 2 == 0 and "B" or "A"))
                assert(server:signal("HUP"))
                for _ = 1, workers do
                    assert(wait_log("reload echo %(" .. lit(file) .. "%) v" .. n .. " ok", 10),
                           "reload " .. n .. " not done within 10 s:\n" .. server:stderr())
                end
                if n - 1 == SETTLED then
                    rss.settled = rss_of(server, workers)
                end
            end
            rss.last = rss_of(server, workers)
        end)
        write_file(stop_file, "")
        local output = (ready or "") .. "\n" .. load:read("*a")
        local load_ok = load:close()
        load = nil
        io.stderr:write(string.format(
            "\n[reload_memory_spec] %d worker(s): RSS after %d reloads: %s KiB, after %d: %s KiB (%+d KiB)\n" ..
            "[reload_memory_spec] echo_load: %s\n", workers, SETTLED, tostring(rss.settled), RELOADS,
            tostring(rss.last), (rss.last or 0) - (rss.settled or 0),
            output:gsub("^ready\n", "")))
        assert(ok, why)
        assert.is_true(rss.last - rss.settled < MAX_GROWTH_KIB * workers,
                       string.format("RSS grew by %d KiB from reload %d (%d KiB) to %d (%d KiB)",
                                     rss.last - rss.settled, SETTLED, rss.settled, RELOADS,
                                     rss.last))
        -- The load saw every reply and every reload, and lost no connection.
        assert.is_truthy(load_ok, output)
        assert.matches("conns=4 open_to_end=4 ", output)
        assert.matches("extra=0 switched=4 ", output)
        assert.is_nil(server:stderr():find("failed"))
        assert.is_true(server:alive())
    end)
    end
end)
