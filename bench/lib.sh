# shellcheck shell=bash
# lib.sh: what bench/run and bench/peers share, sourced by both. The matrix
# (which loadgen runs make a benchmark), starting a server pinned to its CPU
# and waiting until it listens, one row of the matrix against it, the table,
# and the header of a bench/RESULTS.md entry. It starts only the servers it
# is told to, and stops only those, by pid.

LOADGEN=${LOADGEN:-build/bench/loadgen}
CODEC=${CODEC:-build/bench/codec_bench}
# moonport --workers N (bench/run; 1: no --workers). The CPUs are taskset
# lists ("0", "0-7", "0,2"); SERVER_CPUS and GEN_CPUS are the same as
# SERVER_CPU and GEN_CPU. With workers, the server gets CPUs 0 to N-1 and
# the generator the CPUs after them, or all of them on a machine that has
# no more (then generator and server share, and say so in RESULTS.md).
WORKERS=${WORKERS:-1}
if [ "$WORKERS" -gt 1 ] 2>/dev/null; then
    _ncpu=$(nproc)
    _srv_default="0-$((WORKERS - 1))"
    _gen_default="$WORKERS-$((_ncpu - 1))"
    if [ "$WORKERS" -ge "$_ncpu" ]; then
        _srv_default="0-$((_ncpu - 1))"
        _gen_default="0-$((_ncpu - 1))"
    fi
else
    _srv_default=0
    _gen_default=1
fi
SERVER_CPU=${SERVER_CPUS:-${SERVER_CPU:-$_srv_default}}
GEN_CPU=${GEN_CPUS:-${GEN_CPU:-$_gen_default}}
RESULTS=${RESULTS:-bench/RESULTS.md}
# Seconds measured, after one second of warm-up; BENCH_SECONDS=2 for a quick look.
BENCH_SECONDS=${BENCH_SECONDS:-5}

# The matrix: name, route, loadgen arguments. The same for every server.
# The three echo shapes are where per-message costs show (many messages per
# read), where the payload's copies do (16 KiB) and where the kernel's path
# does (one message per read); conns-10k-fresh counts what 10,000 idle
# connections cost a server that has served nothing before them, one-time
# costs included, conns-10k the same after a warm-up.
# broadcast-1k fans out with topics (ws:publish), broadcast-1k-loop the same
# load with a Lua loop of ws:send (bench/apps/broadcast_loop.lua), so the two
# compare in one run; broadcast-16k-100 and broadcast-16k show what 16 KiB
# messages to 100 and to 1,000 subscribers cost in server memory (each
# queue holds a reference to one copy of the frame, not a copy of its own).
# broadcast-1k-over and its -loop twin ask for 5 M deliveries a second, more
# than one core delivers one write per subscriber per publish: they show the
# server at its ceiling (what it delivers, its latency and its memory) rather
# than collapsing.
# The backplane rows (README "Scaling out") run broadcast-1k's and
# broadcast-1k-over's load with a Redis backplane: backplane-local-1k and
# backplane-local-1k-over on one node started with --backplane, to set
# against the same rows without (what publishing to Redis costs a local
# fan-out, per server CPU-second); backplane-fanout with two nodes, the
# 1,000 subscribers on node B (the measured server) and the publisher on
# node A, so every message crosses Redis (latency added against
# broadcast-1k, and Redis's CPU per published message). At 1,000 messages
# a second to 1,000 subscribers one CPU is at its ceiling and the time to
# write to 1,000 sockets sets the latency (milliseconds), so
# backplane-fanout-10 and broadcast-10 repeat the comparison with 10
# subscribers, where the trip through Redis itself shows.
MATRIX_NAMES=(echo-64-text echo-64-binary echo-16k-binary echo-16k-100x4 echo-64-1000x1
    conns-10k conns-10k-fresh broadcast-1k broadcast-1k-loop broadcast-1k-over
    broadcast-1k-over-loop broadcast-16k-100 broadcast-16k churn
    backplane-local-1k backplane-local-1k-over backplane-fanout broadcast-10
    backplane-fanout-10)
# BENCH_ROWS="echo-64-text broadcast-1k" runs only those rows.
if [ -n "${BENCH_ROWS:-}" ]; then
    read -r -a MATRIX_NAMES <<<"$BENCH_ROWS"
