#!/usr/bin/env bash
# bench-outage.sh is issue 4's outage run at full scale (done-when 1): N
# devices report numbered properties (devicesim -ack -counter) through
# subgate; after BEFORE seconds the simulator is stopped for OUTAGE
# seconds (POST /api/control/outage on the simulator's HTTP API), the
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
# Processes: iotdasim, subgate (binary codec, open auth, store in a temp
# dir; nice levels as in start_measured, lib.sh) and PROCS devicesim
# processes. Devices are
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
#   MQTT_ADDR [127.0.0.1:38831] LOAD_ADDR [127.0.0.1:38092]
#   SIM_NICE [-10] DEV_NICE [10] GW_NICE [0] SIM_ENV [GOGC=400]
#   WIRE [auto: 1 when tcpdump is installed and we are root] (a kernel-stamped
#   second count of the publishes; wirerate)
#   GW_ENV ["", extra VAR=VALUE settings for the gateway, space separated]
#   BIN [<tmp>/bin] SKIP_BUILD [0] KEEP_LOGS [0]
set -euo pipefail

MSG_RATE=${MSG_RATE:-0.2}
BEFORE=${BEFORE:-30}
OUTAGE=${OUTAGE:-60}
AFTER=${AFTER:-60}
DRAIN_TIMEOUT=${DRAIN_TIMEOUT:-240}
GW=outage-gw
GW_SECRET=outage-gw-secret
PRODUCT=outageprod
PREFIX=out

# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
measured_defaults 38

check_uints N PROCS BEFORE OUTAGE AFTER DRAIN_TIMEOUT CONNECT_RATE
[[ $MSG_RATE =~ ^[0-9]*\.?[0-9]+$ ]] || die "MSG_RATE must be a number, got '$MSG_RATE'"
((N >= 1 && PROCS >= 1 && PROCS <= N && OUTAGE >= 1)) || die "need N, PROCS, OUTAGE ≥ 1 and PROCS ≤ N"
need curl jq

bench_init
BIN=${BIN:-$tmp/bin}
build_bins subgate devicesim iotdasim
# shellcheck disable=SC2086 # GW_ENV is a list of settings
start_measured $GW_ENV

register_devices

hold=$((BEFORE + OUTAGE + AFTER + 30))
say "load pass: $N devices, $MSG_RATE reports/s each, -ack -counter; outage of ${OUTAGE}s after ${BEFORE}s"
dev_devices -msg-rate "$MSG_RATE" -ack -counter -hold "${hold}s" -drain 60s -duration "$((hold + 300))s"
# The clock starts once the reports flow.
start=$SECONDS
wait_reports
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
wire_report
