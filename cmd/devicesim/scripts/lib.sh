# lib.sh holds what the bench-*.sh scripts share; they source it, it is not
# run on its own. It expects `set -euo pipefail` and these variables, where
# a function needs them: SB_ADDR ADMIN_ADDR (gateway), SRC CONNECT_RATE
# PROCS (devicesim), SKIP_BUILD KEEP_LOGS, and for the simulator helpers
# MQTT_ADDR LOAD_ADDR GW GW_SECRET PRODUCT, or SIM_HTTP GW N PREFIX.
# Optional DEV_NICE, GW_NICE and SIM_NICE run devicesim, the gateway and
# the simulator at that nice level (a benchmark that measures timing at the
# simulator lets it stand in for a platform on its own machine).
#
# After bench_init it keeps the processes it starts in gw_pid, sim_pid and
# dev_pids, and stops them all on exit (EXIT trap): devicesim with SIGINT,
# the gateway with SIGTERM, the simulator with $sim_sig.

# bench is the sourcing script's name, the prefix of every message.
bench=$(basename "${BASH_SOURCE[1]}" .sh)
bench_lib_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# sim_sig is the signal that stops the simulator process.
sim_sig=TERM
# poll_hz is how many times a second wait_http asks.
poll_hz=10

say() { echo "$bench: $*" >&2; }
die() { say "error: $*"; exit 1; }

