-- The benchmark's routes on top of the apps directory given on the command
-- line (bench/run serves apps/ and this): /broadcast for the fan-out test
-- (topics: ws:publish), /broadcast-loop for the same fan-out as a Lua loop
-- of ws:send.
-- No access log: the peers' configurations have none either (nginx's
-- access_log is off), and a line per handshake would be counted in churn
-- and the conns rows.
return {
  routes = { ["/broadcast"] = "apps/broadcast.lua", ["/broadcast-loop"] = "apps/broadcast_loop.lua" },
  log = { level = "error", access = false },
}
