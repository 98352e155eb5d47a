#!/usr/bin/env bash
# bench-commands.sh measures command round trips under load (issue 5,
# done-when 1): N connected devices while the IoTDA simulator sends RATE
# commands/s spread over all of them for DURATION seconds, and prints the
# platform -> device -> platform latency (p50/p90/p99/max) and the failures.
#
# Processes, each its own:
#   iotdasim   the platform, with its load API (-load-http): bulk adds,
#              POST /api/load/commands (the load run), GET /api/load/status
#   subgate    the gateway (binary codec, open auth, store in a temp dir),
#              configured with SUBGATE_* variables to use that simulator
#   devicesim  PROCS processes sharing N devices that answer every command
#              (-answer), source addresses spread over SRC
# The simulator runs apart from `subgate -dev` because the load API is not
# mounted on the -dev simulator's HTTP API (see docs/performance.md).
#
# The devices register themselves (auto-registration, add requests of ≤50)
# and the script waits until the simulator shows all N ONLINE (the gateway
# paces status entries at 150/s, so this takes about N/150 s).
#
# The gateway's upstream cap (SUBGATE_NORTHBOUND_MAX_MSGS_PER_SEC, default 50
# as on IoTDA) is raised to MAX_MSGS so that 1,000 responses/s can go up.
# IoTDA's cap is per connection and the simulator only counts publishes over
# its own cap (violations): the script prints that count.
#
# Everything it starts is stopped on exit (EXIT trap).
#
# Environment (defaults in brackets):
#   N [10000] PROCS [2] RATE [1000] DURATION [30] TIMEOUT_MS [20000]
#   MAX_MSGS [5000]                  gateway upstream publishes/s
#   CONNECT_RATE [1000]              connects/s per devicesim process
#   SRC [127.0.0.2-127.0.0.254]
#   MQTT_ADDR [127.0.0.1:28830] LOAD_ADDR [127.0.0.1:28091]
#   SB_ADDR [127.0.0.1:28081] ADMIN_ADDR [127.0.0.1:29100]
#   ONLINE_TIMEOUT [300]             seconds to wait for N ONLINE
#   BIN [<tmp>/bin]                  where binaries are built (or found, SKIP_BUILD=1)
#   SKIP_BUILD [0] KEEP_LOGS [0]
set -euo pipefail

N=${N:-10000}
PROCS=${PROCS:-2}
RATE=${RATE:-1000}
DURATION=${DURATION:-30}
TIMEOUT_MS=${TIMEOUT_MS:-20000}
MAX_MSGS=${MAX_MSGS:-5000}
CONNECT_RATE=${CONNECT_RATE:-1000}
SRC=${SRC:-127.0.0.2-127.0.0.254}
MQTT_ADDR=${MQTT_ADDR:-127.0.0.1:28830}
LOAD_ADDR=${LOAD_ADDR:-127.0.0.1:28091}
SB_ADDR=${SB_ADDR:-127.0.0.1:28081}
ADMIN_ADDR=${ADMIN_ADDR:-127.0.0.1:29100}
ONLINE_TIMEOUT=${ONLINE_TIMEOUT:-300}
SKIP_BUILD=${SKIP_BUILD:-0}
KEEP_LOGS=${KEEP_LOGS:-0}
GW=bench-gw
GW_SECRET=bench-gw-secret
PRODUCT=benchprod
PREFIX=bench

# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

check_uints N PROCS RATE DURATION TIMEOUT_MS MAX_MSGS CONNECT_RATE ONLINE_TIMEOUT
((N >= 1 && PROCS >= 1 && PROCS <= N && RATE >= 1 && DURATION >= 1)) || die "need N, PROCS, RATE, DURATION ≥ 1 and PROCS ≤ N"
need curl jq

bench_init
BIN=${BIN:-$tmp/bin}
build_bins subgate iotdasim devicesim

start_load_sim

say "starting the gateway (codec binary, max_msgs_per_sec $MAX_MSGS, store in $tmp/data)"
start_gateway gateway SUBGATE_NORTHBOUND_MAX_MSGS_PER_SEC="$MAX_MSGS" SUBGATE_LOG_LEVEL=warn
wait_http "http://$ADMIN_ADDR/readyz" 60 "$gw_pid"

hold=$((ONLINE_TIMEOUT + DURATION + TIMEOUT_MS / 1000 + 120))
start_devices "$N" binary "$PREFIX" -answer -hold "${hold}s" -duration "$((hold + 60))s" -report 0
say "started ${#dev_pids[@]} devicesim processes for $N devices; waiting until all are ONLINE at the simulator"

status_url="http://$LOAD_ADDR/api/load/status?gateway=$GW&prefix=$PREFIX&from=0&to=$N"
start=$SECONDS last=-1
while :; do
	online=$(curl -s --max-time 5 "$status_url" | jq '.matching.ONLINE // 0')
	((online >= N)) && break
	if ((online != last && (SECONDS - start) % 10 == 0)); then say "ONLINE $online/$N after $((SECONDS - start))s"; last=$online; fi
	kill -0 "$gw_pid" 2>/dev/null || die "the gateway exited"
	for pid in "${dev_pids[@]}"; do kill -0 "$pid" 2>/dev/null || die "a devicesim process exited early"; done
	((SECONDS - start < ONLINE_TIMEOUT)) || die "only $online of $N ONLINE after ${ONLINE_TIMEOUT}s"
	sleep 1
done
online_after=$((SECONDS - start))
say "all $N ONLINE after ${online_after}s; sending $RATE commands/s for ${DURATION}s"

viol_before=$(curl -s "$status_url" | jq .violations)
total=$((RATE * DURATION))
stats=$(curl -s --max-time $((DURATION + TIMEOUT_MS / 1000 + 60)) -X POST "http://$LOAD_ADDR/api/load/commands" \
	-d "{\"gateway\":\"$GW\",\"prefix\":\"$PREFIX\",\"rate\":$RATE,\"total\":$total,\"timeout_ms\":$TIMEOUT_MS}")
echo "$stats" | jq -e .sent >/dev/null 2>&1 || die "load run failed: $stats"
summary=$(curl -s "$status_url")
viol=$(($(echo "$summary" | jq .violations) - viol_before))
gw_rss=$(awk '/^VmRSS:/ { print $2 }' "/proc/$gw_pid/status")

echo "$stats" | jq -c .
echo "$stats" | jq -r --arg n "$N" '"devices=\($n) targets=\(.targets) rate=\(.rate)/s sent=\(.sent) ok=\(.ok) failed=\(.failed) timed_out=\(.timed_out)"'
echo "$stats" | jq -r '"round_trip_ms p50=\(.p50_ms) p90=\(.p90_ms) p99=\(.p99_ms) max=\(.max_ms) elapsed_s=\(.elapsed_ms/1000)"'
echo "failures=$(echo "$stats" | jq '.failed + .timed_out')"
echo "online_after_s=$online_after gateway_rss_kib=$gw_rss simulator_protocol_errors=$(echo "$summary" | jq .errors)"
echo "simulator_rate_violations=$viol (publishes over the simulator's 50/s per-connection cap, counted only; IoTDA's real cap is per connection and was raised here to $MAX_MSGS on the gateway)"
