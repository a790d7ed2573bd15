#!/usr/bin/env bash
# A line-protocol backfill into a fresh embedded server with no stream
# client: 500 trucks × 1 h at 10 s × 5 fields (900 k points, 30 requests of
# 6 000 lines, windows closing all along). Prints the server's CPU seconds
# (utime + stime) per million points. docs/benchmarks.md, issue 13.
#
#   tools/backfill/backfill.sh [BINARY]     (default bin/twinline)
set -euo pipefail
BIN=${1:-bin/twinline}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 - "$work" <<'PY'
import sys, time
out = sys.argv[1]
start = int(time.time()) - 2 * 3600
lines = []
for t in range(360):
    ts = (start + t * 10) * 10**9
    for m in range(500):
        lines.append(f"truck,machineId=truck-{m:04d},fleet=east velocity={50+m%7}.5,fuel={t%90}.25,"
                     f"load={m%13}.0,heading={t%360}.0,grade=0.{m%9} {ts}")
for n, i in enumerate(range(0, len(lines), 6000)):
    open(f"{out}/chunk-{n:03d}.lp", "w").write("\n".join(lines[i:i + 6000]) + "\n")
PY
port=$((20000 + RANDOM % 10000))
"$BIN" serve --listen 127.0.0.1:$port --data-dir "$work/data" --out-of-order-window 24h --log-level error 2>"$work/server.log" &
pid=$!
for _ in $(seq 100); do curl -sf -o /dev/null "localhost:$port/readyz" && break; sleep 0.1; done
read -r u0 s0 < <(awk '{print $14, $15}' /proc/$pid/stat)
for f in "$work"/chunk-*.lp; do
  curl -sf -o /dev/null -H 'Content-Type: text/plain' --data-binary @"$f" "localhost:$port/write?db=x&precision=ns"
done
read -r u1 s1 < <(awk '{print $14, $15}' /proc/$pid/stat)
kill $pid; wait $pid 2>/dev/null || true
awk -v t=$(( (u1 + s1) - (u0 + s0) )) -v hz=$(getconf CLK_TCK) 'BEGIN { printf "%.3f CPU-s per M points\n", t / hz / 0.9 }'
