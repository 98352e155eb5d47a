#!/usr/bin/env bash
# bench-conns.sh measures the memory a subgate gateway spends per connected
# device (issue 3, done-when 1; docs/memory.md explains the figures).
#
# It builds subgate, iotdasim and devicesim into ./bin and starts three kinds
# of process, so that the gateway's memory is measured alone:
#   - bin/iotdasim, the IoTDA simulator (MQTT broker), as its own process;
#   - bin/subgate, configured only through SUBGATE_* variables (northbound
#     to the simulator, auto-registration with a product id, store in a
#     temporary directory, the chosen codec and auth, pprof on the admin
#     port);
#   - PROCS devicesim processes with disjoint node id ranges (each process
#     needs one descriptor per device).
# With AUTH=token it derives one secret per device from a random master key
# (devicesim -secret-derive) and provisions them through the admin API
# (PUT /api/v1/tokens/{node}) before any device connects.
#
# It waits for /readyz, forces a GC (GET /debug/pprof/heap?gc=1) and reads
# the gateway's memory, connects N devices, waits until the gateway's
# subgate_southbound_sessions gauge reaches N and its registration and status
# queues are empty, settles, forces a GC again and reads the memory again. It
# prints key=value lines:
#
#   n= codec= auth= sessions= gogc= gomemlimit=
#   rss_before_kib= rss_after_kib= per_conn_bytes=       (VmRSS: anon + file)
#   rss_anon_per_conn_bytes= rss_file_per_conn_bytes=    (RssAnon, RssFile+RssShmem)
#   heap_inuse_before_bytes= heap_inuse_after_bytes= heap_per_conn_bytes=
#   stack_per_conn_bytes= go_sys_per_conn_bytes=
#   devicesim_rss_kib= iotdasim_rss_kib=                  (load side, not counted)
#
# PROFILE=FILE also saves the gateway's heap profile (after the run's GC) for
# `go tool pprof -top -inuse_space FILE`.
#
# Everything it starts is stopped on exit (an EXIT trap), whatever happens.
#
# Environment (defaults in brackets):
#   N [19000]            devices in total
#   CODEC [binary]       jsonl | binary | demo
#   AUTH [token]         token | open (demo codec: open only)
#   PROCS [2]            devicesim processes sharing N
#   CONNECT_RATE [1000]  connects per second per devicesim process
#   SRC [127.0.0.2-127.0.0.254]  devicesim source addresses
#   GW_GOGC []           GOGC for the gateway (empty: Go's default, 100)
#   GW_GOMEMLIMIT []     GOMEMLIMIT for the gateway, e.g. 200MiB (empty: none)
#   GW_GODEBUG []        GODEBUG for the gateway, e.g. memprofilerate=1 for an
#                        exact heap PROFILE (slower; the figures then include
#                        the profiler's own records)
#   SB_ADDR [127.0.0.1:18081] ADMIN_ADDR [127.0.0.1:19100] SIM_ADDR [127.0.0.1:18830]
#   READY_TIMEOUT [60]   seconds to wait for /readyz
#   SESSIONS_TIMEOUT [600] seconds to wait for N sessions
#   QUIET_TIMEOUT [300]  seconds to wait for empty registration/status queues
#   SETTLE [5]           seconds between the end of the login work and measuring
#   PROFILE []           file for the gateway's heap profile at the end
#   KEEP_LOGS [0]        1: keep the temporary directory with the logs
#   SKIP_BUILD [0]       1: use the binaries already in ./bin
set -euo pipefail

