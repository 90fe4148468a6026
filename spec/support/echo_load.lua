-- echo_load: 1,000 connections echoing 64 B messages, one in flight each,
-- for 3 s, from build/bench/loadgen against a server's route; for the
-- specs that show other connections are still served while something
-- waits. Fails the test if the load generator found a wrong or missing
-- echo; prints p99 and p99.9 under "[spec] tag" and never asserts a timing.
--
--   local echo_load = require "support.echo_load"
--   echo_load(server, "/echo", "wait_spec", "1,000 echoing, nobody waits")
local testing = require "moonport.testing"
local assert = require "luassert"

return function(server, path, spec, tag)
    local dir = testing.temp_dir()
    local cmd = "build/bench/loadgen echo -c 1000 -p 1 -s 64 --text -d 3 -w 0 --json --url " ..
        "ws://127.0.0.1:" .. server.port .. path .. " > " .. dir .. "/out 2>&1; echo $? > " ..
        dir .. "/rc"
    os.execute("(" .. cmd .. ") &")
    assert.truthy(testing.eventually(function() return testing.read_file(dir .. "/rc") end, 60))
    local rc, out = testing.read_file(dir .. "/rc"), testing.read_file(dir .. "/out")
    os.execute("rm -rf " .. testing.quote(dir))
    assert.are.equal("0\n", rc, out)
    io.stderr:write(string.format("\n[%s] %s: p99 %s us, p99.9 %s us\n", spec, tag,
        out:match('"p99_us": ([%d.]+)') or "?", out:match('"p999_us": ([%d.]+)') or "?"))
end