fi
declare -A MATRIX_PATH=(
    [echo-64-text]=/echo [echo-64-binary]=/echo [echo-16k-binary]=/echo
    [echo-16k-100x4]=/echo [echo-64-1000x1]=/echo
    [conns-10k]=/echo [conns-10k-fresh]=/echo [broadcast-1k]=/broadcast
    [broadcast-1k-loop]=/broadcast-loop [broadcast-1k-over]=/broadcast
    [broadcast-1k-over-loop]=/broadcast-loop [broadcast-16k-100]=/broadcast [broadcast-16k]=/broadcast [churn]=/echo
    [backplane-local-1k]=/broadcast [backplane-local-1k-over]=/broadcast [backplane-fanout]=/broadcast
    [broadcast-10]=/broadcast [backplane-fanout-10]=/broadcast
)
declare -A MATRIX_ARGS=(
    [echo-64-text]="echo -c 100 -p 16 -s 64 --text -d $BENCH_SECONDS -w 1"
    [echo-64-binary]="echo -c 100 -p 16 -s 64 --binary -d $BENCH_SECONDS -w 1"
    [echo-16k-binary]="echo -c 10 -p 4 -s 16384 --binary -d $BENCH_SECONDS -w 1"
    [echo-16k-100x4]="echo -c 100 -p 4 -s 16384 --binary -d $BENCH_SECONDS -w 1"
    [echo-64-1000x1]="echo -c 1000 -p 1 -s 64 --text -d $BENCH_SECONDS -w 1"
    [conns-10k]="conns -c 10000 -d 2 -w 1"
    [conns-10k-fresh]="conns -c 10000 -d 2 -w 0"
    [broadcast-1k]="broadcast -c 1000 -r 1000 -s 64 --text -d $BENCH_SECONDS -w 1 --drain 5"
    [broadcast-1k-loop]="broadcast -c 1000 -r 1000 -s 64 --text -d $BENCH_SECONDS -w 1 --drain 5"
    [broadcast-1k-over]="broadcast -c 1000 -r 5000 -s 64 --text -d $BENCH_SECONDS -w 1 --drain 10"
    [broadcast-1k-over-loop]="broadcast -c 1000 -r 5000 -s 64 --text -d $BENCH_SECONDS -w 1 --drain 10"
    [broadcast-16k-100]="broadcast -c 100 -r 10 -s 16384 --binary -d $BENCH_SECONDS -w 1 --drain 5"
    [broadcast-16k]="broadcast -c 1000 -r 10 -s 16384 --binary -d $BENCH_SECONDS -w 1 --drain 5"
    [churn]="churn -c 16 -d $BENCH_SECONDS -w 1"
    [backplane-local-1k]="broadcast -c 1000 -r 1000 -s 64 --text -d $BENCH_SECONDS -w 1 --drain 5"
    [backplane-local-1k-over]="broadcast -c 1000 -r 5000 -s 64 --text -d $BENCH_SECONDS -w 1 --drain 10"
    [backplane-fanout]="broadcast -c 1000 -r 1000 -s 64 --text -d $BENCH_SECONDS -w 1 --drain 5"
    [broadcast-10]="broadcast -c 10 -r 1000 -s 64 --text -d $BENCH_SECONDS -w 1 --drain 5"
    [backplane-fanout-10]="broadcast -c 10 -r 1000 -s 64 --text -d $BENCH_SECONDS -w 1 --drain 5"
)
# How a row uses the backplane: "local", one node with --backplane; "cross",
# the publisher on a second node (see start_backplane).
declare -A MATRIX_BACKPLANE=(
    [backplane-local-1k]=local [backplane-local-1k-over]=local [backplane-fanout]=cross
    [backplane-fanout-10]=cross
)
# Redis and node A run beside the generator: on this project's two-CPU
# machine the measured server (node B) keeps a CPU of its own.
AUX_CPU=${AUX_CPU:-$GEN_CPU}

SERVER_PID=
SERVER_PORT=

