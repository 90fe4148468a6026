#!/usr/bin/env bash
# test_loadgen.sh: `make bench-test`. The benchmark tools are tested like any
# other code: a load generator that cannot tell a wrong server from a right
# one would make every number it prints worthless. This boots bin/moonport
# on a temporary apps directory holding the real echo and broadcast apps and
# deliberately broken ones (a flipped byte, a lost message, two swapped, the
# wrong kind, a close in the middle, a refused handshake, a broadcast that
# skips a subscriber or echoes to its sender), and checks that loadgen exits
# 0 against the right apps and 1, with the right complaint, against each
# wrong one; and that --pub-url puts the publisher where it says. Timings
# are never asserted. Prints "bench: N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

LOADGEN=${LOADGEN:-build/bench/loadgen}
CODEC=${CODEC:-build/bench/codec_bench}
tmp=$(mktemp -d)
server_pid=
cleanup() {
    [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
    rm -rf "$tmp"
}
trap cleanup EXIT

apps=$tmp/apps
mkdir -p "$apps"
cp apps/echo.lua "$apps/echo.lua"
cp bench/apps/broadcast.lua "$apps/broadcast.lua"

# Every 100th message comes back with its last byte changed (still ASCII, so
# still valid text).
cat >"$apps/flip.lua" <<'EOF'
local bit = require "bit"
local app, n = {}, 0
function app.on_message(ws, data, kind)
  n = n + 1
  if n % 100 == 0 then
    data = data:sub(1, -2) .. string.char(bit.bxor(data:byte(-1), 1))
  end
  ws:send(data, kind)
end
return app
EOF
# Every 100th message of a connection is never echoed.
cat >"$apps/drop.lua" <<'EOF'
local app = {}
function app.on_message(ws, data, kind)
  ws.data.n = (ws.data.n or 0) + 1
  if ws.data.n % 100 ~= 0 then ws:send(data, kind) end
end
return app
EOF
# Every 100th message of a connection comes back after the one that follows it.
cat >"$apps/swap.lua" <<'EOF'
local app = {}
function app.on_message(ws, data, kind)
  local d = ws.data
  d.n = (d.n or 0) + 1
  if d.n % 100 == 0 then d.held = data return end
  ws:send(data, kind)
  if d.held then ws:send(d.held, kind) d.held = nil end
end
return app
EOF
# Text comes back as binary.
cat >"$apps/kind.lua" <<'EOF'
local app = {}
function app.on_message(ws, data) ws:send(data, "binary") end
return app
EOF
# The 50th message of a connection closes it instead of being echoed.
cat >"$apps/closer.lua" <<'EOF'
local app = {}
function app.on_message(ws, data, kind)
  ws.data.n = (ws.data.n or 0) + 1
  if ws.data.n == 50 then return ws:close(1000, "enough") end
  ws:send(data, kind)
end
return app
EOF
# Every handshake is refused.
cat >"$apps/reject.lua" <<'EOF'
local app = {}
function app.on_connect(ws) ws:reject(403, "no") end
return app
EOF
# A broadcast that also sends each message back to its sender.
cat >"$apps/selfcast.lua" <<'EOF'
local app, members = {}, {}
function app.on_connect(ws) members[ws] = true end
function app.on_message(ws, data, kind)
  for peer in pairs(members) do peer:send(data, kind) end
end
function app.on_close(ws) members[ws] = nil end
return app
EOF
# A broadcast that leaves one subscriber out of the 50th message.
cat >"$apps/gap.lua" <<'EOF'
local app, members, n = {}, {}, 0
function app.on_connect(ws) members[ws] = true end
function app.on_message(ws, data, kind)
  n = n + 1
  local skipped = false
  for peer in pairs(members) do
    if peer ~= ws then
      if n == 50 and not skipped then skipped = true else peer:send(data, kind) end
    end
  end
end
function app.on_close(ws) members[ws] = nil end
return app
EOF

bin/moonport --port 0 --log-level error "$apps" >"$tmp/access.log" 2>"$tmp/server.log" &
server_pid=$!
port=
for _ in $(seq 100); do
    port=$(sed -n 's#.*listening on ws://[^ ]*:\([0-9][0-9]*\)/.*#\1#p' "$tmp/server.log" | head -1)
    [ -n "$port" ] && break
    sleep 0.05
done
if [ -z "$port" ]; then
    cat "$tmp/server.log"
    echo "bench: 0 passed, 1 failed (the server did not start)"
    exit 1
fi

passed=0
failed=0
# run_check NAME STATUS PATTERN COMMAND...: COMMAND must exit with STATUS
# and its output must match PATTERN (an extended regex; "" for any).
run_check() {
    local name=$1 want=$2 pattern=$3
    shift 3
    local out rc
    out=$("$@" 2>&1)
    rc=$?
    if [ "$rc" -eq "$want" ] && { [ -z "$pattern" ] || grep -Eq "$pattern" <<<"$out"; }; then
        passed=$((passed + 1))
        echo "ok   $name"
    else
        failed=$((failed + 1))
        echo "FAIL $name: exit $rc (want $want), output:"
        sed 's/^/     /' <<<"$out"
    fi
}
check() {
    local name=$1 want=$2 pattern=$3
    shift 3
    run_check "$name" "$want" "$pattern" "$LOADGEN" "$@"
}

url=ws://127.0.0.1:$port
quick=(-d 0.5 -w 0.2)

check "echo text, right server" 0 "msgs/s" echo --url "$url/echo" -c 8 -p 4 "${quick[@]}" \
    --server-pid "$server_pid"
check "echo binary 16 KiB, right server" 0 "msgs/s" echo --url "$url/echo" -c 4 -p 2 \
    -s 16384 --binary "${quick[@]}"
check "echo --json" 0 '^\{"label": "", "mode": "echo".*"p999_us": [0-9.]+' echo \
    --url "$url/echo" -c 2 -p 2 "${quick[@]}" --json
check "a flipped byte (text)" 1 "differs at byte" echo --url "$url/flip" -c 8 -p 4 "${quick[@]}"
check "a flipped byte (binary)" 1 "differs at byte" echo --url "$url/flip" -c 8 -p 4 --binary \
    "${quick[@]}"
check "a lost message" 1 "out of order or lost" echo --url "$url/drop" -c 8 -p 4 "${quick[@]}"
check "two messages swapped" 1 "out of order or lost" echo --url "$url/swap" -c 8 -p 4 \
    "${quick[@]}"
check "the wrong kind" 1 "got a binary message, sent text" echo --url "$url/kind" -c 2 -p 2 \
    "${quick[@]}"
check "a close in the middle" 1 "closed the connection: code 1000 \"enough\"" echo \
    --url "$url/closer" -c 2 -p 2 "${quick[@]}"
check "a refused handshake" 1 "handshake failed: \"HTTP/1.1 403" echo --url "$url/reject" \
    "${quick[@]}"
check "an unknown route" 1 "handshake failed: \"HTTP/1.1 404" churn --url "$url/nothing" \
    "${quick[@]}"
check "nobody listening" 1 "Connection refused" echo --url "ws://127.0.0.1:1/echo" "${quick[@]}"
check "conns, right server" 0 "KiB/conn" conns --url "$url/echo" -c 300 "${quick[@]}" \
    --server-pid "$server_pid"
check "broadcast, right server" 0 "deliveries/s" broadcast --url "$url/broadcast" -c 20 -r 500 \
    "${quick[@]}" --server-pid "$server_pid"
check "broadcast to the sender too" 1 "publisher got a message" broadcast --url "$url/selfcast" \
    -c 5 -r 200 "${quick[@]}"
check "broadcast that skips a subscriber" 1 "out of order or lost" broadcast --url "$url/gap" \
    -c 5 -r 200 "${quick[@]}"
# --pub-url (the backplane rows: publisher on one node, subscribers on
# another) must put the publisher there and nowhere else: on /selfcast it
# gets its own messages back, which only a publisher connected there can.
check "broadcast --pub-url, same server" 0 "deliveries/s" broadcast --url "$url/broadcast" \
    --pub-url "$url/broadcast" -c 5 -r 200 "${quick[@]}"
check "broadcast --pub-url goes where it says" 1 "publisher got a message" broadcast \
    --url "$url/broadcast" --pub-url "$url/selfcast" -c 5 -r 200 "${quick[@]}"
check "broadcast --aux-pid reports CPU per published message" 0 \
    '"srv_cpu_pct": [0-9.]+, "srv_cpu_us_per_pub": [0-9.]+\}' broadcast --url "$url/broadcast" \
    -c 5 -r 200 "${quick[@]}" --aux-pid "srv=$server_pid" --json
check "a bad --aux-pid" 2 "usage: loadgen" broadcast --url "$url/broadcast" --aux-pid "x=0"
check "churn, right server" 0 "handshakes\\+closes/s" churn --url "$url/echo" -c 4 "${quick[@]}"
check "a bad command line" 2 "usage: loadgen" echo --url "$url/echo" -s 3
run_check "the codec micro-benchmark runs and checks the codec" 0 "text utf-8" "$CODEC" --quick
# bench/alternate, briefly: two rounds of one row against a second
# moonport as the control, its table of ratios, and a row it must refuse.
run_check "bench/alternate: rounds, ratios and their interval" 0 \
    '\| echo-64-text \| moonport / control \| [0-9.]+ [0-9.]+ \| [0-9.]+ \| [0-9.]+–[0-9.]+ \| [0-9.]+–[0-9.]+ \|' \
    env RESULTS="$tmp/alternate.md" ALT_ROUNDS=2 ALT_SECONDS=0.5 ALT_ROWS=echo-64-text \
    CONTROL_BIN=bin/moonport UWS_BIN= bash bench/alternate
run_check "bench/alternate refuses a row that is not an echo" 1 "conns-10k is not an echo row" \
    env RESULTS="$tmp/alternate.md" ALT_ROWS=conns-10k bash bench/alternate

if kill -0 "$server_pid" 2>/dev/null; then
    passed=$((passed + 1))
    echo "ok   the server outlived every wrong client"
else
    failed=$((failed + 1))
    echo "FAIL the server died"
fi
echo "bench: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
