#!/usr/bin/env bash
# Outpost quickstart: builds the binaries, starts a server on an embedded SQLite database in
# ./outpost-data with one local agent connected to it (allowed to run examples/scripts), makes
# the dashboard's first owner (a generated password, saved in the data dir), sends the agent a
# few commands, runs a script and shows its output, and prints what to try next.
# The server also serves the agent and supervisor it was built with, so deploy.sh installs
# more agents at once (no release to publish). Ctrl-C stops both.
#
#   ./quickstart.sh           run until Ctrl-C
#   ./quickstart.sh --smoke   show the tour and exit (used by CI to check this script)
#
# Environment: OUTPOST_LISTEN (default 127.0.0.1:8080; 0.0.0.0:8080 lets other machines in),
# OUTPOST_DATA_DIR (default ./outpost-data, created 0700: it holds the keys).
set -euo pipefail

cd "$(dirname "$0")"
smoke=0
[[ "${1:-}" == "--smoke" ]] && smoke=1

listen="${OUTPOST_LISTEN:-127.0.0.1:8080}"
data="${OUTPOST_DATA_DIR:-outpost-data}"
[[ $data == /* ]] || data="$PWD/${data#./}"
url="http://${listen}"
bin="$PWD/target/debug"

say() { if [[ -t 1 ]]; then printf '\033[1m==> %s\033[0m\n' "$*"; else printf '==> %s\n' "$*"; fi; }
json_field() { # json_field NAME < json: the first string value of NAME (no jq needed)
  grep -o "\"$1\":\"[^\"]*\"" | head -n 1 | cut -d'"' -f4
}

say "Building outpost-server, outpost-agent, outpost-supervisor and the outpost CLI (first build takes a few minutes)"
cargo build --quiet --bins -p outpost-server -p outpost-agent -p outpost-supervisor -p outpost-cli

# Everything from here on (the data dir, its database, keys and logs) is for this user only.
umask 077
mkdir -p "$data"
chmod 0700 "$data"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "Starting the server on ${url} (data in ${data}, log in ${data}/server.log)"
"$bin/outpost-server" --listen "$listen" --data-dir "$data" >"$data/server.out" 2>"$data/server.log" &
pids+=($!)
for _ in $(seq 1 100); do
  grep -q "listening on" "$data/server.out" 2>/dev/null && break
  if ! kill -0 "${pids[0]}" 2>/dev/null; then
    echo "The server did not start:" >&2
    tail -n 20 "$data/server.log" >&2
    exit 1
  fi
  sleep 0.1
done
grep -q "listening on" "$data/server.out" || { echo "The server did not come up in 10 s" >&2; exit 1; }
token="$(cat "$data/admin.key")"
# The server prints a new key only on a terminal (its stdout is a file here); this is yours.
if grep -q "Created the owner API key" "$data/server.out"; then
  say "Created the owner API key, saved in $data/admin.key (mode 0600):"
  echo "  owner API key (OUTPOST_TOKEN): $token"
fi
auth=(-H "Authorization: Bearer ${token}" -H "Content-Type: application/json")

# The dashboard signs people in with an email and a password: the first owner is made here,
# with a generated password kept beside the other keys (mode 0600), made once.
dashboard_email="owner@outpost.local"
passfile="$data/dashboard-password"
if [[ ! -s "$passfile" ]]; then
  say "Creating the dashboard's owner ${dashboard_email} (password saved in ${passfile})"
  password="$(head -c 18 /dev/urandom | base64 | tr -d '/+=')"
  printf '%s\n' "$password" | "$bin/outpost-server" user create --email "$dashboard_email" \
    --role owner --password-stdin --data-dir "$data" >/dev/null
  (umask 077; printf '%s\n' "$password" >"$passfile")
fi
curl -fsS -o /dev/null "$url/ui/login" || { echo "The dashboard's sign-in page did not answer" >&2; exit 1; }

keyfile="$data/quickstart-agent.key"
if [[ ! -s "$keyfile" ]]; then
  say "Creating an agent key"
  created="$(curl -fsS "${auth[@]}" -X POST "$url/api/agents/keys" -d '{"name":"quickstart","tags":["quickstart"]}')"
  (umask 077; printf '%s\n' "$(json_field secret <<<"$created")" >"$keyfile")
fi

say "Starting a local agent (state in ${data}/agent, log in ${data}/agent.log)"
OUTPOST_SERVER_URL="$url" OUTPOST_API_KEY="$(cat "$keyfile")" OUTPOST_STATE_DIR="$data/agent" \
  OUTPOST_TAGS="local" OUTPOST_MANIFEST="$PWD/examples/scripts/script_manifest.json" \
  "$bin/outpost-agent" 2>"$data/agent.log" &
pids+=($!)
agent_id=""
for _ in $(seq 1 100); do
  [[ -s "$data/agent/agent_id" ]] && agent_id="$(cat "$data/agent/agent_id")"
  if [[ -n "$agent_id" ]] && curl -fsS "${auth[@]}" "$url/api/agents/$agent_id" | grep -q '"status":"online"'; then
    break
  fi
  sleep 0.1
done
curl -fsS "${auth[@]}" "$url/api/agents/$agent_id" | grep -q '"status":"online"' || {
  echo "The agent did not connect:" >&2; tail -n 20 "$data/agent.log" >&2; exit 1; }

run() {
  printf '\n$ curl -X POST %s/api/agents/%s/command -d %s\n' "$url" "$agent_id" "$1"
  curl -fsS "${auth[@]}" -X POST "$url/api/agents/$agent_id/command" -d "$1"
  echo
}
say "The agent ${agent_id} is online. Sending it commands:"
run '{"command":"ping"}'
run '{"command":"echo","data":{"message":"hello from outpost"}}'

say "Running the script 'hello' from examples/scripts on every agent tagged 'local':"
body='{"command":"run","data":{"script":"hello","params":{"NAME":"newcomer"}},"target":{"tags":["local"]}}'
printf '\n$ curl -X POST %s/api/jobs?wait=30 -d %s\n' "$url" "$body"
job="$(curl -fsS "${auth[@]}" -X POST "$url/api/jobs?wait=30" -d "$body")"
echo "$job"
job_id="$(json_field job_id <<<"$job")"
run_id="$(json_field run_id <<<"$job")"
printf '\n$ curl %s/api/jobs/%s/runs/%s/output\n' "$url" "$job_id" "$run_id"
curl -fsS "${auth[@]}" "$url/api/jobs/$job_id/runs/$run_id/output"

say "The same with the outpost CLI:"
cli() { printf '\n$ outpost %s\n' "$*"; OUTPOST_URL="$url" OUTPOST_TOKEN="$token" "$bin/outpost" "$@"; }
cli agents ls
cli run hello --on "$agent_id" --param NAME=newcomer

cat <<EOT

$(say "Outpost is running.")
  The dashboard:             ${url}/ui
                             sign in as ${dashboard_email}, password: $(cat "$passfile")
                             (kept in ${passfile}; more users: outpost-server user create)
  API and interactive docs:  ${url}/docs
  The CLI:                   export OUTPOST_URL=${url} OUTPOST_TOKEN=\$(cat ${data}/admin.key)
                             ${bin}/outpost agents ls
                             ${bin}/outpost ping ${agent_id}
                             ${bin}/outpost run disk-usage --on all --follow
                             ${bin}/outpost jobs ls     (docs/CLI.md has the rest)
  Scripts an agent may run:  $PWD/examples/scripts/script_manifest.json (edits are picked up live)
  Install another agent:     ${bin}/outpost keys agent create web --tag web     (prints its key)
                             curl -fsSL ${url}/deploy.sh | bash -s -- --key opa_… --manifest $PWD/examples/scripts
                             (on another machine: start with OUTPOST_LISTEN=0.0.0.0:8080 and use
                             this machine's address; deploy.sh --uninstall removes it again)
EOT

if [[ "$smoke" == 1 ]]; then
  exit 0
fi
echo "Press Ctrl-C to stop."
wait
