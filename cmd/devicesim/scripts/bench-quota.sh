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
# Processes: iotdasim, subgate (binary codec, open auth, store in a temp
# dir) and PROCS devicesim processes. Devices are registered first by a
# pass without reports (auto-registration; the platform drops reports of
# devices it does not know yet), then the load pass reconnects them.
#
# The rate is judged by arrival times at the simulator, which shares the
# cores with the load here: see start_measured in lib.sh for the nice
# levels (docs/performance-northbound.md).
#
# Everything it starts is stopped on exit (EXIT trap).
#
# Environment (defaults in brackets):
#   N [10000] PROCS [2] MSG_RATE [0.6] (reports/s per device)
#   WARMUP [15] WINDOW [20] (seconds)
#   CONNECT_RATE [1000] SRC [127.0.0.2-127.0.0.254]
#   SB_ADDR [127.0.0.1:48081] ADMIN_ADDR [127.0.0.1:49100] SIM_HTTP [127.0.0.1:48090]
#   MQTT_ADDR [127.0.0.1:48831] LOAD_ADDR [127.0.0.1:48092]
#   SIM_NICE [-10] DEV_NICE [10] GW_NICE [0] SIM_ENV [GOGC=400]
#   WIRE [auto: 1 when tcpdump is installed and we are root] (a kernel-stamped
#   second count of the publishes; wirerate)
#   GW_ENV ["", extra VAR=VALUE settings for the gateway, space separated]
#   BIN [<tmp>/bin] SKIP_BUILD [0] KEEP_LOGS [0]
set -euo pipefail

MSG_RATE=${MSG_RATE:-0.6}
WARMUP=${WARMUP:-15}
WINDOW=${WINDOW:-20}
GW=quota-gw
GW_SECRET=quota-gw-secret
PRODUCT=quotaprod
PREFIX=quota

# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
measured_defaults 48

check_uints N PROCS WARMUP WINDOW CONNECT_RATE
[[ $MSG_RATE =~ ^[0-9]*\.?[0-9]+$ ]] || die "MSG_RATE must be a number, got '$MSG_RATE'"
((N >= 1 && PROCS >= 1 && PROCS <= N && WINDOW >= 10)) || die "need N, PROCS ≥ 1, PROCS ≤ N and WINDOW ≥ 10"
need curl jq

bench_init
BIN=${BIN:-$tmp/bin}
build_bins subgate devicesim iotdasim
# shellcheck disable=SC2086 # GW_ENV is a list of settings
start_measured $GW_ENV

register_devices

say "load pass: $N devices, $MSG_RATE reports/s each (no acks), -counter"
dev_devices -msg-rate "$MSG_RATE" -counter -hold "$((WARMUP + WINDOW + 120))s" -drain 0s -duration "$((WARMUP + WINDOW + 300))s"
wait_reports
# The load pass reconnects every device: their ONLINE statuses take quota
# (≤100 per message, paced at subdevice.status_rate) until the platform has
# them all. The figure asked for is the steady state after that.
say "reports flowing; waiting until the platform has all $N devices ONLINE"
start=$SECONDS
until (($(curl -s --max-time 10 "http://$LOAD_ADDR/api/load/status?gateway=$GW" | jq '.by_status.ONLINE // 0') >= N)); do
	((SECONDS - start < 300)) || die "not all $N devices ONLINE at the platform after 300 s"
	sleep 1
done
say "all ONLINE after $((SECONDS - start)) s; warming up ${WARMUP}s, then measuring ${WINDOW}s"
for ((i = 0; i < WARMUP; i++)); do sleep 1; stats >/dev/null; done
s0=$(stats) t0=$(date +%s.%N)
for ((i = 0; i < WINDOW; i++)); do sleep 1; stats >/dev/null; done
s1=$(stats) t1=$(date +%s.%N)
[[ -n $s1 && -n $s0 ]] || die "the simulator did not answer GET /api/stats"
out0=$(outbox)
stop_devices
sums=$(cat "$tmp"/devicesim.*.out | jq -s '{sent: (map(.frames_out) | add), busy: (map(.busy) | add),
	errors: (map(.errors) | add), connected: (map(.connected) | add)}')
echo "devicesim: $(echo "$sums" | jq -c .)"
echo "simulator: $(echo "$s1" | jq -c 'del(.per_device)')"
jq -n -r --argjson a "$s0" --argjson b "$s1" --arg t0 "$t0" --arg t1 "$t1" --arg n "$N" --arg rate "$MSG_RATE" --arg outbox "$out0" '
	(($t1 | tonumber) - ($t0 | tonumber)) as $sec |
	($b.counted - $a.counted) as $r | ($b.publishes - $a.publishes) as $p |
	($b.batch_publishes - $a.batch_publishes) as $bp |
	"devices=\($n) msg_rate=\($rate) offered=\(($n | tonumber) * ($rate | tonumber))/s window_s=\($sec * 10 | round / 10)",
	"reports_per_s=\($r / $sec | round) publishes_per_s=\($p / $sec * 100 | round / 100) batch_publishes_per_s=\($bp / $sec * 100 | round / 100) devices_per_batch=\(if $bp > 0 then ($r / $bp * 100 | round / 100) else 0 end)",
	"whole run: tightest_51_ms=\($b.tightest_span_ms * 10 | round / 10) at \($b.tightest_at) (\($b.tightest_kinds | tostring)), window \($t0 | tonumber | todate)..\($t1 | tonumber | todate)",
	"max_publishes_in_1s=\($b.max_publishes_per_second) rate_violations=\($b.violations) window_violations=\($b.violations - $a.violations) order_violations=\($b.order_violations) gaps=\($b.gaps) outbox_at_end=\($outbox)"'
wire_report "$t0" "$t1"
