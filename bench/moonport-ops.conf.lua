-- bench/moonport.conf.lua with the operator's features of issue 13 on, to
-- show what they cost the message path (`BENCH_CONFIG=bench/moonport-ops.conf.lua
-- make bench`): the admin listener (metrics are always counted; this also
-- serves them), a trusted proxy range, an Origin allow-list (loadgen sends no
-- Origin, which is allowed), and per-connection rate limits set far above
-- what the load sends, so that every message is charged and none is held.
local config = dofile("bench/moonport.conf.lua")
config.admin = "127.0.0.1:0"
config.proxy = { trusted = { "10.0.0.0/8" } }
config.origins = { "https://bench.example" }
config.limits = {
  messages_per_second = 1e8,
  bytes_per_second = 1e12,
  max_connections_per_ip = 1000000,
}
return config
