#!/usr/bin/env python3
"""Per span name, p50 and p99 of how long each span lasted (time.busy + time.idle), from a
server log written with OUTPOST_LOG_SPANS=close (docs/BENCHMARKS.md, "The round trip's
steps"). Spans seen fewer than --min times are left out.

Usage: scripts/span_times.py SERVER_LOG [--min N]
"""

import argparse
import collections
import re
import sys

CLOSE = re.compile(r" (?:DEBUG|INFO|TRACE) (.*?): \S+: close time\.busy=(\S+) time\.idle=(\S+)")
UNIT = {"ns": 1e-3, "µs": 1.0, "us": 1.0, "ms": 1e3, "s": 1e6}


def micros(text):
    m = re.fullmatch(r"([\d.]+)(ns|µs|us|ms|s)", text)
    if not m:
        raise ValueError(f"not a duration: {text!r}")
    return float(m.group(1)) * UNIT[m.group(2)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("log")
    parser.add_argument("--min", type=int, default=100)
    args = parser.parse_args()
    spans = collections.defaultdict(list)
    with open(args.log, encoding="utf-8", errors="replace") as log:
        for line in log:
            m = CLOSE.search(line)
            if not m:
                continue
            # The innermost span's name, without its fields.
            name = m.group(1).split(":")[-1].split("{")[0]
            spans[name].append(micros(m.group(2)) + micros(m.group(3)))
    if not spans:
        sys.exit(f"{args.log}: no span close lines (was OUTPOST_LOG_SPANS=close set?)")
    for name, times in sorted(spans.items(), key=lambda kv: -len(kv[1])):
        if len(times) < args.min:
            continue
        times.sort()
        p50 = times[len(times) // 2] / 1000
        p99 = times[min(len(times) - 1, int(len(times) * 0.99))] / 1000
        print(f"{name:24} n={len(times):6}  p50 {p50:.2f} ms  p99 {p99:.2f} ms")


if __name__ == "__main__":
    main()
