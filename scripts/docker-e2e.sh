#!/usr/bin/env bash
# Docker end to end (CI): builds Dockerfile.server and Dockerfile.agent on locally made base
# images, runs a server container and an agent container on a user-defined network, checks the
# agent registers and answers ping over the REST API, then does the same with
# `deploy.sh --docker` fetched from the server (install, again, --status, --stop, --start,
# --update, --uninstall). Then the install line as a new user runs it against the server
# image, with nothing published: a native agent on this host (as nobody, in a throwaway HOME,
# no boot entry) from the builds the image ships with, with --manifest, a script run on it,
# --uninstall, and the agent forgotten. Everything it creates is removed on exit; the images
# stay (tagged outpost-server:ci and outpost-agent:ci) so a second run reuses the layer cache.
#
# Binaries: by default the ones the host built (OUTPOST_BIN_DIR, else target/debug, as left by
# `cargo nextest run --workspace`), stripped and passed with PREBUILT=dist; CI then pays no
# second compile. OUTPOST_DOCKER_BUILD=1 compiles inside Docker instead (the Dockerfiles'
# default path, with a builder image holding this machine's Rust toolchain).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n--> %s\n' "$*"; }
fail() {
  printf 'docker-e2e: FAILED: %s\n' "$*" >&2
  exit 1
}

for tool in curl docker; do
  command -v "$tool" >/dev/null || fail "$tool is needed"
done
docker info >/dev/null 2>&1 || fail "the Docker daemon is not reachable"

run=e2e-$$
net=outpost-$run
srv=outpost-server-$run
agent=outpost-agent-$run
deployed=outpost-deployed-$run
base=${OUTPOST_BASE_IMAGE:-outpost-base:bookworm}
builder=${OUTPOST_BUILDER_IMAGE:-outpost-builder:bookworm}

native_home=''
work=$(mktemp -d)
cleanup() {
  local status=$?
  if [[ -n $native_home && -d $native_home/.outpost-agent && -f $work/deploy.sh ]]; then
    native --uninstall <"$work/deploy.sh" >/dev/null 2>&1 || true
  fi
  if ((status != 0)); then
    for c in "$srv" "$agent" "$deployed"; do
      docker logs --tail 40 "$c" >&2 2>&1 || true
    done
  fi
  docker rm -f "$srv" "$agent" "$deployed" >/dev/null 2>&1 || true
  docker volume rm "$srv-data" "$agent-state" "$deployed-state" >/dev/null 2>&1 || true
  docker network rm "$net" >/dev/null 2>&1 || true
  # The build stage's image (untagged, labelled in the Dockerfiles) is 100+ MB per run.
  docker image prune -f --filter label=org.outpost.stage=build >/dev/null 2>&1 || true
  rm -rf dist "$work"
  [[ -z $native_home ]] || rm -rf "$native_home"
  exit "$status"
}
trap cleanup EXIT

# wait_until WHAT SECONDS COMMAND...: polls COMMAND every 0.2 s until it succeeds.
wait_until() {
  local what=$1 limit=$2 start=$SECONDS
  shift 2
  until "$@" >/dev/null 2>&1; do
    ((SECONDS - start < limit)) || fail "timed out after ${limit}s waiting for $what"
    sleep 0.2
  done
}

step "Base images"
started=$SECONDS
if [[ ${OUTPOST_DOCKER_BUILD:-0} == 1 ]]; then
  scripts/docker-base.sh --builder
  build_args=(--build-arg "BUILDER_IMAGE=$builder" --build-arg "RUNTIME_IMAGE=$base")
