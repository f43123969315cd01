#!/bin/bash
# Profiles the server during the harness's `throughput` scenario (docs/BENCHMARKS.md, "The
# server in crates"): perf runs on the server from the bench's "throughput, N concurrent jobs"
# line to its "every job answered" line, then the samples are grouped by thread and by task
# (scripts/perf_by_task.py), in µs per stored result.
#
#   scripts/perf-throughput.sh BIN_DIR OUT_DIR [more outpost-bench arguments]
#
# BIN_DIR holds an outpost-server built with symbols:
#   CARGO_PROFILE_RELEASE_STRIP=false CARGO_PROFILE_RELEASE_DEBUG=line-tables-only \
#     cargo build --release -p outpost-server -p outpost-bench
set -u
BIN=$1
OUT=$2
shift 2
BENCH=${BENCH:-target/release/outpost-bench}
mkdir -p "$OUT"
uptime >"$OUT/uptime"
"$BENCH" --bin-dir "$BIN" --agents 10000 --scenarios throughput --json "$@" \
    >"$OUT/bench.json" 2>"$OUT/bench.err" &
bench=$!
perf=
while kill -0 "$bench" 2>/dev/null; do
    if [ -z "$perf" ] && grep -q "throughput, .* concurrent" "$OUT/bench.err"; then
        server=$(grep -o "node1 pid [0-9]*" "$OUT/bench.err" | awk '{print $3}')
        perf record -F 999 --call-graph dwarf,16384 -o "$OUT/perf.data" -p "$server" \
            >"$OUT/perf.log" 2>&1 &
        perf=$!
    fi
    if [ -n "$perf" ] && [ "$perf" != "done" ] && grep -q "every job answered" "$OUT/bench.err"; then
        kill -INT "$perf"
        wait "$perf"
        perf="done"
    fi
    sleep 0.05
done
wait "$bench"
uptime >>"$OUT/uptime"
cpu=$(python3 -c '
import json, sys
def walk(o):
    if isinstance(o, dict):
        if "server_cpu_us_per_result" in o:
            print(round(o["server_cpu_us_per_result"], 1))
        for v in o.values():
            walk(v)
    elif isinstance(o, list):
        for v in o:
            walk(v)
walk(json.load(open(sys.argv[1])))' "$OUT/bench.json" | head -1)
perf script -i "$OUT/perf.data" -F comm,tid,time,ip,sym --no-inline 2>/dev/null >"$OUT/script.txt"
echo "server CPU per result: $cpu µs; load: $(tr '\n' ' ' <"$OUT/uptime")"
python3 "$(dirname "$0")/perf_by_task.py" "$OUT/script.txt" "$cpu"
