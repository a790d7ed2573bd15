#!/usr/bin/env bash
# tsbs-compare.sh — twinline vs VictoriaMetrics single-node on a TSBS iot
# line-protocol load, side by side on this machine, alternating runs.
#
# Nothing of TSBS or VictoriaMetrics is vendored: both are `go install`ed at
# pinned versions into a temporary GOBIN (through the Go module proxy).
# Each run starts the server on an empty data directory, loads it, waits
# SETTLE seconds (deferred work — merges, the processor's backlog — counts),
# stops it and reports:
#   points/s  data points (fields) acknowledged per second of load
#   core-s/M  the server's CPU seconds (utime+stime of /proc/PID/stat, over
#             the load and the settle time) per million data points
#   disk      bytes of the data directory after a clean stop
#
# The loader is tsbs_load_influx on a file from tsbs_generate_data
# (--use-case=iot --scale=$SCALE, 1 h at 10 s, dated inside the retention)
# when TSBS installs; when it does not (its module is not served by every
# proxy), `twinline bench --scenario ingest-lp --lp-shape tsbs-iot`, which
# posts lines of the same shape (readings/diagnostics, 8 tags, 10 s
# interval) as tsbs_load_influx does (POST /write, BATCH lines a request,
# WORKERS connections), for DURATION per run.
#
# Usage: scripts/tsbs-compare.sh            (from the repository root)
#   RUNS=3 SCALE=1000 WORKERS=8 BATCH=10000 DURATION=20s SETTLE=5
#   TWINLINE_FLAGS="--lp-missing-machine drop" extra flags of twinline serve
set -euo pipefail

# TSBS tags no releases: pin a pseudo-version (v0.0.0-DATE-COMMIT) here
# once your proxy serves the module; "latest" until then.
TSBS_VERSION=${TSBS_VERSION:-latest}
VM_VERSION=${VM_VERSION:-v1.136.23} # newer releases need go >= 1.27
RUNS=${RUNS:-3}
SCALE=${SCALE:-1000}
WORKERS=${WORKERS:-8}
BATCH=${BATCH:-10000}
DURATION=${DURATION:-20s}
SETTLE=${SETTLE:-5}
TWINLINE_FLAGS=${TWINLINE_FLAGS:-}
TWL_PORT=${TWL_PORT:-18080}
VM_PORT=${VM_PORT:-18428}

work=$(mktemp -d /tmp/tsbs-compare.XXXXXX)
export GOBIN=$work/bin
mkdir -p "$GOBIN"
pid=""
cleanup() {
	if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then kill "$pid"; wait "$pid" 2>/dev/null || true; fi
	rm -rf "$work"
}
trap cleanup EXIT

log() { echo "# $*" >&2; }

log "installing VictoriaMetrics $VM_VERSION into $GOBIN"
go install "github.com/VictoriaMetrics/VictoriaMetrics/app/victoria-metrics@$VM_VERSION"
log "building twinline"
go build -o "$GOBIN/twinline" ./cmd/twinline

loader=bench
if go install "github.com/timescale/tsbs/cmd/tsbs_generate_data@$TSBS_VERSION" \
	"github.com/timescale/tsbs/cmd/tsbs_load_influx@$TSBS_VERSION" 2>"$work/tsbs-install.log"; then
	loader=tsbs
	start=$(date -u -d '-2 days' +%Y-%m-%dT00:00:00Z)
	end=$(date -u -d "$start + 1 hour" +%Y-%m-%dT%H:%M:%SZ)
	log "generating TSBS iot data, scale $SCALE, $start to $end"
	"$GOBIN/tsbs_generate_data" --use-case=iot --seed=123 --scale="$SCALE" \
		--timestamp-start="$start" --timestamp-end="$end" --log-interval=10s --format=influx \
		>"$work/iot.lp"
else
	log "TSBS did not install ($(tail -1 "$work/tsbs-install.log")); loading with twinline bench --lp-shape tsbs-iot"
fi

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

wait_up() { # url
	for _ in $(seq 1 200); do
		curl -fs -o /dev/null "$1" && return 0
		sleep 0.1
	done
	echo "server at $1 did not come up" >&2
	return 1
}

# load URL PID → prints "points seconds"
load() {
	local url=$1 spid=$2
	if [[ $loader == tsbs ]]; then
		local out
		out=$("$GOBIN/tsbs_load_influx" --urls="$url" --db-name=benchmark --workers="$WORKERS" \
			--batch-size="$BATCH" --file="$work/iot.lp" 2>&1)
		# "loaded N metrics in Ts with W workers (mean rate R metrics/sec)"
		echo "$out" | awk '/loaded .* metrics in/ {gsub("sec","",$5); print $2, $5}'
	else
		"$GOBIN/twinline" bench --scenario ingest-lp --lp-shape tsbs-iot --target "$url" --target-pid "$spid" \
			--machines "$SCALE" --workers "$WORKERS" --batch "$BATCH" --duration "$DURATION" --json --quiet \
			| python3 -c 'import json,sys; r=json.load(sys.stdin); i=r["ingest"]; print(i["samples"], r["seconds"], file=sys.stdout); e=i.get("errors"); e and print("errors", e, file=sys.stderr)'
	fi
}

hz=$(getconf CLK_TCK)
results=()

run() { # name
	local name=$1 dir=$work/data-$1-$2 url
	rm -rf "$dir"
	mkdir -p "$dir"
	if [[ $name == victoria-metrics ]]; then
		url=http://127.0.0.1:$VM_PORT
		"$GOBIN/victoria-metrics" -storageDataPath="$dir" -httpListenAddr=127.0.0.1:$VM_PORT \
			-retentionPeriod=30d -loggerLevel=ERROR >"$work/$name.log" 2>&1 &
		pid=$!
		wait_up "$url/health"
	else
		url=http://127.0.0.1:$TWL_PORT
		# shellcheck disable=SC2086
		"$GOBIN/twinline" serve --listen 127.0.0.1:$TWL_PORT --data-dir "$dir" --auth off \
			--log-level error $TWINLINE_FLAGS >"$work/$name.log" 2>&1 &
		pid=$!
		wait_up "$url/readyz"
	fi
	local c0 c1 out points secs
	c0=$(cpu_ticks "$pid")
	out=$(load "$url" "$pid")
	sleep "$SETTLE"
	c1=$(cpu_ticks "$pid")
	kill "$pid"
	wait "$pid" 2>/dev/null || true
	pid=""
	read -r points secs <<<"$out"
	local disk
	disk=$(du -sb "$dir" | cut -f1)
	rm -rf "$dir"
	python3 - "$name" "$points" "$secs" "$c0" "$c1" "$hz" "$disk" <<'EOF'
import sys
name, points, secs, c0, c1, hz, disk = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7])
cpu = (c1 - c0) / hz
print(f"| {name} | {points/secs/1e6:.2f} M | {cpu/(points/1e6):.2f} | {disk/1e6:.1f} MB | {points/1e6:.2f} M in {secs:.1f} s |")
EOF
}

for i in $(seq 1 "$RUNS"); do
	for name in victoria-metrics twinline; do
		log "run $i: $name"
		results+=("$(run "$name" "$i")")
	done
done

echo
echo "loader: $loader; scale $SCALE, workers $WORKERS, batch $BATCH lines; VictoriaMetrics $VM_VERSION; twinline $(git describe --always --dirty 2>/dev/null || echo '?')"
echo
echo "| server | data points/s | server core-s per M points | disk | loaded |"
echo "|---|---|---|---|---|"
printf '%s\n' "${results[@]}"
