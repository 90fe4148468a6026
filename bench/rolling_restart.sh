#!/bin/sh
# Rolling restarts under load: how many connections a switch loses.
# K clients (spec/support/restart_client.py, no pause) connect in a loop
# while S times a new moonport starts with --takeover on the same port and
# the old one is sent SIGTERM (timeouts.drain = 0.3). Prints each client's
# "attempts N ok N drained N failures N", any failure, and how many
# connections each drain took from its listen queue.
#   sh bench/rolling_restart.sh            (K=4 S=10 P=18941)
# In a private network namespace, to try net.ipv4.tcp_migrate_req without
# touching the machine's setting:
#   unshare -n sh -c 'ip link set lo up; echo 1 > /proc/sys/net/ipv4/tcp_migrate_req;
#                     sh bench/rolling_restart.sh'
set -e
ROOT=$(cd "$(dirname "$0")/.." && pwd)
B=${B:-$ROOT/bin/moonport}; P=${P:-18941}; K=${K:-4}; S=${S:-10}
D=$(mktemp -d); trap 'rm -rf "$D"' EXIT
mkdir "$D/apps"
printf 'local app = {}\nfunction app.on_message(ws, d) ws:send(d) end\nreturn app\n' > "$D/apps/echo.lua"
echo 'return { apps = "apps", timeouts = { drain = 0.3 }, log = { access = false } }' > "$D/cfg.lua"
cd "$D"
"$B" --port "$P" --config cfg.lua 2>s0.err & OLD=$!
until grep -q "listening on" s0.err 2>/dev/null; do sleep 0.02; done
for k in $(seq "$K"); do python3 "$ROOT/spec/support/restart_client.py" "$P" stop 0 > "c$k.out" & done
sleep 0.3
for i in $(seq "$S"); do
    "$B" --port "$P" --config cfg.lua --takeover 2>"s$i.err" & NEW=$!
    until grep -q "listening on" "s$i.err" 2>/dev/null; do sleep 0.02; done
    sleep 0.2
    kill -TERM "$OLD"; wait "$OLD"
    OLD=$NEW
done
sleep 0.3; touch stop
for k in $(seq "$K"); do until grep -q '^attempts' "c$k.out"; do sleep 0.05; done; done
kill -TERM "$OLD"; wait "$OLD"
grep -h '^failure' c*.out | head -5 || true
grep -h '^attempts' c*.out
echo "taken from the listen queue at each signal: $(grep -h 'taken from the listen queue' s*.err |
    sed 's/.*(\([0-9]*\) taken.*/\1/' | tr '\n' ' ')"
