#!/usr/bin/env bash
# Command round trip over a WebSocket agent and a long-poll agent on the same server, back to
# back. Usage: docs/bench/transports.sh [COUNT] (default 2000). Needs a release build:
#   cargo build --release --bins -p outpost-server -p outpost-agent
set -euo pipefail
cd "$(dirname "$0")/../.."
n=${1:-2000}
port=${PORT:-18110}
work=$(mktemp -d)
pids=()
# The agents are started inside $(…) (a subshell), so their pids are kept in a file.
cleanup() {
  local agents=()
  [ -f "$work/agent.pids" ] && mapfile -t agents <"$work/agent.pids"
  kill "${pids[@]}" "${agents[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

target/release/outpost-server --listen "127.0.0.1:$port" --data-dir "$work/data" >"$work/server.log" 2>&1 &
pids+=($!)
until grep -q listening "$work/server.log" 2>/dev/null; do sleep 0.1; done
key=$(cat "$work/data/admin.key")
auth=(-H "Authorization: Bearer $key" -H 'content-type: application/json')
secret=$(curl -s "${auth[@]}" -XPOST "127.0.0.1:$port/api/agents/keys" -d '{"name":"bench"}' |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["secret"])')

start_agent() { # name, extra env...
  local name=$1; shift
  env "$@" OUTPOST_SERVER_URL="http://127.0.0.1:$port" OUTPOST_API_KEY="$secret" \
    OUTPOST_STATE_DIR="$work/$name" target/release/outpost-agent >"$work/$name.log" 2>&1 &
  echo $! >>"$work/agent.pids"
  until [ -s "$work/$name/agent_id" ]; do sleep 0.1; done
  local id; id=$(cat "$work/$name/agent_id")
  until curl -s "${auth[@]}" "127.0.0.1:$port/api/agents/$id" | grep -q '"status":"online"'; do sleep 0.1; done
  echo "$id"
}
# shellcheck disable=SC2034 # read below as ${!t}
ws=$(start_agent ws)
# shellcheck disable=SC2034
http=$(start_agent http OUTPOST_HTTP_FALLBACK=1)
curl -s "${auth[@]}" "127.0.0.1:$port/api/agents/connected" | python3 -c '
import json,sys
for a in json.load(sys.stdin): print("  ", a["agent_id"], a["transport"])'

for round in 1 2; do
  for t in ws http; do
    id=${!t}
    python3 docs/bench/roundtrip.py 127.0.0.1 "$port" "$key" "$id" 200 >/dev/null # warm-up
    printf '%-5s round %s: ' "$t" "$round"
    python3 docs/bench/roundtrip.py 127.0.0.1 "$port" "$key" "$id" "$n"
  done
done
curl -s -H "Authorization: Bearer $key" "127.0.0.1:$port/metrics" |
  grep -E '^outpost_(acks_folded_total|store_batch_size_(sum|count)) ' | sed 's/^/  /'
