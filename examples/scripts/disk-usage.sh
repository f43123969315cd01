#!/bin/sh
# Disk use of every mounted filesystem; warns on stderr above THRESHOLD percent (default 90).
threshold="${OUTPOST_PARAM_THRESHOLD:-90}"
df -P | awk -v t="$threshold" 'NR == 1 { print; next }
  { print; use = $5; sub("%", "", use); if (use + 0 >= t + 0) { printf "warning: %s is %s full\n", $6, $5 > "/dev/stderr"; bad = 1 } }
  END { exit bad }'