# start_server LOG PORT CMD...: run CMD on $SERVER_CPU in the background and
# wait until it listens. PORT 0 means the server picks one and prints
# "listening on ws://HOST:PORT" (moonport, node, python); otherwise wait
# until PORT accepts connections (nginx). Sets SERVER_PID and SERVER_PORT.
start_server() {
    local log=$1 port=$2
    shift 2
    : >"$log"
    # taskset execs the command, so $! is the server itself.
    taskset -c "$SERVER_CPU" "$@" >"$log" 2>&1 &
    SERVER_PID=$!
    local _
    for _ in $(seq 200); do
        if [ "$port" = 0 ]; then
            SERVER_PORT=$(sed -n 's#.*listening on ws://[^ ]*:\([0-9][0-9]*\).*#\1#p' "$log" | head -1)
            [ -n "$SERVER_PORT" ] && return 0
        elif (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            SERVER_PORT=$port
            return 0
        fi
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then
            echo "bench: the server exited at start: $*" >&2
            sed 's/^/    /' "$log" >&2
            SERVER_PID=
            return 1
        fi
        sleep 0.05
    done
    echo "bench: the server did not listen within 10 s: $*" >&2
    stop_server
    return 1
}

# stop_pid PID: SIGTERM, up to 5 s, then SIGKILL; reaps it.
stop_pid() {
    [ -n "$1" ] || return 0
    kill "$1" 2>/dev/null
    # moonport closes every connection politely on SIGTERM; give it a moment.
    local _
    for _ in $(seq 100); do
        kill -0 "$1" 2>/dev/null || break
        sleep 0.05
    done
    kill -9 "$1" 2>/dev/null
    wait "$1" 2>/dev/null
}

stop_server() {
    stop_pid "$SERVER_PID"
    SERVER_PID=
}

# ---- the backplane rows ----
REDIS_PID=
REDIS_PORT=
NODE_A_PID=
NODE_A_PORT=

# redis_ask PORT COMMAND: one inline command over bash's /dev/tcp (so the
# bench needs no redis-cli); prints the first line of the reply.
redis_ask() {
    local line
    {
        exec 3<>"/dev/tcp/127.0.0.1/$1" || return 1
        printf '%s\r\n' "$2" >&3
        read -r -t 2 line <&3 || { exec 3<&-; return 1; }
        exec 3<&-
    } 2>/dev/null
    printf '%s\n' "${line%$'\r'}"
}

# start_redis DIR: a redis-server without persistence on a free port, bound
# to 127.0.0.1, on AUX_CPU, answering PING. Sets REDIS_PID and REDIS_PORT.
# Returns 2 when there is no redis-server (the row is then skipped).
start_redis() {
    local dir=$1 try port _
    command -v redis-server >/dev/null 2>&1 || return 2
    for try in 1 2 3 4 5; do
        port=$((20000 + RANDOM % 40000))
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && continue # taken
        taskset -c "$AUX_CPU" redis-server --port "$port" --bind 127.0.0.1 --save "" \
            --appendonly no --daemonize no --dir "$dir" >"$dir/redis-$try.log" 2>&1 &
        REDIS_PID=$!
        for _ in $(seq 100); do
            if [ "$(redis_ask "$port" PING)" = +PONG ]; then
                REDIS_PORT=$port
                return 0
            fi
            kill -0 "$REDIS_PID" 2>/dev/null || break
            sleep 0.05
        done
        stop_pid "$REDIS_PID"
        REDIS_PID=
    done
    echo "bench: redis-server did not start; see $dir/redis-*.log" >&2
    return 1
}

# redis_clients: connected clients, not counting the one asking.
redis_clients() {
    local line n=""
    {
        exec 3<>"/dev/tcp/127.0.0.1/$REDIS_PORT" || { echo 0; return; }
        printf 'INFO clients\r\n' >&3
        while read -r -t 1 line <&3; do
            case $line in
            connected_clients:*)
                n=${line#connected_clients:}
                n=${n%$'\r'}
                break
                ;;
            esac
        done
        exec 3<&-
    } 2>/dev/null
    echo $((${n:-1} - 1))
}

# start_backplane KIND LOG_DIR CMD...: for a backplane row, Redis (and for
# "cross" node A, CMD with --backplane, on AUX_CPU); then sets BACKPLANE_ARGS
# (what the measured server adds before its apps directory) and
# ROW_EXTRA_ARGS (what loadgen adds). Returns 2 to skip the row.
BACKPLANE_ARGS=()
ROW_EXTRA_ARGS=()
start_backplane() {
    local kind=$1 dir=$2
    shift 2
    BACKPLANE_ARGS=()
    ROW_EXTRA_ARGS=()
    [ -n "$kind" ] || return 0
    start_redis "$dir" || return $?
    BACKPLANE_ARGS=(--backplane "redis://127.0.0.1:$REDIS_PORT")
    ROW_EXTRA_ARGS=(--aux-pid "redis=$REDIS_PID")
    if [ "$kind" = cross ]; then
        # The last word of CMD is the apps directory: the flag goes before it.
        local cmd=("$@")
        local n=${#cmd[@]}
        SERVER_CPU=$AUX_CPU start_server "$dir/node-a.log" 0 "${cmd[@]:0:n-1}" \
            "${BACKPLANE_ARGS[@]}" "${cmd[n-1]}" || return 1
        NODE_A_PID=$SERVER_PID
        NODE_A_PORT=$SERVER_PORT
        SERVER_PID=
        ROW_EXTRA_ARGS+=(--pub-url "ws://127.0.0.1:$NODE_A_PORT/broadcast"
            --aux-pid "nodeA=$(server_family "$NODE_A_PID")")
    fi
}

# wait_backplane NODES: until Redis sees both connections (subscriber and
# command) of every worker of NODES nodes, at most 5 s; the run goes on
# either way (a subscriber that joins late starts from its first message).
wait_backplane() {
    local want=$(($1 * 2 * ${WORKERS:-1})) _
    for _ in $(seq 100); do
        [ "$(redis_clients)" -ge "$want" ] && return 0
        sleep 0.05
    done
    echo "bench: warning: Redis sees $(redis_clients) of $want backplane connections" >&2
}

stop_backplane() {
    stop_pid "$NODE_A_PID"
    NODE_A_PID=
    NODE_A_PORT=
    stop_pid "$REDIS_PID"
    REDIS_PID=
    REDIS_PORT=
}

# The pid whose CPU and memory count: the server, or for nginx its one
# worker. bench/peers sets MEASURE_PID after start_server when it differs;
# bench/run, with WORKERS, to the master and its workers (PID,PID,...).
MEASURE_PID=

# server_family PID: PID and its children, as loadgen's --server-pid list.
server_family() {
    local kids
    kids=$(cat "/proc/$1/task/$1/children" 2>/dev/null)
    kids=$(echo $kids)
    echo "$1${kids:+,${kids// /,}}"
}

# run_row NAME OUT: one row of the matrix against the running server; its
# JSON summary is appended to OUT. Returns loadgen's status.
run_row() {
    local name=$1 out=$2
    local pid=${MEASURE_PID:-$SERVER_PID}
    local args
    read -r -a args <<<"${MATRIX_ARGS[$name]}"
    local cmd=(taskset -c "$GEN_CPU" "$LOADGEN" "${args[@]}"
        --url "ws://127.0.0.1:$SERVER_PORT${MATRIX_PATH[$name]}" --server-pid "$pid"
        "${ROW_EXTRA_ARGS[@]}" --label "$name" --json)
    if [ "$name" = conns-10k ]; then
        # Warm up first: the first connections touch code and library pages
        # for the first time (about 2 MiB of file-backed RSS in moonport),
        # a cost paid once per process, not per connection. Measuring from
        # a cold server would spread it over the idle connections.
        taskset -c "$GEN_CPU" "$LOADGEN" conns -c 100 -d 1 -w 0 \
            --url "ws://127.0.0.1:$SERVER_PORT${MATRIX_PATH[$name]}" >/dev/null 2>&1
        sleep 0.5
    fi
    local line
    if line=$("${cmd[@]}"); then
        echo "$line" >>"$out"
        return 0
    fi
    echo "{\"label\": \"$name\", \"failed\": true}" >>"$out"
    return 1
}

# The command of a row as written in RESULTS.md, with PORT and PID for what
# changes from run to run.
row_command() {
    local extra=""
    case ${MATRIX_BACKPLANE[$1]:-} in
    local) extra=" --aux-pid redis=REDIS_PID" ;;
    cross) extra=" --aux-pid redis=REDIS_PID --pub-url ws://127.0.0.1:NODE_A_PORT/broadcast --aux-pid nodeA=NODE_A_PID" ;;
    esac
    echo "taskset -c $GEN_CPU $LOADGEN ${MATRIX_ARGS[$1]} --url ws://127.0.0.1:PORT${MATRIX_PATH[$1]} --server-pid PID$extra --json"
}

