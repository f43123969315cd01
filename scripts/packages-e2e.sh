#!/usr/bin/env bash
# Debian packages end to end (CI): builds the packages twice from this tree (scripts/packages.sh),
# a "previous" version (<version>~prev) and the current one, and installs them into fresh
# Debian roots: Docker containers of the debootstrap base image (scripts/docker-base.sh) with
# systemd added, running systemd as PID 1, so the real units start with their sandbox.
#
#   1. Host A: the previous outpost-server, outpost-agent and outpost (CLI) with dpkg. Checks
#      the units with `systemd-analyze verify`, the users the services run as, the server's
#      keys and config; the agent is configured by hand and runs a script, started with the
#      installed CLI.
#   2. Upgrade on A to the current packages: the services restart into the new binaries, the
#      database (the earlier job), the keys and both env files are what they were, and a
#      second job runs.
#   3. Host B: the install line (`curl …/deploy.sh | bash -s -- --key … --manifest …`) against
#      A's server takes the dpkg path: the server serves the agent package it was built with;
#      the agent comes online and runs a script; --status, --update, --stop/--start, and
#      --uninstall (purge) follow.
#   4. A's server switched to its own CA (--tls-auto); on B the install line with
#      --ca-fingerprint pins it, installs the package through it, and the agent runs a job.
#   5. On A: `dpkg --remove` keeps the data and config; `dpkg --purge` deletes them.
#
# Binaries: OUTPOST_BIN_DIR, else target/debug as `cargo nextest run --workspace` leaves it
# (stripped into the packages); no compile here. The image with systemd
# (OUTPOST_SYSTEMD_IMAGE, default outpost-systemd:bookworm) is kept for the next run.
# Containers need CAP_SYS_ADMIN and no seccomp filter for systemd's sandboxing (mount
# namespaces); nothing else on the host changes, and everything made is removed on exit.
# shellcheck disable=SC2016 # dpkg-query formats and commands for the containers are quoted for them
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n--> %s\n' "$*"; }
fail() {
  printf 'packages-e2e: FAILED: %s\n' "$*" >&2
  exit 1
}
for tool in curl docker dpkg-deb sha256sum; do
  command -v "$tool" >/dev/null || fail "$tool is needed"
done
docker info >/dev/null 2>&1 || fail "the Docker daemon is not reachable"

run=pkg-$$
net=outpost-$run
host_a=outpost-a-$run
host_b=outpost-b-$run
base=${OUTPOST_BASE_IMAGE:-outpost-base:bookworm}
image=${OUTPOST_SYSTEMD_IMAGE:-outpost-systemd:bookworm}
bins=${OUTPOST_BIN_DIR:-target/debug}
work=$(mktemp -d)

