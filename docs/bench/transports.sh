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
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
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
  pids+=($!)
  until [ -s "$work/$name/agent_id" ]; do sleep 0.1; done
  local id; id=$(cat "$work/$name/agent_id")
  until curl -s "${auth[@]}" "127.0.0.1:$port/api/agents/$id" | grep -q '"status":"online"'; do sleep 0.1; done
  echo "$id"
}
ws=$(start_agent ws)
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
