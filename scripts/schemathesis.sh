#!/usr/bin/env bash
# OpenAPI conformance: runs schemathesis with all its checks against a real server and a real
# agent, so that the document at /openapi.json is what the server does (statuses, enums,
# content types, links between operations).
#
#   scripts/schemathesis.sh              # after: cargo build -p outpost-server -p outpost-agent
#
# It builds nothing: the binaries come from OUTPOST_BIN_DIR (default target/debug). schemathesis
# comes from SCHEMATHESIS (default: on PATH, else .venv/bin/schemathesis; install it with
# `python3 -m venv .venv && .venv/bin/pip install schemathesis`).
#
# Everything runs in a network namespace of its own with only a loopback interface (unshare;
# root, or user namespaces), because the fuzzer makes up job webhook URLs and the server would
# try to deliver to them: inside, nothing but loopback can be reached.
#
# It starts outpost-server on a free loopback port with a fresh data dir and a known owner key
# (OUTPOST_ADMIN_KEY), creates an agent key through the API, starts one outpost-agent with it (a
# manifest of one harmless script, `hello`), then runs every phase of schemathesis (examples,
# coverage, fuzzing, stateful) with `--checks all`. Exit status: schemathesis's (non-zero on any
# failure). Processes and temporary files are removed on exit.
#
# Environment: SCHEMATHESIS_MAX_EXAMPLES (default 30, per operation), SCHEMATHESIS_SEED (default:
# random; the run prints the one it used), SCHEMATHESIS_ARGS (more arguments, e.g. to focus on
# one operation: --include-path /api/jobs), OUTPOST_CONFORMANCE_KEEP=1 keeps the temp dir (logs).
set -euo pipefail
# Paths given relative to where the script was started from.
for var in SCHEMATHESIS OUTPOST_BIN_DIR; do
  if [[ -n ${!var:-} && ${!var} != /* && ${!var} == */* ]]; then
    export "$var=$PWD/${!var}"
  fi
done
cd "$(dirname "$0")/.."
root=$PWD

# Into a network namespace first (once): as root a plain one, else a user namespace.
if [[ -z ${OUTPOST_CONFORMANCE_NETNS:-} ]]; then
  for flags in "--net" "--net --map-root-user"; do
    # shellcheck disable=SC2086 # the flags are words
    if unshare $flags true 2>/dev/null; then
      # shellcheck disable=SC2086
      exec unshare $flags env OUTPOST_CONFORMANCE_NETNS=1 "$0" "$@"
    fi
  done
  echo "schemathesis.sh: cannot make a network namespace (unshare --net); run it as root" >&2
  exit 1
fi
ip link set lo up

bin=${OUTPOST_BIN_DIR:-$root/target/debug}
for b in outpost-server outpost-agent; do
  [[ -x $bin/$b ]] || { echo "schemathesis.sh: no $bin/$b; cargo build -p outpost-server -p outpost-agent" >&2; exit 1; }
done
st=${SCHEMATHESIS:-$(command -v schemathesis || echo "$root/.venv/bin/schemathesis")}
[[ -x $st ]] || { echo "schemathesis.sh: no schemathesis; python3 -m venv .venv && .venv/bin/pip install schemathesis" >&2; exit 1; }