cleanup() {
  local status=$?
  if ((status != 0)); then
    for c in "$host_a" "$host_b"; do
      echo "--- journal of $c" >&2
      docker exec "$c" journalctl -u outpost-server -u outpost-agent --no-pager -n 40 >&2 2>&1 || true
    done
  fi
  docker rm -f "$host_a" "$host_b" >/dev/null 2>&1 || true
  docker network rm "$net" >/dev/null 2>&1 || true
  rm -rf "$work"
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
on() { # on HOST COMMAND...: runs COMMAND in the container
  local host=$1
  shift
  docker exec -i "$host" "$@"
}

step "Packages: previous and current, from $bins"
started=$SECONDS
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
previous="$version~prev"
scripts/packages.sh --fast --bin-dir "$bins" --out "$work/prev" --version "$previous"
scripts/packages.sh --fast --bin-dir "$bins" --out "$work/cur" --version "$version"
arch=$(dpkg --print-architecture)
echo "packages built in $((SECONDS - started)) s"

step "A Debian root with systemd ($image, from $base)"
started=$SECONDS
scripts/docker-base.sh
if ! docker image inspect "$image" >/dev/null 2>&1; then
  docker build -q -t "$image" --build-arg "BASE=$base" - >/dev/null <<'EOF'
ARG BASE
FROM ${BASE}
RUN apt-get update -q && apt-get install -y -q --no-install-recommends systemd systemd-sysv dbus curl \
    && rm -rf /var/lib/apt/lists/* \
    && systemctl mask getty@tty1.service console-getty.service systemd-logind.service
STOPSIGNAL SIGRTMIN+3
CMD ["/lib/systemd/systemd"]
EOF
fi
echo "image ready in $((SECONDS - started)) s"

cgroup_opts=(-v /sys/fs/cgroup:/sys/fs/cgroup:ro)
# cgroup v2 hosts: systemd needs the hierarchy writable.
[[ -f /sys/fs/cgroup/cgroup.controllers ]] && cgroup_opts=(--cgroupns=host -v /sys/fs/cgroup:/sys/fs/cgroup:rw)
docker network create "$net" >/dev/null
boot() { # boot NAME: a container running systemd, until it is up
  docker run -d --name "$1" --hostname "$1" --network "$net" --cap-add SYS_ADMIN \
    --security-opt seccomp=unconfined --tmpfs /run --tmpfs /run/lock "${cgroup_opts[@]}" \
    "$image" >/dev/null
  wait_until "systemd in $1" 60 sh -c "docker exec $1 systemctl is-system-running | grep -qE 'running|degraded'"
}
boot "$host_a"
boot "$host_b"
for f in "$work"/prev/*.deb "$work"/cur/*.deb; do
  docker cp "$f" "$host_a:/root/$(basename "$(dirname "$f")")-$(basename "$f")"
done

step "Host A: the previous packages with dpkg"
on "$host_a" sh -c 'dpkg -i /root/prev-*.deb' >"$work/dpkg.log" 2>&1 || {
  cat "$work/dpkg.log" >&2
  fail "dpkg -i of the previous packages failed"
}
for p in outpost-server outpost-agent outpost; do
  [[ $(on "$host_a" dpkg-query -W -f='${Version}' "$p") == "$previous" ]] || fail "$p $previous is not installed"
done
on "$host_a" systemd-analyze verify /lib/systemd/system/outpost-server.service /lib/systemd/system/outpost-agent.service ||
  fail "systemd-analyze verify found problems in the units"
# The figures docs/OPERATIONS.md quotes ("The units' sandbox"), for the units as loaded.
on "$host_a" systemd-analyze security --no-pager outpost-server outpost-agent | grep 'Overall exposure' | sed 's/^/  /'
wait_until "outpost-server active" 60 on "$host_a" systemctl is-active outpost-server
[[ $(on "$host_a" systemctl is-enabled outpost-agent) == enabled ]] || fail "outpost-agent is not enabled"
[[ $(on "$host_a" systemctl is-active outpost-agent || true) == inactive ]] || fail "an unconfigured agent was started"
[[ $(on "$host_a" stat -c '%U %a' /etc/outpost/agent.env) == "root 600" ]] || fail "agent.env is not root's, 0600"
[[ $(on "$host_a" stat -c '%U:%G %a' /etc/outpost/server.env) == "root:outpost 640" ]] || fail "server.env is not root:outpost 0640"

# Listen on the network, so host B and this script reach it: a config change to keep.
on "$host_a" sh -c "sed -i 's/^OUTPOST_LISTEN=.*/OUTPOST_LISTEN=0.0.0.0:8080/; s|^#OUTPOST_PUBLIC_URL=.*|OUTPOST_PUBLIC_URL=http://$host_a:8080|' /etc/outpost/server.env && systemctl restart outpost-server"
ip=$(docker container inspect -f "{{(index .NetworkSettings.Networks \"$net\").IPAddress}}" "$host_a")
url=http://$ip:8080
wait_until "the server's /readyz" 60 curl -fsS "$url/readyz"
# The user a unit's main process runs as (the image has no ps).
runs_as() {
  local pid uid
  pid=$(on "$1" systemctl show -p MainPID --value "$2")
  uid=$(on "$1" awk '/^Uid:/ { print $2 }' "/proc/$pid/status")
  on "$1" getent passwd "$uid" | cut -d: -f1
}
[[ $(runs_as "$host_a" outpost-server) == outpost ]] || fail "the server does not run as outpost"
[[ $(on "$host_a" stat -c '%U %a' /var/lib/outpost/server) == "outpost 700" ]] || fail "the data directory is not outpost's, 0700"
admin=$(on "$host_a" cat /var/lib/outpost/server/admin.key)
[[ $admin == opk_* ]] || fail "no owner key in /var/lib/outpost/server/admin.key"
keys_sum() { on "$host_a" sh -c 'cd /var/lib/outpost/server && sha256sum admin.key master.key release.key /etc/outpost/server.env /etc/outpost/agent.env'; }

cli() { on "$host_a" env OUTPOST_URL=http://127.0.0.1:8080 OUTPOST_TOKEN="$admin" outpost "$@"; }
agent_key=$(cli keys agent create host-a --tag pkg-a 2>/dev/null | grep -oE 'opa_[A-Za-z0-9_-]+' | head -n 1)
[[ -n $agent_key ]] || fail "outpost keys agent create printed no key"
docker cp examples/scripts/. "$host_a:/etc/outpost/scripts/"
on "$host_a" sh -c "sed -i 's|^OUTPOST_SERVER_URL=.*|OUTPOST_SERVER_URL=http://127.0.0.1:8080|; s|^OUTPOST_API_KEY=.*|OUTPOST_API_KEY=$agent_key|' /etc/outpost/agent.env && systemctl start outpost-agent"
api() { curl -fsS -H "Authorization: Bearer $admin" "$url$1"; }
online() { api "/api/agents?tag=$1" | grep -q '"status":"online"'; }
wait_until "the packaged agent online" 60 online pkg-a
[[ $(runs_as "$host_a" outpost-agent) == root ]] || fail "the agent's supervisor does not run as root"
out=$(cli run hello --on tag:pkg-a --param NAME=previous 2>&1) || fail "the job on the packaged agent failed: $out"
grep -q "Hello, previous!" <<<"$out" || fail "unexpected output: $out"
first_job=$(api "/api/jobs?limit=1" | grep -oE '"job_id":"[^"]+"' | head -n 1 | cut -d'"' -f4)
[[ -n $first_job ]] || fail "the first job is not listed"
echo "  job $first_job on the previous packages: ok"
before=$(keys_sum)
server_pid=$(on "$host_a" systemctl show -p MainPID --value outpost-server)
agent_pid=$(on "$host_a" systemctl show -p MainPID --value outpost-agent)

step "Host A: upgrade to $version"
on "$host_a" sh -c 'dpkg -i /root/cur-*.deb' >"$work/dpkg.log" 2>&1 || {
  cat "$work/dpkg.log" >&2
  fail "dpkg -i of the current packages failed"
}
for p in outpost-server outpost-agent outpost; do
  [[ $(on "$host_a" dpkg-query -W -f='${Version}' "$p") == "$version" ]] || fail "$p was not upgraded to $version"
done
[[ $(on "$host_a" systemctl show -p MainPID --value outpost-server) != "$server_pid" ]] || fail "the server was not restarted"
[[ $(on "$host_a" systemctl show -p MainPID --value outpost-agent) != "$agent_pid" ]] || fail "the agent was not restarted"
wait_until "the upgraded server's /readyz" 60 curl -fsS "$url/readyz"
[[ $(keys_sum) == "$before" ]] || fail "the upgrade changed keys or config: before $before, after $(keys_sum)"
api "/api/jobs/$first_job" | grep -q '"status":"succeeded"' ||
  fail "the job from before the upgrade is gone"
wait_until "the upgraded agent online" 60 online pkg-a
out=$(cli run hello --on tag:pkg-a --param NAME=upgraded 2>&1) || fail "the job after the upgrade failed: $out"
grep -q "Hello, upgraded!" <<<"$out" || fail "unexpected output: $out"
echo "  upgraded; database, keys and config kept; a job after the upgrade: ok"

step "The server serves the agent package it was built with"
served=$(curl -fsS "$url/downloads/packages/outpost-agent_$arch.deb.sha256" | cut -d' ' -f1)
[[ $served == $(sha256sum "$work/cur/outpost-agent_${version}_$arch.deb" | cut -d' ' -f1) ]] ||
  fail "the served agent package is not the one built into the server package"
code=$(curl -s -o /dev/null -w '%{http_code}' "$url/downloads/packages/outpost-agent_$arch.deb/../x")
[[ $code == 404 ]] || fail "a bad package name answered $code"

step "Host B: deploy.sh takes the dpkg path"
b_key=$(cli keys agent create host-b --tag pkg-b 2>/dev/null | grep -oE 'opa_[A-Za-z0-9_-]+' | head -n 1)
docker cp examples/scripts "$host_b:/root/fleet-scripts"
deploy() { on "$host_b" sh -c 'curl -fsSL "$0/deploy.sh" | bash -s -- "$@"' "http://$host_a:8080" "$@"; }
out=$(deploy --key "$b_key" --tags pkg-b --manifest /root/fleet-scripts 2>&1) || fail "deploy.sh failed: $out"
grep -q "installed the package outpost-agent $version" <<<"$out" || fail "deploy.sh did not install the package: $out"
[[ $(on "$host_b" dpkg-query -W -f='${Version}' outpost-agent) == "$version" ]] || fail "outpost-agent is not installed on B"
on "$host_b" test ! -e /opt/outpost || fail "deploy.sh also made the binary layout"
wait_until "B's agent online" 60 online pkg-b
out=$(cli run hello --on tag:pkg-b --param NAME=deployed 2>&1) || fail "the job on B failed: $out"
grep -q "Hello, deployed!" <<<"$out" || fail "unexpected output: $out"
status=$(deploy --status) || fail "--status exits non-zero: $status"
grep -q "package: outpost-agent $version" <<<"$status" || fail "--status: $status"
out=$(deploy 2>&1) || fail "a second run failed: $out"
! grep -q "installed the package" <<<"$out" || fail "a second run installed the package again"
deploy --stop >/dev/null
if deploy --status >/dev/null; then fail "--status exits 0 for a stopped agent"; fi
deploy --start >/dev/null
deploy --update >/dev/null || fail "--update failed"
wait_until "B's agent online after --update" 60 online pkg-b
deploy --uninstall >/dev/null
if on "$host_b" dpkg-query -W -f='${Status}' outpost-agent 2>/dev/null | grep -q ' installed'; then
  fail "--uninstall left the package"
fi
on "$host_b" test ! -e /etc/outpost/agent.env || fail "--uninstall left agent.env"
echo "  deploy.sh: install, again, --status, --stop, --start, --update, --uninstall: ok"

step "Host B: deploy.sh --ca-fingerprint against a server with its own CA (--tls-auto)"
on "$host_a" sh -c "sed -i 's|^OUTPOST_PUBLIC_URL=.*|OUTPOST_PUBLIC_URL=https://$host_a:8080|' /etc/outpost/server.env && echo OUTPOST_TLS_AUTO=1 >>/etc/outpost/server.env && systemctl restart outpost-server"
url=https://$ip:8080
wait_until "the server's /readyz over TLS" 60 curl -fsSk "$url/readyz"
on "$host_a" sh -c 'curl -fsSk https://127.0.0.1:8080/agent/v1/ca >/root/ca.pem'
fingerprint=$(on "$host_a" sh -c "sed '/-----/d' /root/ca.pem | base64 -d | sha256sum | cut -d' ' -f1")
[[ $fingerprint =~ ^[0-9a-f]{64}$ ]] || fail "no CA at /agent/v1/ca"
api() { curl -fsSk -H "Authorization: Bearer $admin" "$url$1"; }
cli() { on "$host_a" env OUTPOST_URL=https://127.0.0.1:8080 OUTPOST_CA_CERT=/root/ca.pem OUTPOST_TOKEN="$admin" outpost "$@"; }
c_key=$(cli keys agent create host-b-tls --tag pkg-tls 2>/dev/null | grep -oE 'opa_[A-Za-z0-9_-]+' | head -n 1)
[[ -n $c_key ]] || fail "outpost keys agent create printed no key over TLS"
# The documented line pins the server's key (--pinnedpubkey); -k here stands in for it.
out=$(on "$host_b" sh -c 'curl -fsSLk "$0/deploy.sh" | bash -s -- "$@"' "https://$host_a:8080" \
  --key "$c_key" --tags pkg-tls --manifest /root/fleet-scripts --ca-fingerprint "$fingerprint" 2>&1) || fail "deploy.sh --ca-fingerprint failed: $out"
grep -q "installed the package outpost-agent $version" <<<"$out" || fail "deploy.sh --ca-fingerprint did not take the dpkg path: $out"
grep -q "OUTPOST_CA_CERT=/etc/outpost/ca.pem" <<<"$(on "$host_b" cat /etc/outpost/agent.env)" || fail "agent.env does not name the pinned CA"
wait_until "B's agent online over TLS" 60 online pkg-tls
out=$(cli run hello --on tag:pkg-tls --param NAME=pinned 2>&1) || fail "the job over TLS failed: $out"
grep -q "Hello, pinned!" <<<"$out" || fail "unexpected output: $out"
on "$host_b" sh -c 'curl -fsSLk "$0/deploy.sh" | bash -s -- --uninstall' "https://$host_a:8080" >/dev/null
on "$host_b" test ! -e /etc/outpost/ca.pem || fail "purging the agent left ca.pem"
echo "  deploy.sh --ca-fingerprint: the package over the pinned CA, a job, purge: ok"

step "Host A: remove keeps data and config, purge deletes them"
on "$host_a" dpkg --remove outpost-server >/dev/null
on "$host_a" test -f /var/lib/outpost/server/outpost.db || fail "dpkg --remove deleted the database"
on "$host_a" test -f /etc/outpost/server.env || fail "dpkg --remove deleted server.env"
if on "$host_a" systemctl is-active --quiet outpost-server; then fail "the server still runs after removal"; fi
on "$host_a" dpkg --purge outpost-server >/dev/null
on "$host_a" test ! -e /var/lib/outpost/server || fail "dpkg --purge left the data directory"
on "$host_a" test ! -e /etc/outpost/server.env || fail "dpkg --purge left server.env"
on "$host_a" test -f /etc/outpost/agent.env || fail "purging the server deleted the agent's config"

echo
echo "packages-e2e: OK"
