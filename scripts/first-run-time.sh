#!/usr/bin/env bash
# Times a new user's first run, following the README: from `./quickstart.sh` (start) to the
# first line of output of a script on a second agent installed with the install line.
#
#   scripts/first-run-time.sh          # prints the time of each step and the total
#
# Steps, as the README's tour has them: ./quickstart.sh (fresh data dir, its own port) until it
# says "Outpost is running."; `outpost keys agent create web --tag web`; the install line
# (`curl -fsSL $OUTPOST_URL/deploy.sh | bash -s -- --key … --manifest examples/scripts`) in a
# throwaway install dir (OUTPOST_PREFIX, OUTPOST_BOOT=none: nothing lands in your HOME or
# crontab); `outpost run hello --on tag:web --follow` until its first line of output. Then it
# uninstalls the agent and stops the quickstart. The quickstart's `cargo build` is part of the
# time: run it once before to time a warm start (a first build takes minutes).
# OUTPOST_LISTEN (default 127.0.0.1:18081) picks the address.
set -euo pipefail
cd "$(dirname "$0")/.."

listen=${OUTPOST_LISTEN:-127.0.0.1:18081}
export OUTPOST_URL=http://$listen
work=$(mktemp -d)
quickstart_pid=''
cleanup() {
  if [[ -x $work/outpost-agent/bin/outpost-supervisor ]]; then
    curl -fsSL "$OUTPOST_URL/deploy.sh" |
      OUTPOST_PREFIX=$work/outpost-agent OUTPOST_BOOT=none bash -s -- --uninstall >/dev/null 2>&1 || true
  fi
  if [[ -n $quickstart_pid ]]; then
    kill "$quickstart_pid" 2>/dev/null || true
    wait "$quickstart_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f s", b - a }'; }

start=$(now)
OUTPOST_LISTEN=$listen OUTPOST_DATA_DIR=$work/data ./quickstart.sh >"$work/quickstart.log" 2>&1 &
quickstart_pid=$!
until grep -q "Outpost is running." "$work/quickstart.log" 2>/dev/null; do
  if ! kill -0 "$quickstart_pid" 2>/dev/null; then
    cat "$work/quickstart.log" >&2
    exit 1
  fi
  sleep 0.05
done
echo "quickstart.sh running:         $(since "$start")"

export OUTPOST_TOKEN
OUTPOST_TOKEN=$(cat "$work/data/admin.key")
outpost=$PWD/target/debug/outpost
step=$(now)
key=$("$outpost" keys agent create web --tag web 2>/dev/null)
echo "agent key created:             $(since "$step")"

step=$(now)
curl -fsSL "$OUTPOST_URL/deploy.sh" |
  OUTPOST_PREFIX=$work/outpost-agent OUTPOST_BOOT=none bash -s -- --key "$key" --manifest "$PWD/examples/scripts" >"$work/deploy.log"
echo "install line done:             $(since "$step")"

step=$(now)
# The agent connects within a second of its start; until then the target matches nothing.
until "$outpost" agents ls --tag web --status online 2>/dev/null | grep -q online; do sleep 0.05; done
echo "second agent online:           $(since "$step")"
step=$(now)
"$outpost" run hello --on tag:web --param NAME=newcomer --follow >"$work/run.log" 2>&1 &
run_pid=$!
until grep -q "Hello, newcomer" "$work/run.log" 2>/dev/null; do
  kill -0 "$run_pid" 2>/dev/null || { cat "$work/run.log" >&2; exit 1; }
  sleep 0.02
done
echo "first script output:           $(since "$step")"
wait "$run_pid"
echo "total, quickstart.sh to output: $(since "$start")"
