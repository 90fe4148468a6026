# moonport's build. `make` builds bin/moonport; `make run` serves apps/
# (`make run ARGS="--port 9000 myapps"` passes other arguments);
# `make test` runs every test (unit, fuzz, specs, specs under ASan+UBSan).

PREFIX     ?= /usr/local
BINDIR     ?= $(PREFIX)/bin
LUADIR     ?= $(PREFIX)/share/lua/5.1
CC         ?= cc
FUZZ_CC    ?= clang
VERSION    := 0.1.0

WARN    := -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wmissing-prototypes -Wvla
CSTD    := -std=c11 -D_GNU_SOURCE
OPT     ?= -O2 -g
# The release build is optimized across files: the per-message path crosses
# conn.c, lbridge.c, lconn.c and buf.c, and inlining across them saves ~6%
# of its instructions (bench/callgrind: 998 -> 943 per echoed 64 B message).
LTO     ?= -flto=auto
LUAJIT_CFLAGS := $(shell pkg-config --cflags luajit 2>/dev/null || echo -I/usr/include/luajit-2.1)
LUAJIT_LIBS   := $(shell pkg-config --libs luajit 2>/dev/null || echo -lluajit-5.1)

# llhttp: a system libllhttp through pkg-config where the distribution has
# one; otherwise compile the C sources that Debian's node-llhttp ships.
LLHTTP_PC := $(shell pkg-config --exists libllhttp 2>/dev/null && echo yes)
ifeq ($(LLHTTP_PC),yes)
LLHTTP_CFLAGS := $(shell pkg-config --cflags libllhttp)
LLHTTP_LIBS   := $(shell pkg-config --libs libllhttp)
LLHTTP_SRC    :=
else
LLHTTP_DIR    ?= /usr/share/llhttp
LLHTTP_INCDIR ?= $(firstword $(wildcard /usr/share/include/llhttp /usr/include/llhttp) /usr/share/include/llhttp)
LLHTTP_CFLAGS := -I$(LLHTTP_INCDIR)
LLHTTP_LIBS   :=
LLHTTP_SRC    := $(LLHTTP_DIR)/llhttp.c $(LLHTTP_DIR)/api.c $(LLHTTP_DIR)/http.c
endif

CFLAGS_ALL := $(CSTD) $(WARN) $(OPT) -Ibuild/gen $(LUAJIT_CFLAGS) $(LLHTTP_CFLAGS) -DMOONPORT_VERSION='"$(VERSION)"' $(CFLAGS)
# hiredis (Debian's libhiredis-dev) is the Redis client of the backplane.
HIREDIS_LIBS := $(shell pkg-config --libs hiredis 2>/dev/null || echo -lhiredis)
LIBS       := -lev $(LUAJIT_LIBS) $(LLHTTP_LIBS) $(HIREDIS_LIBS) -lssl -lcrypto -lz -lm