# check_uints VAR...: each variable must hold a non-negative integer.
check_uints() {
	local v
	for v in "$@"; do
		[[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a non-negative integer, got '${!v}'"
	done
}

# need CMD...: each command must be installed.
need() {
	local c
	for c in "$@"; do
		command -v "$c" >/dev/null || die "$c is needed"
	done
}

# bench_init sets root (the repository), raises the open files limit to the
# hard limit (each process opens one descriptor per connection), creates
# the private temporary directory tmp and installs the traps: on exit
# everything started is stopped and tmp removed, unless KEEP_LOGS=1 or the
# script failed.
bench_init() {
	root=$(cd "$bench_lib_dir/../../.." && pwd)
	ulimit -n "$(ulimit -Hn)"
	tmp=$(mktemp -d "${TMPDIR:-/tmp}/$bench.XXXXXX")
	chmod 700 "$tmp"
	gw_pid="" sim_pid="" dev_pids=() cap_pid=""
	trap cleanup EXIT
	trap 'exit 130' INT TERM
}

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

# show_logs prints the end of the gateway's and the simulator's logs after
# a failure; a script may define its own after sourcing this file.
show_logs() {
	local f
	for f in gateway.log iotdasim.log; do
		[[ -f $tmp/$f ]] || continue
		say "last lines of $f:"
		tail -n 15 "$tmp/$f" >&2 || true
	done
}

cleanup() {
	local rc=$? pid
	trap - EXIT INT TERM
	for pid in "${dev_pids[@]}"; do stop_pid "$pid" INT; done
	[[ -n $gw_pid ]] && stop_pid "$gw_pid" TERM
	[[ -n $sim_pid ]] && stop_pid "$sim_pid" "$sim_sig"
	[[ -n $cap_pid ]] && stop_pid "$cap_pid" INT
	((rc == 0)) || show_logs
	if [[ $KEEP_LOGS == 1 || $rc != 0 ]]; then say "logs kept in $tmp"; else rm -rf "$tmp"; fi
	exit "$rc"
}

# build_bins NAME...: build ./cmd/NAME into BIN, or with SKIP_BUILD=1 check
# that the binaries are there.
build_bins() {
	local b
	if [[ $SKIP_BUILD == 1 ]]; then
		for b in "$@"; do [[ -x $BIN/$b ]] || die "SKIP_BUILD=1 but ${BIN#./}/$b is missing"; done
		return 0
	fi
	say "building into $BIN"
	mkdir -p "$BIN"
	for b in "$@"; do (cd "$root" && go build -o "$BIN/$b" "./cmd/$b"); done
}

alive() { kill -0 "$1" 2>/dev/null; }

# run_nice LEVEL CMD...: CMD at nice LEVEL (as it is when LEVEL is empty);
# exec, so the caller's $! is CMD's pid.
run_nice() {
	local level=$1
	shift
	if [[ -z $level ]]; then exec "$@"; fi
	exec nice -n "$level" "$@"
}

# wait_http URL SECONDS PID: until URL answers 200 (asked poll_hz times a
# second); fails when PID exits or after SECONDS.
wait_http() {
	local i pause
	pause=$(awk -v hz="$poll_hz" 'BEGIN { print 1 / hz }')
	for ((i = 0; i < $2 * poll_hz; i++)); do
		alive "$3" || die "process $3 exited (waiting for $1)"
		[[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$1" || true) == 200 ]] && return 0
		sleep "$pause"
	done
	die "$1 did not answer 200 within $2 s"
}

# metric NAME: the value of an unlabelled gateway metric, as an integer
# (-1: none, or the admin API did not answer).
metric() {
	curl -s --max-time 5 "http://$ADMIN_ADDR/metrics" |
		awk -v m="$1" '$1 == m { printf "%d\n", $2; found = 1 } END { if (!found) print -1 }'
}

# start_devices TOTAL CODEC PREFIX ARGS...: PROCS devicesim processes
# sharing TOTAL devices (disjoint node id ranges) on SB_ADDR, ARGS added.
# Their pids replace dev_pids; process P writes $tmp/devicesim.P.out/.log.
start_devices() {
	local total=$1 codec=$2 prefix=$3 per offset=0 p n
	shift 3
	per=$((total / PROCS))
	dev_pids=()
	for ((p = 0; p < PROCS; p++)); do
		n=$per
		((p == PROCS - 1)) && n=$((total - offset))
		run_nice "${DEV_NICE:-}" "$BIN/devicesim" -addr "$SB_ADDR" -codec "$codec" -n "$n" -offset "$offset" -prefix "$prefix" \
			-src "$SRC" -connect-rate "$CONNECT_RATE" "$@" >"$tmp/devicesim.$p.out" 2>"$tmp/devicesim.$p.log" &
		dev_pids+=($!)
		offset=$((offset + n))
	done
}

# stop_devices stops the devicesim processes (SIGINT: they print their
# summaries) and forgets them.
stop_devices() {
	local pid
	for pid in "${dev_pids[@]}"; do stop_pid "$pid" INT; done
	dev_pids=()
}

# --- A separate iotdasim with its load API, and a gateway using it.

# start_load_sim starts iotdasim on MQTT_ADDR with its load API on
# LOAD_ADDR (and its HTTP API on SIM_HTTP when set), the gateway device GW,
# the extra flags in SIM_ARGS and environment in SIM_ENV, and waits for it.
start_load_sim() {
	say "starting the simulator on $MQTT_ADDR (load API $LOAD_ADDR)"
	# shellcheck disable=SC2086 # SIM_ENV and SIM_ARGS are lists
	run_nice "${SIM_NICE:-}" env ${SIM_ENV:-} "$BIN/iotdasim" -listen "$MQTT_ADDR" -http "${SIM_HTTP:-}" -load-http "$LOAD_ADDR" \
		-device "$GW:$GW_SECRET" -log-level WARN ${SIM_ARGS:-} >"$tmp/iotdasim.out" 2>"$tmp/iotdasim.log" &
	sim_pid=$!
	wait_http "http://$LOAD_ADDR/api/load/status?gateway=$GW" 20 "$sim_pid"
}

# start_gateway LOGNAME [VAR=VALUE...]: subgate as GW at that simulator
# (binary codec, open auth, store in $tmp/data), its output in
# $tmp/LOGNAME.out/.log, with the settings VAR=VALUE added.
start_gateway() {
	local log=$1
	shift
	(
		cd "$tmp"
		exec env SUBGATE_NORTHBOUND_SERVER="tcp://$MQTT_ADDR" SUBGATE_NORTHBOUND_DEVICE_ID="$GW" \
			SUBGATE_NORTHBOUND_SECRET="$GW_SECRET" SUBGATE_SOUTHBOUND_LISTEN="$SB_ADDR" \
			SUBGATE_SOUTHBOUND_CODEC=binary SUBGATE_SOUTHBOUND_AUTH=open SUBGATE_SOUTHBOUND_MAX_CONNS=30000 \
			SUBGATE_SUBDEVICE_DEFAULT_PRODUCT_ID="$PRODUCT" SUBGATE_STORE_DIR="$tmp/data" \
			SUBGATE_ADMIN_LISTEN="$ADMIN_ADDR" "$@" nice -n "${GW_NICE:-0}" "$BIN/subgate"
	) >"$tmp/$log.out" 2>"$tmp/$log.log" &
	gw_pid=$!
}

# measured_defaults P: the settings bench-quota and bench-outage share,
# with their addresses on ports P081 (devices), P090 (simulator HTTP),
# P092 (load API), P831 (MQTT) and (P+1)100 (gateway admin), so that the
# two can run side by side. Values already set are kept.
measured_defaults() {
	local p=$1
	N=${N:-10000} PROCS=${PROCS:-2} CONNECT_RATE=${CONNECT_RATE:-1000} SRC=${SRC:-127.0.0.2-127.0.0.254}
	SB_ADDR=${SB_ADDR:-127.0.0.1:${p}081} ADMIN_ADDR=${ADMIN_ADDR:-127.0.0.1:$((p + 1))100}
	SIM_HTTP=${SIM_HTTP:-127.0.0.1:${p}090} MQTT_ADDR=${MQTT_ADDR:-127.0.0.1:${p}831}
	LOAD_ADDR=${LOAD_ADDR:-127.0.0.1:${p}092}
	GW_ENV=${GW_ENV:-} SKIP_BUILD=${SKIP_BUILD:-0} KEEP_LOGS=${KEEP_LOGS:-0}
}

# start_measured GW_SETTINGS...: the setup of the benchmarks that judge
# the gateway by what the platform sees (bench-quota, bench-outage): the
# simulator as its own process at SIM_NICE (default -10: it stands in for a
# platform on its own machines, and a descheduled simulator would stamp
# arrivals late and then several at once), recording every report, with
# its HTTP API on SIM_HTTP; the gateway with GW_SETTINGS (VAR=VALUE) at
# GW_NICE; devicesim later at DEV_NICE (default 10). Sets stats_url.
start_measured() {
	SIM_NICE=${SIM_NICE:--10}
	DEV_NICE=${DEV_NICE:-10}
	SIM_ENV=${SIM_ENV:-GOGC=400}
	SIM_ARGS="-max-records 1000000 ${SIM_ARGS:-}"
	start_wire_capture
	start_load_sim
	stats_url="http://$SIM_HTTP/api/stats?gateway=$GW"
	start_gateway gateway SUBGATE_LOG_LEVEL=warn "$@"
	wait_http "http://$ADMIN_ADDR/readyz" 60 "$gw_pid"
}

# --- Helpers of the start_measured benchmarks.

# start_wire_capture: with WIRE=1 (the default when tcpdump is installed
# and may capture), record the MQTT connection's packets on lo with
# kernel timestamps, for wire_report: a second count of the quota that
# does not depend on when the simulator's goroutines run
# (docs/performance-northbound.md). WIRE=0 skips it.
start_wire_capture() {
	local port=${MQTT_ADDR##*:} i
	WIRE=${WIRE:-auto}
	if [[ $WIRE == auto ]]; then
		WIRE=0
		command -v tcpdump >/dev/null && (($(id -u) == 0)) && WIRE=1
	fi
	[[ $WIRE == 1 ]] || return 0
	build_bins wirerate
	tcpdump -i lo -s 0 -B 65536 --immediate-mode -U --time-stamp-precision=nano -w "$tmp/mqtt.pcap" "tcp dst port $port" \
		>"$tmp/tcpdump.log" 2>&1 &
	cap_pid=$!
	for ((i = 0; i < 100; i++)); do
		grep -q "listening on" "$tmp/tcpdump.log" && return 0
		alive "$cap_pid" || break
		sleep 0.1
	done
	die "tcpdump did not start: $(cat "$tmp/tcpdump.log")"
}

# wire_report [SINCE UNTIL]: stop the capture and print the publishes of
# the capture in all and, when given, between the two unix times.
wire_report() {
	[[ $WIRE == 1 && -n $cap_pid ]] || return 0
	stop_pid "$cap_pid" INT
	cap_pid=""
	local dropped port=${MQTT_ADDR##*:}
	dropped=$(grep -Eo '[0-9]+ packets dropped by kernel' "$tmp/tcpdump.log" || echo "unknown")
	"$BIN/wirerate" -port "$port" "$tmp/mqtt.pcap" | jq -c --arg d "$dropped" \
		'"wire (tcpdump, whole run): publishes=\(.publishes) max_publishes_in_1s=\(.max_in_window) violations=\(.violations) tightest_51_ms=\(.tightest_span_ms * 10 | round / 10) at \(.tightest_at) unparsed_streams=\(.unparsed_streams) (\($d))"' -r
	(($# == 2)) || return 0
	local since until
	since=$(date -u -d "@$1" +%Y-%m-%dT%H:%M:%S.%NZ) until=$(date -u -d "@$2" +%Y-%m-%dT%H:%M:%S.%NZ)
	"$BIN/wirerate" -port "$port" -since "$since" -until "$until" "$tmp/mqtt.pcap" | jq -r \
		'"wire (tcpdump, window): publishes=\(.publishes) max_publishes_in_1s=\(.max_in_window) violations=\(.violations)"'
}

# stats: the simulator's GET /api/stats for GW (empty during an outage).
stats() { curl -s --max-time 30 --retry 2 "$stats_url" || true; }

# outbox: items in the gateway's outbox (a large number if unreadable).
outbox() {
	local v
	v=$(metric subgate_outbox_messages)
	((v >= 0)) || v=999999999
	echo "$v"
}

# dev_devices ARGS...: start_devices for N devices of PREFIX, binary codec,
# JSON summaries, ARGS added.
dev_devices() { start_devices "$N" binary "$PREFIX" -report 0 -json "$@"; }

# register_devices connects the N devices once and waits (at most 600 s)
# until the simulator knows them all: it drops reports of devices it does
# not know yet.
register_devices() {
	local start known
	say "registration pass: $N devices connect once"
	dev_devices -hold 600s -duration 900s
	start=$SECONDS
	while :; do
		known=$(curl -s --max-time 10 "http://$SIM_HTTP/api/devices?gateway=$GW" | jq '.devices | length')
		((known >= N)) && break
		((SECONDS - start < 600)) || die "only $known of $N devices registered after 600 s"
		sleep 2
	done
	stop_devices
	say "all $N registered after $((SECONDS - start)) s"
}

# wait_reports waits (at most 120 s) until the simulator has counted more
# than N reports.
wait_reports() {
	local start=$SECONDS
	until (($(stats | jq '.counted // 0' 2>/dev/null || echo 0) > N)); do
		((SECONDS - start < 120)) || die "no reports at the simulator after 120 s"
		sleep 1
	done
}
