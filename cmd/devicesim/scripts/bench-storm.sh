#!/usr/bin/env bash
# bench-storm.sh runs a reconnect storm at full scale (issue 5, done-when 2):
# RECORDS sub-devices known to the platform and to the gateway's store, the
# gateway restarted, then CONNECT of them reconnecting at once. It prints
#
#   ready_ms           gateway process start -> /readyz 200 with RECORDS records
#   converged_s        restart -> the simulator shows exactly the connected
#                      devices ONLINE and every other one OFFLINE
#   status_messages, status_entries, max_entries_per_message,
#   max_entries_per_second (sliding one-second window at the simulator)
#
# Steps: the simulator (its own process, so that platform state survives the
# gateway restart) gets RECORDS devices by bulk add, OFFLINE as after an
# earlier run; a preparation run of the gateway learns them by sync (its
# startup grace is set long so that it reports nothing) and stops; the
# measured run starts with the production status settings (rate 150/s,
# debounce 1 s, startup grace 10 s) and CONNECT devices reconnect
# (devicesim, PROCS processes, source addresses spread over SRC). The
# gateway holds CONNECT sockets: keep CONNECT under its open files limit
# (20,000 here).
#
# Environment (defaults in brackets):
#   RECORDS [50000] CONNECT [19000] PROCS [2] CONNECT_RATE [2000]
#   SRC [127.0.0.2-127.0.0.254]
#   MQTT_ADDR [127.0.0.1:28831] LOAD_ADDR [127.0.0.1:28092]
#   SB_ADDR [127.0.0.1:28082] ADMIN_ADDR [127.0.0.1:29101]
#   SYNC_TIMEOUT [300] CONVERGE_TIMEOUT [480]   seconds
#   BIN [<tmp>/bin] SKIP_BUILD [0] KEEP_LOGS [0]
set -euo pipefail

RECORDS=${RECORDS:-50000}
CONNECT=${CONNECT:-19000}
PROCS=${PROCS:-2}
CONNECT_RATE=${CONNECT_RATE:-2000}
SRC=${SRC:-127.0.0.2-127.0.0.254}
MQTT_ADDR=${MQTT_ADDR:-127.0.0.1:28831}
LOAD_ADDR=${LOAD_ADDR:-127.0.0.1:28092}
SB_ADDR=${SB_ADDR:-127.0.0.1:28082}
ADMIN_ADDR=${ADMIN_ADDR:-127.0.0.1:29101}
SYNC_TIMEOUT=${SYNC_TIMEOUT:-300}
CONVERGE_TIMEOUT=${CONVERGE_TIMEOUT:-480}
SKIP_BUILD=${SKIP_BUILD:-0}
KEEP_LOGS=${KEEP_LOGS:-0}
GW=storm-gw
GW_SECRET=storm-gw-secret
PRODUCT=stormprod
PREFIX=storm

# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

check_uints RECORDS CONNECT PROCS CONNECT_RATE SYNC_TIMEOUT CONVERGE_TIMEOUT
((RECORDS >= 1 && RECORDS <= 50000)) || die "RECORDS must be in [1, 50000] (IoTDA's per-gateway maximum)"
((CONNECT >= 1 && CONNECT <= RECORDS && PROCS >= 1 && PROCS <= CONNECT)) || die "need 1 ≤ CONNECT ≤ RECORDS and 1 ≤ PROCS ≤ CONNECT"
need curl jq

bench_init
BIN=${BIN:-$tmp/bin}
build_bins subgate iotdasim devicesim

now_ms() { date +%s%3N; }
# Readiness is timed (ready_ms): ask twice as often as by default.
poll_hz=20

start_load_sim
say "preparation run: the gateway learns the records by sync"
# fsync off for this run only: it is preparation, and the store is closed
# cleanly before the measured run (one transaction per notification of 50
# with fsync made a 50,000-record sync take minutes here under load).
start_gateway prep SUBGATE_LOG_LEVEL=info SUBGATE_SUBDEVICE_STARTUP_GRACE=1h SUBGATE_STORE_NO_SYNC=1
wait_http "http://$ADMIN_ADDR/readyz" 60 "$gw_pid"
# Seeded in chunks of 50 while the gateway is connected, one add
# notification per request. One bulk add before the sync would be the
# natural way, but the gateway drops part of a sync replay of 1,000
# notifications as stale (docs/performance.md, "Sync of 50,000 records").
for ((i = 0; i < RECORDS; i += 50)); do
	n=$((RECORDS - i < 50 ? RECORDS - i : 50))
	added=$(curl -s -X POST "http://$LOAD_ADDR/api/load/devices" \
		-d "{\"gateway\":\"$GW\",\"product_id\":\"$PRODUCT\",\"prefix\":\"$PREFIX\",\"offset\":$i,\"count\":$n,\"status\":\"OFFLINE\"}")
	[[ $(echo "$added" | jq .added) == "$n" ]] || die "bulk add failed: $added"
