#!/usr/bin/env bash
# bench-quota.sh measures issue 4's quota throughput at full scale
# (done-when 3) like BenchmarkQuotaThroughput, with separate processes: N
# devices offer more property reports than one MQTT connection may carry
# (MSG_RATE per device; 10,000 x 0.6 = 6,000/s against 50 publishes/s x 100
# devices = 5,000/s), and the simulator counts over WINDOW seconds, after
# WARMUP seconds: sub-device reports delivered per second, publishes per
# second, devices per publish (packing ratio), the most publishes in any one
# second and the rate violations (GET /api/stats of the -dev simulator).
#
# Processes: subgate -dev (gateway and simulator in one process, binary
# codec, store in a temp dir) and PROCS devicesim processes. Devices are
# registered first by a pass without reports (auto-registration; the
# platform drops reports of devices it does not know yet), then the load
# pass reconnects them.
#
# Everything it starts is stopped on exit (EXIT trap).
#
# Environment (defaults in brackets):
#   N [10000] PROCS [2] MSG_RATE [0.6] (reports/s per device)
#   WARMUP [15] WINDOW [20] (seconds)
#   CONNECT_RATE [1000] SRC [127.0.0.2-127.0.0.254]
#   SB_ADDR [127.0.0.1:48081] ADMIN_ADDR [127.0.0.1:49100] SIM_HTTP [127.0.0.1:48090]
#   BIN [<tmp>/bin] SKIP_BUILD [0] KEEP_LOGS [0]
set -euo pipefail

N=${N:-10000}
PROCS=${PROCS:-2}
MSG_RATE=${MSG_RATE:-0.6}
WARMUP=${WARMUP:-15}
WINDOW=${WINDOW:-20}
CONNECT_RATE=${CONNECT_RATE:-1000}
SRC=${SRC:-127.0.0.2-127.0.0.254}
SB_ADDR=${SB_ADDR:-127.0.0.1:48081}
ADMIN_ADDR=${ADMIN_ADDR:-127.0.0.1:49100}
SIM_HTTP=${SIM_HTTP:-127.0.0.1:48090}
SKIP_BUILD=${SKIP_BUILD:-0}
KEEP_LOGS=${KEEP_LOGS:-0}
GW=subgate-dev-gw # iotdasim.DevDefaults
PREFIX=quota

say() { echo "bench-quota: $*" >&2; }
die() { say "error: $*"; exit 1; }