N=${N:-19000}
CODEC=${CODEC:-binary}
AUTH=${AUTH:-token}
PROCS=${PROCS:-2}
CONNECT_RATE=${CONNECT_RATE:-1000}
SRC=${SRC:-127.0.0.2-127.0.0.254}
GW_GOGC=${GW_GOGC:-}
GW_GOMEMLIMIT=${GW_GOMEMLIMIT:-}
GW_GODEBUG=${GW_GODEBUG:-}
SB_ADDR=${SB_ADDR:-127.0.0.1:18081}
ADMIN_ADDR=${ADMIN_ADDR:-127.0.0.1:19100}
SIM_ADDR=${SIM_ADDR:-127.0.0.1:18830}
READY_TIMEOUT=${READY_TIMEOUT:-60}
SESSIONS_TIMEOUT=${SESSIONS_TIMEOUT:-600}
QUIET_TIMEOUT=${QUIET_TIMEOUT:-300}
SETTLE=${SETTLE:-5}
PROFILE=${PROFILE:-}
KEEP_LOGS=${KEEP_LOGS:-0}
SKIP_BUILD=${SKIP_BUILD:-0}

# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

check_uints N PROCS CONNECT_RATE READY_TIMEOUT SESSIONS_TIMEOUT QUIET_TIMEOUT SETTLE
((N >= 1)) || die "N must be at least 1"
((PROCS >= 1 && PROCS <= N)) || die "PROCS must be in [1, N]"
[[ $AUTH == token || $AUTH == open ]] || die "AUTH must be token or open, got '$AUTH'"
[[ $AUTH == open || $CODEC != demo ]] || die "the demo codec has no token auth: use AUTH=open"
[[ -z $GW_GOGC || $GW_GOGC =~ ^([0-9]+|off)$ ]] || die "GW_GOGC must be a number or off, got '$GW_GOGC'"
[[ -z $GW_GOMEMLIMIT || $GW_GOMEMLIMIT =~ ^[0-9]+(B|KiB|MiB|GiB|TiB)?$ ]] ||
	die "GW_GOMEMLIMIT must look like 200MiB, got '$GW_GOMEMLIMIT'"
need curl

bench_init
cd "$root"
say "open files limit $(ulimit -n)"
BIN=./bin
sim_sig=INT
show_logs() {
	[[ -f $tmp/gateway.log ]] || return 0
	say "last gateway log lines:"
	tail -n 20 "$tmp/gateway.log" >&2 || true
}