done
say "simulator holds $RECORDS sub-devices (list version $(echo "$added" | jq .version))"
start=$SECONDS
while :; do
	total=$(curl -s --max-time 5 "http://$ADMIN_ADDR/api/v1/devices?limit=1" | jq '.total // 0')
	((total >= RECORDS)) && break
	((SECONDS - start < SYNC_TIMEOUT)) || die "the gateway has $total of $RECORDS records after ${SYNC_TIMEOUT}s"
	(((SECONDS - start) % 10 == 0)) && say "gateway has $total of $RECORDS records after $((SECONDS - start))s"
	sleep 1
done
say "gateway has $RECORDS records after $((SECONDS - start))s; stopping it"
stop_pid "$gw_pid" TERM
gw_pid=""

# The measured run: production status settings.
since=$(now_ms)
t0=$(now_ms)
start_gateway run SUBGATE_LOG_LEVEL=info
wait_http "http://$ADMIN_ADDR/readyz" 60 "$gw_pid"
ready_ms=$(($(now_ms) - t0))
say "gateway ready ${ready_ms} ms after start with $RECORDS records; $CONNECT devices reconnect"

start_devices "$CONNECT" binary "$PREFIX" -max-pending 2000 -hold "$((CONVERGE_TIMEOUT + 120))s" \
	-duration "$((CONVERGE_TIMEOUT + 180))s" -report 0

status_url="http://$LOAD_ADDR/api/load/status?gateway=$GW&since=$since&prefix=$PREFIX&from=0&to=$CONNECT"
others=$((RECORDS - CONNECT))
converged="" sessions_at=""
start_ms=$t0
while :; do
	s=$(curl -s --max-time 5 "$status_url")
	on=$(echo "$s" | jq '.matching.ONLINE // 0')
	off=$(echo "$s" | jq '.others.OFFLINE // 0')
	entries=$(echo "$s" | jq .reports.entries)
	el=$((($(now_ms) - start_ms) / 1000))
	if [[ -z $sessions_at ]]; then
		sess=$(metric subgate_southbound_sessions)
		((sess >= CONNECT)) && { sessions_at=$el; say "all $CONNECT devices connected after ${el}s"; }
	fi
	if [[ -z $converged ]] && ((on == CONNECT && off == others)); then
		converged=$el
		converged_report=$s
		say "converged after ${el}s: $on ONLINE, $off OFFLINE"
	fi
	# A storm reports only real changes (decisions D22): stop 15 s after
	# convergence, long enough to see that nothing else is sent.
	[[ -n $converged ]] && ((el - converged >= 15)) && break
	((el % 15 == 0)) && say "t=${el}s ONLINE $on/$CONNECT, others OFFLINE $off/$others, status entries $entries"
	kill -0 "$gw_pid" 2>/dev/null || die "the gateway exited"
	((el < CONVERGE_TIMEOUT)) || { say "timeout after ${CONVERGE_TIMEOUT}s"; break; }
	sleep 1
done
final=$(curl -s "$status_url")
gw_rss=$(awk '/^VmRSS:/ { print $2 }' "/proc/$gw_pid/status")

echo "records=$RECORDS connected=$CONNECT ready_ms=$ready_ms devices_connected_s=${sessions_at:-timeout}"
echo "converged_s=${converged:-timeout}"
[[ -n $converged ]] && echo "$converged_report" | jq -r '"at convergence: status_messages=\(.reports.messages) status_entries=\(.reports.entries) max_entries_per_message=\(.reports.max_entries) max_entries_per_second=\(.reports.max_entries_per_second)"'
echo "$final" | jq -r '"final: status_messages=\(.reports.messages) status_entries=\(.reports.entries) max_entries_per_message=\(.reports.max_entries) max_entries_per_second=\(.reports.max_entries_per_second) by_status=\(.by_status|tostring) protocol_errors=\(.errors)"'
echo "gateway_rss_kib=$gw_rss"
[[ -n $converged ]] || exit 1