else
  scripts/docker-base.sh
  bins=${OUTPOST_BIN_DIR:-target/debug}
  mkdir -p dist
  for b in outpost-server outpost-agent outpost-supervisor; do
    [[ -x $bins/$b ]] || fail "$bins/$b is not built (cargo build --workspace first)"
    cp "$bins/$b" dist/
  done
  strip dist/* 2>/dev/null || true
  build_args=(--build-arg "BUILDER_IMAGE=$base" --build-arg "RUNTIME_IMAGE=$base" --build-arg PREBUILT=dist)
fi
echo "base images: $((SECONDS - started)) s"

step "Building Dockerfile.server and Dockerfile.agent"
started=$SECONDS
old_ids=$(docker image inspect -f '{{.Id}}' outpost-server:ci outpost-agent:ci 2>/dev/null || true)
docker build -q --force-rm -f Dockerfile.server "${build_args[@]}" -t outpost-server:ci . >/dev/null
docker build -q --force-rm -f Dockerfile.agent "${build_args[@]}" -t outpost-agent:ci . >/dev/null
# The previous run's images, now untagged, go (an unchanged image keeps its ID and stays).
new_ids=$(docker image inspect -f '{{.Id}}' outpost-server:ci outpost-agent:ci)
for old_id in $old_ids; do
  grep -qxF "$old_id" <<<"$new_ids" || docker rmi "$old_id" >/dev/null 2>&1 || true
done
echo "images built in $((SECONDS - started)) s:"
docker image ls --format '  {{.Repository}}:{{.Tag}} {{.Size}}' | grep -E 'outpost-(server|agent|base|builder):'

step "Server and agent containers on network $net"
docker network create "$net" >/dev/null
admin=opk_$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
docker run -d --name "$srv" --network "$net" -v "$srv-data:/data" \
  -e OUTPOST_ADMIN_KEY="$admin" -e OUTPOST_PUBLIC_URL="http://$srv:8080" outpost-server:ci >/dev/null
[[ $(docker exec "$srv" id -u) != 0 ]] || fail "the server runs as root"
ip=$(docker container inspect -f "{{(index .NetworkSettings.Networks \"$net\").IPAddress}}" "$srv")
url=http://$ip:8080
wait_until "the server's /readyz" 60 curl -fsS "$url/readyz"

api() { # api METHOD PATH [JSON]
  curl -fsS -X "$1" -H "Authorization: Bearer $admin" -H 'Content-Type: application/json' \
    ${3:+--data "$3"} "$url$2"
}
new_key() { api POST /api/agents/keys "{\"name\":\"$1\"}" | sed -n 's/.*"secret":"\([^"]*\)".*/\1/p'; }
# The id of the agent with tag $1 once it is online.
online_agent() {
  local list
  list=$(api GET "/api/agents?tag=$1") || return 1
  grep -q '"status":"online"' <<<"$list" || return 1
  sed -n 's/.*"agent_id":"\([^"]*\)".*/\1/p' <<<"$list" | head -n 1
}
agent_online() { [[ -n $(online_agent "$1") ]]; }
agent_offline() {
  local list
  list=$(api GET "/api/agents?tag=$1") && grep -q '"status":"offline"' <<<"$list"
}
ping_agent() {
  local id answer
  id=$(online_agent "$1")
  answer=$(api POST "/api/agents/$id/command" '{"command":"ping"}')
  grep -q '"status":"succeeded"\|"pong"' <<<"$answer" || fail "ping to $1 answered: $answer"
  echo "  ping $1 ($id): ok"
}

key=$(new_key docker)
[[ -n $key ]] || fail "no agent key created"
env_file=$(mktemp)
printf 'OUTPOST_API_KEY=%s\nOUTPOST_TAGS=docker-e2e\n' "$key" >"$env_file"
docker run -d --name "$agent" --network "$net" --init --restart unless-stopped \
  -v "$agent-state:/var/lib/outpost" -e OUTPOST_SERVER_URL="http://$srv:8080" --env-file "$env_file" \
  outpost-agent:ci >/dev/null
rm -f "$env_file"
[[ $(docker exec "$agent" id -u) != 0 ]] || fail "the agent runs as root"
wait_until "the agent container online" 60 agent_online docker-e2e
ping_agent docker-e2e
# (Outputs are captured before grep -q: with pipefail, grep exiting early would fail the pipe.)
processes=$(docker top "$agent" -o pid,user,args)
grep -q outpost-supervisor <<<"$processes" || fail "no outpost-supervisor in the agent container: $processes"

