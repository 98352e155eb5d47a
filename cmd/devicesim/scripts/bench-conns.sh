#!/usr/bin/env bash
# bench-conns.sh measures the memory a subgate gateway spends per connected
# device (issue 3, done-when 1).
#
# It builds subgate and devicesim into ./bin, starts `subgate -dev` as its own
# process (store in a temporary directory, open auth, max_conns 30000), waits
# for /readyz, reads the gateway's VmRSS and Go heap, connects N devices with
# devicesim (PROCS processes with disjoint node id ranges, because each
# process needs one descriptor per device), waits until the gateway's
# subgate_southbound_sessions gauge reaches N, reads the memory again and
# prints:
#
#   rss_before_kib=  rss_after_kib=  per_conn_bytes=(after-before)*1024/N
#   heap_inuse_before_bytes=  heap_inuse_after_bytes=  heap_per_conn_bytes=
#   devicesim_rss_kib= (all devicesim processes, for sizing the load side)
#
# Everything it starts is stopped on exit (an EXIT trap), whatever happens.
#
# Environment (defaults in brackets):
#   N [19000]            devices in total
#   CODEC [binary]       jsonl | binary | demo
#   PROCS [2]            devicesim processes sharing N
#   CONNECT_RATE [1000]  connects per second per devicesim process
#   SRC [127.0.0.2-127.0.0.254]  devicesim source addresses
#   SB_ADDR [127.0.0.1:8081] ADMIN_ADDR [127.0.0.1:9100] DEV_HTTP [127.0.0.1:8090]
#   READY_TIMEOUT [60]   seconds to wait for /readyz
#   SESSIONS_TIMEOUT [600] seconds to wait for N sessions
#   SETTLE [5]           seconds between reaching N sessions and measuring
#   KEEP_LOGS [0]        1: keep the temporary directory with the logs
#   SKIP_BUILD [0]       1: use the binaries already in ./bin
set -euo pipefail

N=${N:-19000}
CODEC=${CODEC:-binary}
PROCS=${PROCS:-2}
CONNECT_RATE=${CONNECT_RATE:-1000}
SRC=${SRC:-127.0.0.2-127.0.0.254}
SB_ADDR=${SB_ADDR:-127.0.0.1:8081}
ADMIN_ADDR=${ADMIN_ADDR:-127.0.0.1:9100}
DEV_HTTP=${DEV_HTTP:-127.0.0.1:8090}
READY_TIMEOUT=${READY_TIMEOUT:-60}
SESSIONS_TIMEOUT=${SESSIONS_TIMEOUT:-600}
SETTLE=${SETTLE:-5}
KEEP_LOGS=${KEEP_LOGS:-0}
SKIP_BUILD=${SKIP_BUILD:-0}

say() { echo "bench-conns: $*" >&2; }
die() { say "error: $*"; exit 1; }