SRC      := $(wildcard src/*.c)
# The pure modules: no libev, no Lua, no sockets. Unit tests and fuzz targets link only these.
PURE_SRC := src/ws_frame.c src/ws_utf8.c src/handshake.c src/snapshot.c src/slab.c src/ws_deflate.c src/buf.c src/sha1.c src/topic.c src/bpwire.c src/metrics.c src/proxy.c src/origin.c src/ipcount.c src/httpc.c
SAN      := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all

REL_OBJ  := $(SRC:src/%.c=build/rel/%.o) $(LLHTTP_SRC:$(LLHTTP_DIR)/%.c=build/rel/llhttp_%.o)
ASAN_OBJ := $(SRC:src/%.c=build/asan/%.o) $(LLHTTP_SRC:$(LLHTTP_DIR)/%.c=build/asan/llhttp_%.o)

UNIT_TESTS := $(patsubst spec/c/%.c,build/unit/%,$(wildcard spec/c/test_*.c))
FUZZERS    := $(patsubst spec/fuzz/%.c,build/fuzz/%,$(wildcard spec/fuzz/fuzz_*.c))

.PHONY: all run test unit fuzz asan deps deps-test install uninstall clean
all: bin/moonport

bin/moonport: $(REL_OBJ)
	@mkdir -p bin
	$(CC) $(CFLAGS_ALL) $(LTO) -o $@ $^ $(LIBS) $(LDFLAGS)

build/asan/moonport: $(ASAN_OBJ)
	$(CC) $(CFLAGS_ALL) $(SAN) -o $@ $^ $(LIBS) $(LDFLAGS)

build/rel/%.o: src/%.c $(wildcard src/*.h)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS_ALL) $(LTO) -c -o $@ $<

build/asan/%.o: src/%.c $(wildcard src/*.h)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS_ALL) $(SAN) -c -o $@ $<

# llhttp is not our code: build it with its own warnings off.
LLHTTP_OPT ?= -O2 -g
build/rel/llhttp_%.o: $(LLHTTP_DIR)/%.c
	@mkdir -p $(@D)
	$(CC) $(LLHTTP_OPT) -w $(LLHTTP_CFLAGS) -c -o $@ $<

build/asan/llhttp_%.o: $(LLHTTP_DIR)/%.c
	@mkdir -p $(@D)
	$(CC) -O1 -g -w $(SAN) $(LLHTTP_CFLAGS) -c -o $@ $<

asan: build/asan/moonport

# moonport.http is Lua (lua/moonport/http.lua), built into the binary as one
# C string literal that src/lhttpc.c loads: each line is escaped (\, " and ?,
# against trigraphs) and ends with \n.
build/gen/http_lua.h: lua/moonport/http.lua
	@mkdir -p $(@D)
	sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' -e 's/?/\\?/g' -e 's/^/"/' -e 's/$$/\\n"/' $< >$@
build/rel/lhttpc.o build/asan/lhttpc.o: build/gen/http_lua.h

# Unit tests #include nothing but the header under test and link the pure
# modules, built with the sanitizers.
# llhttp's generated C does not pass our warnings: link the objects built
# for build/asan (sanitized, warnings off) rather than its sources.
LLHTTP_ASAN_OBJ := $(LLHTTP_SRC:$(LLHTTP_DIR)/%.c=build/asan/llhttp_%.o)
build/unit/%: spec/c/%.c $(PURE_SRC) $(LLHTTP_ASAN_OBJ) $(wildcard src/*.h) spec/c/unit.h
	@mkdir -p $(@D)
	$(CC) $(CSTD) $(WARN) -O1 -g $(SAN) -Isrc $(LLHTTP_CFLAGS) $(LUAJIT_CFLAGS) -o $@ $< \
	    $(filter-out $(UNIT_INCLUDED),$(PURE_SRC)) \
	    $(LLHTTP_ASAN_OBJ) $(LLHTTP_LIBS) $(LUAJIT_LIBS) -lcrypto -lz -lm $(UNIT_LIBS)

# These include the code they test (to test it as it runs outside ASan).
build/unit/test_slab: src/slab.c
build/unit/test_slab: UNIT_INCLUDED := src/slab.c
build/unit/test_lalloc: src/slab.c src/lalloc.c
build/unit/test_lalloc: UNIT_INCLUDED := src/slab.c
build/unit/test_snapshot: UNIT_INCLUDED := src/slab.c
build/unit/test_resolve: src/resolve.c
build/unit/test_resolve: UNIT_LIBS := -lev -pthread

unit: $(UNIT_TESTS)
	@for t in $(UNIT_TESTS); do $$t || exit 1; done

build/fuzz/%: spec/fuzz/%.c $(PURE_SRC) $(LLHTTP_SRC) $(wildcard src/*.h spec/fuzz/*.h)
	@mkdir -p $(@D)
	$(FUZZ_CC) $(CSTD) -O1 -g -fsanitize=fuzzer,address,undefined -Isrc $(LLHTTP_CFLAGS) \
	    -o $@ $< $(PURE_SRC) $(LLHTTP_SRC) $(LLHTTP_LIBS) -lcrypto -lz

FUZZ_SECONDS ?= 20
fuzz: $(FUZZERS)
	@for f in $(FUZZERS); do n=$$(basename $$f); mkdir -p build/fuzz/corpus/$$n; \
	  echo "fuzz: $$n for $(FUZZ_SECONDS)s"; \
	  $$f -max_total_time=$(FUZZ_SECONDS) -print_final_stats=0 build/fuzz/corpus/$$n spec/fuzz/corpus/$$n \
	      >build/fuzz/$$n.log 2>&1 || { tail -40 build/fuzz/$$n.log; exit 1; }; done

# Install what building needs (and, for deps-test, what the tests need):
# apt-get when root on Debian/Ubuntu, otherwise the exact command to run.
# The commands are variables so that spec/setup_spec.lua can stand in a
# step that creates the llhttp sources, as a first install does.
DEPS_CMD      ?= sh .ci/deps build
DEPS_TEST_CMD ?= sh .ci/deps test
deps:
	@$(DEPS_CMD)
deps-test:
	@$(DEPS_TEST_CMD)

# run and test install the packages first and only then build, in a new
# make: this one has already looked for llhttp and libllhttp.pc (and cached
# what it saw) when it read this file, before the packages were there, so on
# a fresh machine it would find no rule for the llhttp objects. ARGS is set
# with := so that an ARGS in the environment does not reach the server.
ARGS       := apps
TEST_BUILD ?= all asan $(UNIT_TESTS) $(FUZZERS) build/bench/loadgen build/bench/codec_bench
TEST_CMD   ?= bash spec/run
run: deps
	@$(MAKE) --no-print-directory all
	bin/moonport $(ARGS)

test: deps-test
	@$(MAKE) --no-print-directory $(TEST_BUILD)
	@$(TEST_CMD)

install: all
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(LUADIR)/moonport
	install -m 755 bin/moonport $(DESTDIR)$(BINDIR)/moonport
	install -m 644 lua/moonport/*.lua $(DESTDIR)$(LUADIR)/moonport/

uninstall:
	rm -f $(DESTDIR)$(BINDIR)/moonport
	rm -rf $(DESTDIR)$(LUADIR)/moonport

clean:
	rm -rf build bin

# Benchmarks (make bench, make bench-peers) live with their tools in bench/.
-include bench/bench.mk