# free_port: a TCP port on 127.0.0.1 that nothing listens on now, for a
# server that must be told its port (the peers; moonport takes --port 0).
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# field JSON KEY: a value of a flat JSON object.
field() {
    sed -n "s/.*\"$2\": \"\{0,1\}\([^,\"}]*\).*/\1/p" <<<"$1"
}

# row_json FILE NAME: the JSON line of a row.
row_json() {
    grep -F "\"label\": \"$2\"" "$1" | tail -1
}

fmt_int() {
    [ -n "$1" ] && [ "$1" != "-1.0" ] && printf "%.0f" "$1" || printf -- "-"
}

# row_cells JSON: the cells of a table row: per s, server CPU %, per
# server-CPU-s, generator CPU %, the rest of the machine's CPU %, p50, p99,
# p99.9, max (µs), notes.
row_cells() {
    local j=$1
    if [ "$(field "$j" skipped)" = true ]; then
        printf "%s\n" "-" "-" "-" "-" "-" "-" "-" "-" "-" "not run: $(field "$j" why)"
        return
    fi
    if [ -z "$j" ] || [ "$(field "$j" failed)" = true ]; then
        printf "%s\n" "FAILED" "-" "-" "-" "-" "-" "-" "-" "-" "see the log above"
        return
    fi
    local mode notes=""
    mode=$(field "$j" mode)
    case $mode in
    conns)
        notes="$(field "$j" kib_per_conn) KiB/conn (rss $(field "$j" rss_before_kib) -> $(field "$j" rss_after_kib) KiB); latency = handshake"
        ;;
    broadcast)
        notes="$(field "$j" delivered_pct)% of $(fmt_int "$(field "$j" expected_per_s)") deliveries/s"
        [ "$(field "$j" drained)" = true ] || notes="$notes; fell behind"
        notes="$notes; latency = publish to receipt; server rss $(field "$j" rss_before_kib) -> $(field "$j" rss_after_kib) KiB"
        if [ -n "$(field "$j" redis_cpu_pct)" ]; then
            notes="$notes; Redis CPU $(field "$j" redis_cpu_pct)%, $(field "$j" redis_cpu_us_per_pub) µs per published message"
        fi
        if [ -n "$(field "$j" nodeA_cpu_pct)" ]; then
            notes="$notes; node A (publisher's) CPU $(field "$j" nodeA_cpu_pct)%"
        fi
        ;;
    churn) notes="handshake+close cycles; latency = one cycle" ;;
    echo) notes="round trip" ;;
    esac
    if [ "$mode" = conns ]; then
        printf "%s\n" "-" "$(field "$j" server_cpu_pct)" "-" "$(field "$j" gen_cpu_pct)"
    else
        printf "%s\n" "$(fmt_int "$(field "$j" per_s)")" "$(field "$j" server_cpu_pct)" \
            "$(fmt_int "$(field "$j" per_server_cpu_s)")" "$(field "$j" gen_cpu_pct)"
    fi
    printf "%s\n" "$(fmt_int "$(field "$j" other_cpu_pct)")"
    printf "%s\n" "$(fmt_int "$(field "$j" p50_us)")" "$(fmt_int "$(field "$j" p99_us)")" \
        "$(fmt_int "$(field "$j" p999_us)")" "$(fmt_int "$(field "$j" max_us)")" "$notes"
}