# status_kib PID FIELD: a /proc/PID/status field in KiB (0 when absent).
status_kib() { awk -v f="$2:" '$1 == f { v = $2 } END { print v + 0 }' "/proc/$1/status"; }
# force_gc: run a full GC in the gateway (the heap profile handler does,
# with gc=1) so that the heap figures hold live data only.
force_gc() {
	curl -s --max-time 60 -o "${1:-/dev/null}" "http://$ADMIN_ADDR/debug/pprof/heap?gc=1" ||
		die "cannot reach /debug/pprof/heap on $ADMIN_ADDR"
}
# snapshot PREFIX: force a GC, then store the gateway's memory figures in
# PREFIX_rss PREFIX_anon PREFIX_file (KiB) and PREFIX_heap PREFIX_stack
# PREFIX_sys (bytes).
snapshot() {
	force_gc "${2:-}"
	# One read of /proc/PID/status, so that the three figures agree.
	local rss anon file m
	read -r rss anon file < <(awk '$1 == "VmRSS:" { r = $2 } $1 == "RssAnon:" { a = $2 }
		$1 == "RssFile:" || $1 == "RssShmem:" { f += $2 } END { print r + 0, a + 0, f + 0 }' "/proc/$gw_pid/status")
	printf -v "$1_rss" %d "$rss"
	printf -v "$1_anon" %d "$anon"
	printf -v "$1_file" %d "$file"
	m=$(curl -s --max-time 5 "http://$ADMIN_ADDR/metrics")
	printf -v "$1_heap" %d "$(awk '$1 == "go_memstats_heap_inuse_bytes" { printf "%d", $2 }' <<<"$m")"
	printf -v "$1_stack" %d "$(awk '$1 == "go_memstats_stack_inuse_bytes" { printf "%d", $2 }' <<<"$m")"
	printf -v "$1_sys" %d "$(awk '$1 == "go_memstats_sys_bytes" { printf "%d", $2 }' <<<"$m")"
}
check_procs() {
	alive "$gw_pid" || die "the gateway exited"
	alive "$sim_pid" || die "iotdasim exited"
	for pid in "${dev_pids[@]}"; do
		alive "$pid" || { tail -n 3 "$tmp"/devicesim.*.log >&2; die "a devicesim process exited early"; }
	done
}

if curl -s -o /dev/null --max-time 2 "http://$ADMIN_ADDR/readyz"; then
	die "something already answers on $ADMIN_ADDR: stop it or set ADMIN_ADDR"
fi

build_bins subgate iotdasim devicesim

# Gateway credentials at the simulator: fresh for every run.
gw_id=bench-gw
gw_secret=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')

say "starting iotdasim on $SIM_ADDR"
"$BIN/iotdasim" -listen "$SIM_ADDR" -http "" -device "$gw_id:$gw_secret" -log-level WARN \
	>"$tmp/iotdasim.out" 2>"$tmp/iotdasim.log" &
sim_pid=$!
for ((i = 0; ; i++)); do
	grep -q '^iotdasim: MQTT on' "$tmp/iotdasim.out" 2>/dev/null && break
	alive "$sim_pid" || { cat "$tmp/iotdasim.log" >&2; die "iotdasim exited"; }
	((i < READY_TIMEOUT * 10)) || die "iotdasim did not start in ${READY_TIMEOUT}s"
	sleep 0.1
done

gw_env=(
	SUBGATE_STORE_DIR="$tmp/data"
	SUBGATE_NORTHBOUND_SERVER="tcp://$SIM_ADDR"
	SUBGATE_NORTHBOUND_DEVICE_ID="$gw_id"
	SUBGATE_NORTHBOUND_SECRET="$gw_secret"
	SUBGATE_NORTHBOUND_MIN_BACKOFF=200ms
	SUBGATE_NORTHBOUND_MAX_BACKOFF=2s
	SUBGATE_SUBDEVICE_DEFAULT_PRODUCT_ID=bench-product
	SUBGATE_SOUTHBOUND_LISTEN="$SB_ADDR"
	SUBGATE_SOUTHBOUND_CODEC="$CODEC"
	SUBGATE_SOUTHBOUND_AUTH="$AUTH"
	SUBGATE_SOUTHBOUND_MAX_CONNS=30000
	SUBGATE_ADMIN_LISTEN="$ADMIN_ADDR"
	SUBGATE_ADMIN_PPROF=1
	SUBGATE_LOG_LEVEL=warn
)
[[ -n $GW_GOGC ]] && gw_env+=(GOGC="$GW_GOGC")
[[ -n $GW_GOMEMLIMIT ]] && gw_env+=(GOMEMLIMIT="$GW_GOMEMLIMIT")
[[ -n $GW_GODEBUG ]] && gw_env+=(GODEBUG="$GW_GODEBUG")

say "starting the gateway (codec $CODEC, auth $AUTH, GOGC=${GW_GOGC:-default} GOMEMLIMIT=${GW_GOMEMLIMIT:-none})"
(
	cd "$tmp"
	# The secret is in the environment, never in argv.
	exec env -u GOGC -u GOMEMLIMIT -u GODEBUG "${gw_env[@]}" "$root/bin/subgate"
) >"$tmp/gateway.out" 2>"$tmp/gateway.log" &
gw_pid=$!

for ((i = 0; ; i++)); do
	alive "$gw_pid" || die "the gateway exited"
	alive "$sim_pid" || { cat "$tmp/iotdasim.log" >&2; die "iotdasim exited"; }
	code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://$ADMIN_ADDR/readyz" || true)
	[[ $code == 200 ]] && break
	((i < READY_TIMEOUT * 10)) || die "the gateway was not ready after ${READY_TIMEOUT}s"
	sleep 0.1
done
say "gateway ready (pid $gw_pid)"

secret_args=()
if [[ $AUTH == token ]]; then
	head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$tmp/master"
	secret_args=(-secret-file "$tmp/master" -secret-derive)
	say "provisioning $N token secrets through the admin API"
	"$BIN/devicesim" -print-secrets -n "$N" -offset 0 -prefix bench "${secret_args[@]}" |
		awk -v a="$ADMIN_ADDR" '{
			if (NR > 1) print "next"
			printf "url = \"http://%s/api/v1/tokens/%s\"\nrequest = \"PUT\"\n", a, $1
			printf "header = \"Content-Type: application/json\"\n"
			printf "data-binary = \"{\\\"secret\\\":\\\"%s\\\"}\"\noutput = \"/dev/null\"\n", $2
			printf "write-out = \"%%{http_code}\\\\n\"\n"
		}' >"$tmp/tokens.curl"
	t0=$SECONDS
	ok=$(curl -s --max-time 3600 -K "$tmp/tokens.curl" | grep -c '^200$' || true)
	rm -f "$tmp/tokens.curl"
	((ok == N)) || die "only $ok of $N token secrets were stored"
	say "provisioned $N secrets in $((SECONDS - t0))s"