for v in N PROCS CONNECT_RATE READY_TIMEOUT SESSIONS_TIMEOUT SETTLE; do
	[[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a non-negative integer, got '${!v}'"
done
((N >= 1)) || die "N must be at least 1"
((PROCS >= 1 && PROCS <= N)) || die "PROCS must be in [1, N]"
command -v curl >/dev/null || die "curl is needed"

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)
cd "$root"

# Each process opens one descriptor per connection: use the hard limit.
ulimit -n "$(ulimit -Hn)"
say "open files limit $(ulimit -n)"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/bench-conns.XXXXXX")
gw_pid=""
sim_pids=()

# stop_pid PID SIGNAL: signal a process we started and wait for it, at
# most 30 s, then kill it.
stop_pid() {
	local pid=$1 sig=$2 i
	kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
	kill "-$sig" "$pid" 2>/dev/null || true
	for ((i = 0; i < 300; i++)); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	if kill -0 "$pid" 2>/dev/null; then
		say "process $pid did not stop in 30s: killing it"
		kill -KILL "$pid" 2>/dev/null || true
	fi
	wait "$pid" 2>/dev/null || true
}

cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	for pid in "${sim_pids[@]}"; do stop_pid "$pid" INT; done
	[[ -n $gw_pid ]] && stop_pid "$gw_pid" TERM
	if ((rc != 0)) && [[ -f $tmp/gateway.log ]]; then
		say "last gateway log lines:"
		tail -n 20 "$tmp/gateway.log" >&2 || true
	fi
	if [[ $KEEP_LOGS == 1 || $rc != 0 ]]; then
		say "logs kept in $tmp"
	else
		rm -rf "$tmp"
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

metric() { # metric NAME: the value of an unlabelled metric, as an integer
	curl -s --max-time 5 "http://$ADMIN_ADDR/metrics" | awk -v m="$1" '$1 == m { printf "%d\n", $2; found = 1 } END { if (!found) print -1 }'
}
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$gw_pid/status"; }

if curl -s -o /dev/null --max-time 2 "http://$ADMIN_ADDR/readyz"; then
	die "something already answers on $ADMIN_ADDR: stop it or set ADMIN_ADDR"
fi

if [[ $SKIP_BUILD == 1 ]]; then
	[[ -x bin/subgate && -x bin/devicesim ]] || die "SKIP_BUILD=1 but bin/subgate or bin/devicesim is missing"
else
	say "building into ./bin"
	mkdir -p bin
	go build -o bin/subgate ./cmd/subgate
	go build -o bin/devicesim ./cmd/devicesim
fi

say "starting the gateway (codec $CODEC, store in $tmp/data)"
(
	cd "$tmp"
	exec env SUBGATE_STORE_DIR="$tmp/data" \
		SUBGATE_SOUTHBOUND_LISTEN="$SB_ADDR" \
		SUBGATE_SOUTHBOUND_CODEC="$CODEC" \
		SUBGATE_SOUTHBOUND_AUTH=open \
		SUBGATE_SOUTHBOUND_MAX_CONNS=30000 \
		SUBGATE_ADMIN_LISTEN="$ADMIN_ADDR" \
		"$root/bin/subgate" -dev -dev-http "$DEV_HTTP"
) >"$tmp/gateway.out" 2>"$tmp/gateway.log" &
gw_pid=$!

for ((i = 0; ; i++)); do
	kill -0 "$gw_pid" 2>/dev/null || die "the gateway exited"
	code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://$ADMIN_ADDR/readyz" || true)
	[[ $code == 200 ]] && break
	((i < READY_TIMEOUT * 10)) || die "the gateway was not ready after ${READY_TIMEOUT}s"
	sleep 0.1
done
say "gateway ready (pid $gw_pid)"

rss_before=$(rss_kib)
heap_before=$(metric go_memstats_heap_inuse_bytes)

# Hold the devices longer than the whole measurement; the trap ends them.
hold=$((SESSIONS_TIMEOUT + SETTLE + 120))s
per=$((N / PROCS))
offset=0
for ((p = 0; p < PROCS; p++)); do
	n=$per
	((p == PROCS - 1)) && n=$((N - offset))
	./bin/devicesim -addr "$SB_ADDR" -codec "$CODEC" -n "$n" -offset "$offset" -prefix bench \
		-src "$SRC" -connect-rate "$CONNECT_RATE" -hold "$hold" -duration "$((SESSIONS_TIMEOUT + SETTLE + 300))s" \
		-report 10s >"$tmp/devicesim.$p.out" 2>"$tmp/devicesim.$p.log" &
	sim_pids+=($!)
	offset=$((offset + n))
done
say "started ${#sim_pids[@]} devicesim processes for $N devices"

start=$SECONDS
last=-1
while :; do
	sessions=$(metric subgate_southbound_sessions)
	((sessions >= N)) && break
	if ((sessions != last)); then
		say "sessions=$sessions/$N after $((SECONDS - start))s"
		last=$sessions
	fi
	kill -0 "$gw_pid" 2>/dev/null || die "the gateway exited"
	for pid in "${sim_pids[@]}"; do
		kill -0 "$pid" 2>/dev/null || { tail -n 3 "$tmp"/devicesim.*.log >&2; die "a devicesim process exited early"; }
	done
	((SECONDS - start < SESSIONS_TIMEOUT)) || die "only $sessions of $N sessions after ${SESSIONS_TIMEOUT}s"
	sleep 1
done
say "sessions=$sessions/$N after $((SECONDS - start))s; settling ${SETTLE}s"
sleep "$SETTLE"

sessions=$(metric subgate_southbound_sessions)
rss_after=$(rss_kib)
heap_after=$(metric go_memstats_heap_inuse_bytes)
sim_rss=0
for pid in "${sim_pids[@]}"; do
	sim_rss=$((sim_rss + $(awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status")))
done

for pid in "${sim_pids[@]}"; do stop_pid "$pid" INT; done
sim_pids=()
cat "$tmp"/devicesim.*.out

echo "n=$N codec=$CODEC sessions=$sessions"
echo "rss_before_kib=$rss_before"
echo "rss_after_kib=$rss_after"
echo "per_conn_bytes=$(((rss_after - rss_before) * 1024 / N))"
echo "heap_inuse_before_bytes=$heap_before"
echo "heap_inuse_after_bytes=$heap_after"
echo "heap_per_conn_bytes=$(((heap_after - heap_before) / N))"
echo "devicesim_rss_kib=$sim_rss"