step "deploy.sh --docker, fetched from the server"
key=$(new_key deployed)
export OUTPOST_CONTAINER=$deployed
deploy() { curl -fsSL "$url/deploy.sh" | bash -s -- "$@"; }
deploy --docker --key "$key" --tags deployed-e2e --image outpost-agent:ci --network "$net"
wait_until "the deployed agent online" 60 agent_online deployed-e2e
ping_agent deployed-e2e
id=$(docker container inspect -f '{{.Id}}' "$deployed")
deploy --docker --image outpost-agent:ci
[[ $(docker container inspect -f '{{.Id}}' "$deployed") == "$id" ]] || fail "a second run re-created the container"
status=$(deploy --status)
grep -q 'status:  running' <<<"$status" || fail "--status does not say running: $status"
deploy --stop
wait_until "the deployed agent offline" 60 agent_offline deployed-e2e
if deploy --status; then fail "--status exits 0 for a stopped container"; fi
deploy --start
wait_until "the deployed agent back online" 60 agent_online deployed-e2e
deploy --update --image outpost-agent:ci
[[ $(docker container inspect -f '{{.Id}}' "$deployed") != "$id" ]] || fail "--update did not re-create the container"
wait_until "the updated agent online" 60 agent_online deployed-e2e
ping_agent deployed-e2e
logs=$(deploy --logs 2>&1)
grep -q "connected and registered" <<<"$logs" || fail "--logs does not show the agent's log"
deploy --uninstall
! docker container inspect "$deployed" >/dev/null 2>&1 || fail "--uninstall left the container"
! docker volume inspect "$deployed-state" >/dev/null 2>&1 || fail "--uninstall left the volume"

step "The install line against the server image, natively, with nothing published"
# As a new user runs it: no release published, the builds come from the server image. The
# agent runs on this host as nobody (when root) in a throwaway HOME, without a boot entry.
native_home=$(mktemp -d)
cp -R examples/scripts "$native_home/fleet-scripts"
as_user=()
if [[ $(id -u) -eq 0 ]]; then
  chown -R 65534:65534 "$native_home"
  as_user=(setpriv --reuid=65534 --regid=65534 --clear-groups --)
fi
# native ARGS < deploy.sh: runs the installer as that user, in a clean environment.
native() {
  "${as_user[@]}" env -i HOME="$native_home" PATH="$PATH" OUTPOST_BOOT=none bash -s -- "$@"
}
curl -fsSL "$url/deploy.sh" -o "$work/deploy.sh"
served_key=$(sed -n "s/^served_pubkey='\(.*\)'\$/\1/p" "$work/deploy.sh")
[[ -n $served_key ]] || fail "the server image's deploy.sh pins no release key (no agent build in the image?)"
latest=$(api GET "/api/releases/latest?target=$(uname -m)-unknown-linux-gnu") ||
  fail "the server image serves no agent build (GET /api/releases/latest failed; see its log below)"
grep -q "\"public_key\":\"$served_key\"" <<<"$latest" || fail "deploy.sh pins '$served_key', the served builds are: $latest"
key=$(api POST /api/agents/keys '{"name":"native","tags":["native-e2e"]}' | sed -n 's/.*"secret":"\([^"]*\)".*/\1/p')
[[ -n $key ]] || fail "no agent key created"
# The server's public URL names it on the Docker network; this host reaches it by address.
out=$(native --key "$key" --server "$url" --manifest "$native_home/fleet-scripts" <"$work/deploy.sh" 2>&1) ||
  fail "the install line failed: $out"
grep -q "script manifest: $native_home/.outpost-agent/scripts/script_manifest.json" <<<"$out" ||
  fail "deploy.sh did not say where the manifest is: $out"
wait_until "the native agent online" 60 agent_online native-e2e
id=$(online_agent native-e2e)
job=$(api POST '/api/jobs?wait=30' '{"command":"run","data":{"script":"hello","params":{"NAME":"docker"}},"target":{"tags":["native-e2e"]}}')
job_id=$(sed -n 's/.*"job_id":"\([^"]*\)".*/\1/p' <<<"$job")
run_id=$(sed -n 's/.*"run_id":"\([^"]*\)".*/\1/p' <<<"$job")
grep -q '"status":"succeeded"' <<<"$job" || fail "the script did not succeed: $job"
output=$(api GET "/api/jobs/$job_id/runs/$run_id/output")
grep -q "Hello, docker!" <<<"$output" || fail "unexpected script output: $output"
echo "  script on the native agent ($id): ok"
native --uninstall <"$work/deploy.sh" >/dev/null
[[ ! -e $native_home/.outpost-agent ]] || fail "--uninstall left $native_home/.outpost-agent"
wait_until "the native agent offline" 60 agent_offline native-e2e
# (`outpost agents rm ID` does the same from the CLI, as the README's tour does.)
api DELETE "/api/agents/$id" >/dev/null
if api GET "/api/agents/$id" >/dev/null 2>&1; then fail "the agent was not forgotten"; fi

echo
echo "docker-e2e: OK"