TABLE_HEAD=(test "per s" "server CPU %" "per server-CPU-s" "gen CPU %" "other CPU %" "p50 µs"
    "p99 µs" "p99.9 µs" "max µs" notes)

# print_table FILE: the matrix results of one server, for the terminal.
print_table() {
    local file=$1 name
    printf "%-16s %10s %8s %13s %8s %9s %8s %8s %9s %8s  %s\n" test "per s" "srv CPU%" \
        "per srv-CPU-s" "gen CPU%" "other CPU%" "p50 us" "p99 us" "p99.9 us" "max us" notes
    for name in "${MATRIX_NAMES[@]}"; do
        local cells
        mapfile -t cells < <(row_cells "$(row_json "$file" "$name")")
        printf "%-16s %10s %8s %13s %8s %9s %8s %8s %9s %8s  %s\n" "$name" "${cells[@]}"
    done
}

# markdown_table FILE: the same, for RESULTS.md.
markdown_table() {
    local file=$1 name
    local IFS='|'
    echo "|${TABLE_HEAD[*]}|" | sed 's/|/ | /g; s/^ //; s/ $//'
    echo "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|"
    for name in "${MATRIX_NAMES[@]}"; do
        local cells
        mapfile -t cells < <(row_cells "$(row_json "$file" "$name")")
        printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n" "$name" "${cells[@]}"
    done
}

