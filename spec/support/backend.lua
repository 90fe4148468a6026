-- backend: start one of the Python backends in spec/support, which write
-- the port (or "port port2") they listen on to a file once they listen.
-- Returns the port, the second port or nil, and the pid (kill it when done).
--
--   local backend = require "support.backend"
--   local port, tls_port, pid = backend(dir, "http", "spec/support/httpbackend.py", args)
local testing = require "moonport.testing"

return function(dir, name, script, args)
    local portfile = dir .. "/" .. name .. ".port"
    local p = io.popen("python3 " .. script .. " " .. testing.quote(portfile) .. " " ..
        (args or "") .. " >/dev/null 2>&1 & echo $!")
    local pid = tonumber(p:read("*l"))
    p:close()
    assert(testing.eventually(function() return testing.read_file(portfile) end, 10),
        "backend " .. name .. " did not start")
    local a, b = testing.read_file(portfile):match("(%d+) ?(%d*)")
    return tonumber(a), tonumber(b), pid
end
