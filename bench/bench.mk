# bench.mk: the benchmark tools and their targets, included by the top
# Makefile. `make bench` runs the standard matrix against bin/moonport,
# `make bench-peers` the same matrix against nginx+Lua, Node ws and Python
# websockets, `make bench-test` checks that the tools catch a wrong server,
# `make bench-callgrind` counts moonport's instructions per echoed message,
# `make bench-redis` a handler doing one Redis GET per message, moonport next
# to OpenResty with lua-resty-redis, `make bench-floor` what one loopback
# write costs the writer here (bench/write_floor.c), `make bench-alternate`
# the echo rows in alternating rounds beside uWebSockets and a control build.
# The tools are built with -O2 and no sanitizers: they must outrun the server.

BENCH_CFLAGS := -std=c11 -D_GNU_SOURCE -O2 -g $(WARN)
BENCH_TOOLS  := build/bench/loadgen build/bench/codec_bench

build/bench/write_floor: bench/write_floor.c
	@mkdir -p $(@D)
	$(CC) $(BENCH_CFLAGS) -o $@ $<

build/bench/loadgen: bench/loadgen.c
	@mkdir -p $(@D)
	$(CC) $(BENCH_CFLAGS) -o $@ $< -lcrypto

# The codec micro-benchmark links the pure codec and nothing else.
build/bench/codec_bench: bench/codec_bench.c src/ws_frame.c src/ws_utf8.c src/ws_frame.h src/ws_utf8.h
	@mkdir -p $(@D)
	$(CC) $(BENCH_CFLAGS) -Isrc -o $@ bench/codec_bench.c src/ws_frame.c src/ws_utf8.c

.PHONY: bench bench-peers bench-test bench-callgrind bench-compare bench-redis bench-floor bench-alternate
bench: all $(BENCH_TOOLS)
	@bash bench/run

bench-peers: all $(BENCH_TOOLS)
	@bash bench/peers

bench-redis: all build/bench/loadgen
	@bash bench/redis_get

bench-floor: build/bench/write_floor
	@build/bench/write_floor 1000 700 100 4
	@build/bench/write_floor 1000 70 1000 4

bench-test: all $(BENCH_TOOLS)
	@bash bench/test_loadgen.sh

bench-callgrind: all build/bench/loadgen
	@bash bench/callgrind

# Instructions and system calls per echoed message, moonport next to a
# uWebSockets echo server when UWS_BIN names one (see bench/README.md).
bench-compare: all build/bench/loadgen
	@bash bench/compare

# The echo rows in alternating rounds, every server started once: the
# comparison with uWebSockets (UWS_BIN) and an earlier build (CONTROL_BIN)
# that holds on a machine whose samples drift by ±10%.
bench-alternate: all build/bench/loadgen
	@bash bench/alternate