# backplane_rows_ran FILE: true if a backplane row has a result in FILE.
backplane_rows_ran() {
    local name j
    for name in "${MATRIX_NAMES[@]}"; do
        [ -n "${MATRIX_BACKPLANE[$name]:-}" ] || continue
        j=$(row_json "$1" "$name")
        [ -n "$(field "$j" per_s)" ] && return 0
    done
    return 1
}

# backplane_summary FILE: the issue's numbers, from rows of this run: what
# publishing to Redis costs a local fan-out per server CPU-second (each
# backplane-local row against its twin without), and what crossing Redis
# adds to p99 (backplane-fanout against broadcast-1k). Says nothing for a
# pair that did not both run.
backplane_summary() {
    local file=$1 pair a b pa pb
    local lines=()
    for pair in backplane-local-1k:broadcast-1k backplane-local-1k-over:broadcast-1k-over; do
        a=$(row_json "$file" "${pair%%:*}")
        b=$(row_json "$file" "${pair#*:}")
        pa=$(field "$a" per_server_cpu_s)
        pb=$(field "$b" per_server_cpu_s)
        if [ -n "$pa" ] && [ -n "$pb" ] && [ "${pb%.*}" -gt 0 ] 2>/dev/null; then
            lines+=("- ${pair%%:*} against ${pair#*:}: $(fmt_int "$pa") vs $(fmt_int "$pb") deliveries per server CPU-second, $(awk -v a="$pa" -v b="$pb" 'BEGIN { printf "%+.1f%%", 100 * (a - b) / b }') with the backplane (goal: no worse than -10%)")
        fi
    done
    for pair in backplane-fanout:broadcast-1k backplane-fanout-10:broadcast-10; do
        a=$(row_json "$file" "${pair%%:*}")
        b=$(row_json "$file" "${pair#*:}")
        pa=$(field "$a" p99_us)
        pb=$(field "$b" p99_us)
        if [ -n "$pa" ] && [ -n "$pb" ]; then
            lines+=("- ${pair%%:*} against ${pair#*:}: p99 $(fmt_int "$pa") µs vs $(fmt_int "$pb") µs, $(awk -v a="$pa" -v b="$pb" 'BEGIN { printf "%+.0f", a - b }') µs added by the trip through Redis (goal: under 1,000 µs; p50 $(fmt_int "$(field "$a" p50_us)") vs $(fmt_int "$(field "$b" p50_us)") µs); $(fmt_int "$(field "$a" per_s)") deliveries/s on node B; Redis $(field "$a" redis_cpu_us_per_pub) µs of CPU per published message")
        fi
    done
    [ ${#lines[@]} -gt 0 ] || return 0
    echo "Backplane (from this run's rows):"
    echo
    printf '%s\n' "${lines[@]}"
    echo
}

# The machine, for RESULTS.md.
machine_line() {
    local model kernel
    model=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
    kernel=$(uname -sr)
    echo "${model:-unknown CPU}, nproc $(nproc), $kernel, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo) RAM"
}

# busy_ticks: CPU ticks spent by everything on the machine so far.
busy_ticks() {
    awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat
}

# other_load: how busy the machine is before we start, in % of one CPU, over
# one second. Anything well above 0 makes every number below less reliable.
other_load() {
    local a b
    a=$(busy_ticks)
    sleep 1
    b=$(busy_ticks)
    echo $(((b - a) * 100 / $(getconf CLK_TCK)))
}

# results_init: start bench/RESULTS.md if it does not exist yet.
results_init() {
    [ -s "$RESULTS" ] && return 0
    cat >"$RESULTS" <<'HEAD'
# Benchmark results

Appended by `make bench` (moonport alone) and `make bench-peers` (moonport
next to nginx+Lua, Node ws and Python websockets, as ratios from the same
run). Every entry names its commit, machine and exact commands. The server
runs on one CPU and the generator on the other; compare messages per server
CPU-second, which stays meaningful when the generator or the machine is the
limit. Timings from a busy machine say so in "other load".
HEAD
}
