#!/bin/sh
# A library script: kept on the server, signed by the operator, run where an agent's manifest
# allows it. Parameters arrive as OUTPOST_PARAM_*; nothing reaches a shell but this file.
set -eu
top=${OUTPOST_PARAM_TOP:-5}
case $top in *[!0-9]* | '') echo "TOP must be a number, not '$top'" >&2; exit 2 ;; esac
echo "host: $(uname -n)"
echo "up:   $(cut -d' ' -f1 /proc/uptime) s, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "busiest processes:"
ps -eo pid,pcpu,comm --sort=-pcpu | head -n "$((top + 1))"