fi

snapshot before

# Hold the devices longer than the whole measurement; the trap ends them.
hold=$((SESSIONS_TIMEOUT + QUIET_TIMEOUT + SETTLE + 120))s
start_devices "$N" "$CODEC" bench "${secret_args[@]}" -hold "$hold" \
	-duration "$((SESSIONS_TIMEOUT + QUIET_TIMEOUT + SETTLE + 300))s" -report 10s
say "started ${#dev_pids[@]} devicesim processes for $N devices"

start=$SECONDS
last=-1
while :; do
	sessions=$(metric subgate_southbound_sessions)
	((sessions >= N)) && break
	if ((sessions != last)); then
		say "sessions=$sessions/$N after $((SECONDS - start))s"
		last=$sessions
	fi
	check_procs
	((SECONDS - start < SESSIONS_TIMEOUT)) || die "only $sessions of $N sessions after ${SESSIONS_TIMEOUT}s"
	sleep 1
done
say "sessions=$sessions/$N after $((SECONDS - start))s; waiting for registrations and status reports"

# The gateway registers new devices with the platform and reports their
# status in batches: measure once that work is done.
start=$SECONDS
while :; do
	reg=$(metric subgate_subdevice_registrations_pending)
	st=$(metric subgate_subdevice_status_pending)
	((reg <= 0 && st <= 0)) && break
	check_procs
	((SECONDS - start < QUIET_TIMEOUT)) ||
		die "registrations_pending=$reg status_pending=$st after ${QUIET_TIMEOUT}s"
	sleep 1
done
say "registrations and status reports done after $((SECONDS - start))s; settling ${SETTLE}s"
sleep "$SETTLE"

sessions=$(metric subgate_southbound_sessions)
snapshot after "$PROFILE"
[[ -n $PROFILE ]] && say "heap profile saved in $PROFILE"
dev_rss=0
for pid in "${dev_pids[@]}"; do
	dev_rss=$((dev_rss + $(status_kib "$pid" VmRSS)))
done
sim_rss=$(status_kib "$sim_pid" VmRSS)

stop_devices
cat "$tmp"/devicesim.*.out

echo "n=$N codec=$CODEC auth=$AUTH sessions=$sessions gogc=${GW_GOGC:-default} gomemlimit=${GW_GOMEMLIMIT:-none}"
echo "rss_before_kib=$before_rss"
echo "rss_after_kib=$after_rss"
echo "per_conn_bytes=$(((after_rss - before_rss) * 1024 / N))"
echo "rss_anon_per_conn_bytes=$(((after_anon - before_anon) * 1024 / N))"
echo "rss_file_per_conn_bytes=$(((after_file - before_file) * 1024 / N))"
echo "heap_inuse_before_bytes=$before_heap"
echo "heap_inuse_after_bytes=$after_heap"
echo "heap_per_conn_bytes=$(((after_heap - before_heap) / N))"
echo "stack_per_conn_bytes=$(((after_stack - before_stack) / N))"
echo "go_sys_per_conn_bytes=$(((after_sys - before_sys) / N))"
echo "devicesim_rss_kib=$dev_rss"
echo "iotdasim_rss_kib=$sim_rss"