work=$(mktemp -d)
pids=()
# shellcheck disable=SC2317 # run by the trap below
cleanup() {
  local status=$?
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  # The agent the loop above started last, should the loop have gone first.
  if [[ -s $work/agent.pid ]]; then kill "$(cat "$work/agent.pid")" 2>/dev/null || true; fi
  if [[ ${OUTPOST_CONFORMANCE_KEEP:-} == 1 ]]; then
    echo "logs kept in $work" >&2
  else
    rm -rf "$work"
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

show_logs() {
  for f in "$work"/*.log; do
    echo "--- $f (last 30 lines)" >&2
    tail -n 30 "$f" >&2
  done
}

# An owner key of our own: opk_ and 40 characters.
key="opk_$(head -c 30 /dev/urandom | base64 | tr '+/' '-_')"
umask 077
# --rate-limit 0: the fuzzer sends thousands of requests a minute with one key; its 429s are
# documented, but would leave the rest of each operation untested.
OUTPOST_ADMIN_KEY=$key "$bin/outpost-server" --listen 127.0.0.1:0 --data-dir "$work/data" \
  --rate-limit 0 >"$work/server.out" 2>"$work/server.log" &
pids+=($!)
url=''
for _ in $(seq 1 200); do
  url=$(sed -n 's/^outpost-server listening on \(http:[^ ]*\)$/\1/p' "$work/server.out")
  [[ -n $url ]] && break
  kill -0 "${pids[0]}" 2>/dev/null || { show_logs; echo "the server did not start" >&2; exit 1; }
  sleep 0.05
done
[[ -n $url ]] || { show_logs; echo "the server did not start in 10 s" >&2; exit 1; }
for _ in $(seq 1 100); do
  curl -fsS "$url/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fsS "$url/readyz" >/dev/null || { show_logs; echo "the server is not ready" >&2; exit 1; }
echo "server: $url"

auth=(-H "Authorization: Bearer $key" -H "Content-Type: application/json")

mkdir -p "$work/scripts"
cat >"$work/scripts/hello.sh" <<'EOF'
#!/bin/sh
echo "hello ${NAME:-there}"
echo "to stderr" >&2
EOF
chmod +x "$work/scripts/hello.sh"
cat >"$work/scripts/script_manifest.json" <<'EOF'
{"scripts": [{"name": "hello", "path": "hello.sh", "description": "Says hello", "params": ["NAME"], "timeout_s": 10}]}
EOF

# One live agent throughout. The fuzzer may delete, disable or regenerate its key, or delete
# the agent: then a new key is made and a new agent started (and the old one forgotten, so
# that no run waits for it), within a few seconds.
keep_an_agent() {
  local n=0 agent_pid='' key_id='' agent_id='' misses created secret
  # Stopped, it stops its agent and waits for it (nobody else would reap it).
  trap 'if [[ -n $agent_pid ]]; then kill "$agent_pid" 2>/dev/null; wait "$agent_pid"; fi; exit 0' TERM
  while :; do
    n=$((n + 1))
    if [[ -n $agent_pid ]]; then
      kill "$agent_pid" 2>/dev/null || true
      wait "$agent_pid" 2>/dev/null || true
    fi
    if [[ -n $agent_id ]]; then
      curl -sS -o /dev/null "${auth[@]}" -X DELETE "$url/api/agents/$agent_id" || true
    fi
    if ! created=$(curl -fsS "${auth[@]}" -X POST "$url/api/agents/keys" \
      -d "{\"name\":\"conformance $n\",\"tags\":[\"conformance\"]}"); then
      sleep 1
      continue
    fi
    key_id=$(grep -o '"id":"[^"]*"' <<<"$created" | head -n 1 | cut -d'"' -f4)
    secret=$(grep -o '"secret":"[^"]*"' <<<"$created" | cut -d'"' -f4)
    OUTPOST_SERVER_URL=$url OUTPOST_API_KEY=$secret OUTPOST_STATE_DIR=$work/agent-$n \
      OUTPOST_TAGS=local OUTPOST_MANIFEST=$work/scripts/script_manifest.json OUTPOST_SKIP_UPDATE=1 \
      "$bin/outpost-agent" >>"$work/agent.log" 2>&1 &
    agent_pid=$!
    echo "$agent_pid" >"$work/agent.pid"
    agent_id=''
    misses=0
    while kill -0 "$agent_pid" 2>/dev/null && ((misses < 3)); do
      sleep 1
      [[ -z $agent_id && -s $work/agent-$n/agent_id ]] && agent_id=$(cat "$work/agent-$n/agent_id")
      if curl -fsS "${auth[@]}" "$url/api/agents/connected" 2>/dev/null | grep -q "\"key_id\":\"$key_id\""; then
        misses=0
      else
        misses=$((misses + 1))
      fi
    done
  done
}
keep_an_agent &
pids+=($!)
online=''
for _ in $(seq 1 100); do
  if curl -fsS "${auth[@]}" "$url/api/agents/connected" | grep -q '"agent_id"'; then
    online=1
    break
  fi
  sleep 0.1
done
[[ -n $online ]] || { show_logs; echo "the agent did not connect" >&2; exit 1; }
echo "agent: online"

args=(
  --config-file "$root/scripts/schemathesis.toml"
  run "$url/openapi.json"
  --checks all
  --phases "examples,coverage,fuzzing,stateful"
  --max-examples "${SCHEMATHESIS_MAX_EXAMPLES:-30}"
  --header "Authorization: Bearer $key"
  --request-timeout 30
  --no-color
)
[[ -n ${SCHEMATHESIS_SEED:-} ]] && args+=(--seed "$SCHEMATHESIS_SEED")
# shellcheck disable=SC2206 # extra arguments are words
[[ -n ${SCHEMATHESIS_ARGS:-} ]] && args+=($SCHEMATHESIS_ARGS)
echo "schemathesis ${args[*]/$key/<owner key>}"
status=0
(cd "$work" && OUTPOST_CONFORMANCE_URL=$url OUTPOST_CONFORMANCE_KEY=$key \
  SCHEMATHESIS_HOOKS=$root/scripts/schemathesis_hooks.py "$st" "${args[@]}") || status=$?
if ((status != 0)); then
  show_logs
fi
exit "$status"
