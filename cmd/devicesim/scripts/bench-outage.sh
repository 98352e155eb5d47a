#!/usr/bin/env bash
# bench-outage.sh is issue 4's outage run at full scale (done-when 1): N
# devices report numbered properties (devicesim -ack -counter) through
# `subgate -dev`; after BEFORE seconds the simulator is stopped for OUTAGE
# seconds (POST /api/control/outage on the -dev simulator's HTTP API), the
# load goes on AFTER seconds more, then stops and the backlog drains. It
# prints:
#   sent, acked (devicesim summaries), received (distinct numbered reports at
#   the simulator), missing (sent but never received), lost (acked but not
#   received: at least acked - received; 0 for sure when missing is 0),
#   gaps, duplicates and order violations (GET /api/stats), the most
#   publishes in any one second and the simulator's rate violations, and the
#   drain time: from the restart until the gateway's outbox
#   (subgate_outbox_messages) is back to its level before the outage.
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
#   N [10000] PROCS [2] MSG_RATE [0.2] (reports/s per device)
#   BEFORE [30] OUTAGE [60] AFTER [60] DRAIN_TIMEOUT [240] (seconds)
#   CONNECT_RATE [1000] SRC [127.0.0.2-127.0.0.254]
#   SB_ADDR [127.0.0.1:38081] ADMIN_ADDR [127.0.0.1:39100] SIM_HTTP [127.0.0.1:38090]
#   BIN [<tmp>/bin] SKIP_BUILD [0] KEEP_LOGS [0]
set -euo pipefail

N=${N:-10000}
PROCS=${PROCS:-2}
MSG_RATE=${MSG_RATE:-0.2}
BEFORE=${BEFORE:-30}
OUTAGE=${OUTAGE:-60}
AFTER=${AFTER:-60}
DRAIN_TIMEOUT=${DRAIN_TIMEOUT:-240}
CONNECT_RATE=${CONNECT_RATE:-1000}
SRC=${SRC:-127.0.0.2-127.0.0.254}
SB_ADDR=${SB_ADDR:-127.0.0.1:38081}
ADMIN_ADDR=${ADMIN_ADDR:-127.0.0.1:39100}
SIM_HTTP=${SIM_HTTP:-127.0.0.1:38090}
SKIP_BUILD=${SKIP_BUILD:-0}
KEEP_LOGS=${KEEP_LOGS:-0}
GW=subgate-dev-gw # iotdasim.DevDefaults
PREFIX=out

say() { echo "bench-outage: $*" >&2; }
die() { say "error: $*"; exit 1; }

for v in N PROCS BEFORE OUTAGE AFTER DRAIN_TIMEOUT CONNECT_RATE; do
	[[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a non-negative integer, got '${!v}'"
done
[[ $MSG_RATE =~ ^[0-9]*\.?[0-9]+$ ]] || die "MSG_RATE must be a number, got '$MSG_RATE'"
((N >= 1 && PROCS >= 1 && PROCS <= N && OUTAGE >= 1)) || die "need N, PROCS, OUTAGE ≥ 1 and PROCS ≤ N"
command -v curl >/dev/null || die "curl is needed"
command -v jq >/dev/null || die "jq is needed"

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)
ulimit -n "$(ulimit -Hn)"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/bench-outage.XXXXXX")
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

hold=$((BEFORE + OUTAGE + AFTER + 30))
say "load pass: $N devices, $MSG_RATE reports/s each, -ack -counter; outage of ${OUTAGE}s after ${BEFORE}s"
devices -msg-rate "$MSG_RATE" -ack -counter -hold "${hold}s" -drain 60s -duration "$((hold + 300))s"
# The clock starts once the reports flow.
start=$SECONDS
until (($(stats | jq '.counted // 0' 2>/dev/null || echo 0) > N)); do
	((SECONDS - start < 120)) || die "no reports at the simulator after 120 s"
	sleep 1
done
say "reports flowing after $((SECONDS - start)) s; outage in ${BEFORE}s"
pre_outbox=0
for ((i = 0; i < BEFORE; i++)); do
	sleep 1
	o=$(outbox)
	((o > pre_outbox)) && pre_outbox=$o
done
before=$(stats)
curl -s --max-time 10 -X POST "http://$SIM_HTTP/api/control/outage" -d "{\"seconds\":$OUTAGE}" | jq -e .active >/dev/null ||
	die "outage refused"
say "outage started (outbox before: max $pre_outbox items)"
sleep "$OUTAGE"
start=$SECONDS
until [[ $(curl -s --max-time 2 "http://$SIM_HTTP/api/control/outage" | jq -r '.active' 2>/dev/null) == false ]]; do
	((SECONDS - start < 60)) || die "the simulator did not come back"
	sleep 0.2
done
back=$SECONDS
peak=$(outbox)
say "platform back; outbox $peak items"
drain=""
while ((SECONDS - back < AFTER)); do
	sleep 1
	stats >/dev/null # keep the delivery check ahead of the recording's bound
	o=$(outbox)
	((o > peak)) && peak=$o
	if [[ -z $drain ]] && ((o <= pre_outbox)); then drain=$((SECONDS - back)); say "backlog drained in ${drain}s (outbox $o)"; fi
done
say "load continues until devicesim's hold ends; then waiting for the drain"
for p in "${!dev_pids[@]}"; do
	while kill -0 "${dev_pids[$p]}" 2>/dev/null; do
		sleep 1
		stats >/dev/null
		if [[ -z $drain ]] && (($(outbox) <= pre_outbox)); then drain=$((SECONDS - back)); fi
	done
	wait "${dev_pids[$p]}" || true
done
dev_pids=()
start=$SECONDS
until (($(outbox) == 0)); do
	((SECONDS - start < DRAIN_TIMEOUT)) || die "outbox not empty after ${DRAIN_TIMEOUT}s"
	sleep 1
	stats >/dev/null
done
[[ -z $drain ]] && drain=$((SECONDS - back))
final=$(stats)
sums=$(cat "$tmp"/devicesim.*.out | jq -s '{sent: (map(.frames_out) | add), acked: (map(.acks) | add),
	unacked: (map(.unacked) | add), busy: (map(.busy) | add), errors: (map(.errors) | add),
	connected: (map(.connected) | add)}')

echo "devicesim: $(echo "$sums" | jq -c .)"
echo "simulator: $(echo "$final" | jq -c 'del(.per_device)')"
sent=$(echo "$sums" | jq .sent) acked=$(echo "$sums" | jq .acked)
recv=$(echo "$final" | jq .distinct)
missing=$((sent - recv)) lost=$((acked - recv))
((lost < 0)) && lost=0
echo "devices=$N connected=$(echo "$sums" | jq .connected) msg_rate=$MSG_RATE outage_s=$OUTAGE"
echo "reports_sent=$sent reports_acked=$acked reports_received=$recv missing=$missing lost=$lost" \
	"gaps=$(echo "$final" | jq .gaps) duplicates=$(echo "$final" | jq .duplicates)" \
	"order_violations=$(echo "$final" | jq .order_violations) unchecked=$(echo "$final" | jq .unchecked)"
echo "max_publishes_in_1s=$(echo "$final" | jq .max_publishes_per_second) rate_violations=$(echo "$final" | jq .violations)" \
	"publishes=$(echo "$final" | jq .publishes) outbox_before=$pre_outbox outbox_peak=$peak drain_s=$drain"
echo "received_before_outage=$(echo "$before" | jq .distinct)"
