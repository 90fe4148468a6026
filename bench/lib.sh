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
MATRIX_NAMES=(echo-64-text echo-64-binary echo-16k-binary echo-16k-100x4 echo-64-1000x1
    conns-10k conns-10k-fresh broadcast-1k broadcast-1k-loop broadcast-1k-over
    broadcast-1k-over-loop broadcast-16k-100 broadcast-16k churn)
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
)

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

stop_server() {
    [ -n "$SERVER_PID" ] || return 0
    kill "$SERVER_PID" 2>/dev/null
    # moonport closes every connection politely on SIGTERM; give it a moment.
    local _
    for _ in $(seq 100); do
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.05
    done
    kill -9 "$SERVER_PID" 2>/dev/null
    wait "$SERVER_PID" 2>/dev/null
    SERVER_PID=
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
        --label "$name" --json)
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
    echo "taskset -c $GEN_CPU $LOADGEN ${MATRIX_ARGS[$1]} --url ws://127.0.0.1:PORT${MATRIX_PATH[$1]} --server-pid PID --json"
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