for v in N PROCS WARMUP WINDOW CONNECT_RATE; do
	[[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a non-negative integer, got '${!v}'"
done
[[ $MSG_RATE =~ ^[0-9]*\.?[0-9]+$ ]] || die "MSG_RATE must be a number, got '$MSG_RATE'"
((N >= 1 && PROCS >= 1 && PROCS <= N && WINDOW >= 10)) || die "need N, PROCS ≥ 1, PROCS ≤ N and WINDOW ≥ 10"
command -v curl >/dev/null || die "curl is needed"
command -v jq >/dev/null || die "jq is needed"

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)
ulimit -n "$(ulimit -Hn)"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/bench-quota.XXXXXX")
BIN=${BIN:-$tmp/bin}
gw_pid="" dev_pids=()

stop_pid() { # stop_pid PID SIGNAL: signal, wait at most 30 s, then kill
	local pid=$1 sig=$2 i
	kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
	kill "-$sig" "$pid" 2>/dev/null || true
	for ((i = 0; i < 300; i++)); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	kill -0 "$pid" 2>/dev/null && { say "process $pid did not stop in 30s: killing it"; kill -KILL "$pid" 2>/dev/null || true; }
	wait "$pid" 2>/dev/null || true
}
cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	for pid in "${dev_pids[@]}"; do stop_pid "$pid" INT; done
	[[ -n $gw_pid ]] && stop_pid "$gw_pid" TERM
	if ((rc != 0)); then
		[[ -f $tmp/gateway.log ]] && { say "last lines of gateway.log:"; tail -n 15 "$tmp/gateway.log" >&2; }
	fi
	if [[ $KEEP_LOGS == 1 || $rc != 0 ]]; then say "logs kept in $tmp"; else rm -rf "$tmp"; fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [[ $SKIP_BUILD == 1 ]]; then
	for b in subgate devicesim; do [[ -x $BIN/$b ]] || die "SKIP_BUILD=1 but $BIN/$b is missing"; done
else
	say "building into $BIN"
	mkdir -p "$BIN"
	(cd "$root" && go build -o "$BIN/subgate" ./cmd/subgate && go build -o "$BIN/devicesim" ./cmd/devicesim)
fi

wait_http() { # wait_http URL SECONDS PID: until URL answers 200
	local i code
	for ((i = 0; i < $2 * 10; i++)); do
		kill -0 "$3" 2>/dev/null || die "process $3 exited (waiting for $1)"
		code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$1" || true)
		[[ $code == 200 ]] && return 0
		sleep 0.1
	done
	die "$1 did not answer 200 within $2 s"
}
stats_url="http://$SIM_HTTP/api/stats?gateway=$GW"
stats() { curl -s --max-time 30 --retry 2 "$stats_url" || true; } # empty during the outage
outbox() { # items in the gateway's outbox (a large number if unreadable)
	local v
	v=$(curl -s --max-time 5 "http://$ADMIN_ADDR/metrics" | awk '/^subgate_outbox_messages /{ print int($2) }')
	echo "${v:-999999999}"
}

say "starting subgate -dev (codec binary, simulator HTTP $SIM_HTTP, store in $tmp/data)"
(
	cd "$tmp"
	exec env SUBGATE_SOUTHBOUND_LISTEN="$SB_ADDR" SUBGATE_SOUTHBOUND_CODEC=binary SUBGATE_SOUTHBOUND_MAX_CONNS=30000 \
		SUBGATE_STORE_DIR="$tmp/data" SUBGATE_ADMIN_LISTEN="$ADMIN_ADDR" SUBGATE_LOG_LEVEL=warn \
		"$BIN/subgate" -dev -dev-http "$SIM_HTTP"
) >"$tmp/gateway.out" 2>"$tmp/gateway.log" &
gw_pid=$!
wait_http "http://$ADMIN_ADDR/readyz" 60 "$gw_pid"
wait_http "$stats_url" 20 "$gw_pid"

# devices ARGS...: start PROCS devicesim processes sharing N devices.
devices() {
	local per=$((N / PROCS)) offset=0 p n
	dev_pids=()
	for ((p = 0; p < PROCS; p++)); do
		n=$per
		((p == PROCS - 1)) && n=$((N - offset))
		"$BIN/devicesim" -addr "$SB_ADDR" -codec binary -n "$n" -offset "$offset" -prefix "$PREFIX" \
			-src "$SRC" -connect-rate "$CONNECT_RATE" -report 0 -json "$@" \
			>"$tmp/devicesim.$p.out" 2>"$tmp/devicesim.$p.log" &
		dev_pids+=($!)
		offset=$((offset + n))
	done
}

say "registration pass: $N devices connect once"
devices -hold 600s -duration 900s
start=$SECONDS
while :; do
	known=$(curl -s --max-time 10 "http://$SIM_HTTP/api/devices?gateway=$GW" | jq '.devices | length')
	((known >= N)) && break
	((SECONDS - start < 600)) || die "only $known of $N devices registered after 600 s"
	sleep 2
done
for pid in "${dev_pids[@]}"; do stop_pid "$pid" INT; done
say "all $N registered after $((SECONDS - start)) s"

say "load pass: $N devices, $MSG_RATE reports/s each (no acks), -counter"
devices -msg-rate "$MSG_RATE" -counter -hold "$((WARMUP + WINDOW + 120))s" -drain 0s -duration "$((WARMUP + WINDOW + 300))s"
start=$SECONDS
until (($(stats | jq '.counted // 0' 2>/dev/null || echo 0) > N)); do
	((SECONDS - start < 120)) || die "no reports at the simulator after 120 s"
	sleep 1
done
say "reports flowing; warming up ${WARMUP}s, then measuring ${WINDOW}s"
for ((i = 0; i < WARMUP; i++)); do sleep 1; stats >/dev/null; done
s0=$(stats) t0=$(date +%s.%N)
for ((i = 0; i < WINDOW; i++)); do sleep 1; stats >/dev/null; done
s1=$(stats) t1=$(date +%s.%N)
[[ -n $s1 && -n $s0 ]] || die "the simulator did not answer GET /api/stats"
out0=$(outbox)
for pid in "${dev_pids[@]}"; do stop_pid "$pid" INT; done
sums=$(cat "$tmp"/devicesim.*.out | jq -s '{sent: (map(.frames_out) | add), busy: (map(.busy) | add),
	errors: (map(.errors) | add), connected: (map(.connected) | add)}')
echo "devicesim: $(echo "$sums" | jq -c .)"
echo "simulator: $(echo "$s1" | jq -c 'del(.per_device)')"
jq -n -r --argjson a "$s0" --argjson b "$s1" --arg t0 "$t0" --arg t1 "$t1" --arg n "$N" --arg rate "$MSG_RATE" --arg outbox "$out0" '
	(($t1 | tonumber) - ($t0 | tonumber)) as $sec |
	($b.counted - $a.counted) as $r | ($b.publishes - $a.publishes) as $p |
	"devices=\($n) msg_rate=\($rate) offered=\(($n | tonumber) * ($rate | tonumber))/s window_s=\($sec * 10 | round / 10)",
	"reports_per_s=\($r / $sec | round) publishes_per_s=\($p / $sec * 100 | round / 100) devices_per_publish=\(if $p > 0 then ($r / $p * 10 | round / 10) else 0 end)",
	"max_publishes_in_1s=\($b.max_publishes_per_second) rate_violations=\($b.violations) window_violations=\($b.violations - $a.violations) order_violations=\($b.order_violations) gaps=\($b.gaps) outbox_at_end=\($outbox)"'
