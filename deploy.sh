#!/usr/bin/env bash
# Outpost agent installer: one line installs, updates, starts, stops or removes an agent.
#
#   curl -fsSL https://SERVER/deploy.sh | bash -s -- --key opa_…
#
# Served by outpost-server at /deploy.sh with the server's URL (and its release public key)
# filled in below; the repository copy needs --server. Run with --help for the options.
# Layouts, boot integration and the Docker mode are described in docs/OPERATIONS.md.
set -euo pipefail
umask 077

# Filled in by the server that serves this script (empty in the repository copy).
served_url=''
served_pubkey=''

usage() {
  cat <<'EOF'
Usage: deploy.sh [ACTION] [OPTIONS]

Installs and runs an Outpost agent (outpost-supervisor running outpost-agent), in Docker when
Docker is available, else natively: from the server's Debian package where dpkg and systemd
are here and the server serves one, else the binaries. Running it again changes nothing and
makes sure the agent runs.

Actions (default: install):
  --status       show what is installed and whether it runs (exit 0 running, 3 stopped,
                 4 not installed)
  --logs         show the last lines of the supervisor and agent logs (OUTPOST_LOG_LINES, 50)
  --update       native: download the latest release, verify it, swap it in, restart;
                 docker: pull the image if it comes from a registry, re-create the container
  --stop         stop the agent (it stays installed and starts again at boot)
  --start        start the agent
  --uninstall    remove binaries, configuration, state, boot entry, container and volume
  -h, --help     this text

Options:
  --key KEY      agent key (opa_…); or OUTPOST_API_KEY in the environment, which keeps it out
                 of the process list. Needed for the first install only.
  --server URL   server URL (default: the server this script came from)
  --tags a,b     tags for this agent (OUTPOST_TAGS)
  --manifest M   the scripts this agent may run (implies --native), replacing those installed:
                 a folder holding script_manifest.json (copied whole), or a manifest file or
                 http(s) URL (copied with the script files it names, which must be beside
                 it). Installed in <install dir>/scripts; see docs/OPERATIONS.md, "Scripts"
  --native       install the binaries on this machine (not the package)
  --package      install the server's outpost-agent Debian package (root, dpkg, systemd)
  --docker       run the agent image in Docker
  --image NAME   agent image for --docker (default outpost-agent:latest, OUTPOST_IMAGE)
  --network NET  Docker network for the agent container (default: Docker's default bridge)
  --ca-fingerprint SHA256
                 the SHA-256 of the server's agent CA (the install line of a server started
                 with --tls-auto carries it): the CA is fetched, checked against it and trusted
                 alone, for the downloads here and by the agent (OUTPOST_CA_FINGERPRINT)

Native layout: /opt/outpost as root, ~/.outpost-agent otherwise (OUTPOST_PREFIX overrides);
bin/, agent.env (0600), scripts/ (the manifest and its scripts), state. Boot: a systemd unit
when run as root where systemd runs, else an @reboot crontab line
(OUTPOST_BOOT=systemd|cron|none forces one). Docker: container outpost-agent
(OUTPOST_CONTAINER overrides) with its state in the volume <container>-state.
EOF
}

die() {
  printf 'deploy.sh: %s\n' "$*" >&2
  exit 1
}
say() { printf '==> %s\n' "$*"; }

action=install
mode=auto
key=${OUTPOST_API_KEY:-}
server=${OUTPOST_SERVER_URL:-}
tags=${OUTPOST_TAGS-}
tags_given=${OUTPOST_TAGS+1}
image=${OUTPOST_IMAGE:-outpost-agent:latest}
network=''
manifest_src=''
ca_fingerprint=${OUTPOST_CA_FINGERPRINT:-}
container=${OUTPOST_CONTAINER:-outpost-agent}
volume=$container-state

set_action() {
  [[ $action == install ]] || die "choose one of --status, --logs, --update, --stop, --start, --uninstall"
  action=$1
}
need_value() { [[ $# -ge 2 && -n $2 ]] || die "$1 needs a value (try --help)"; }

while (($#)); do
  case $1 in
    --key) need_value "$@"; key=$2; shift ;;
    --key=*) key=${1#*=} ;;
    --server) need_value "$@"; server=$2; shift ;;
    --server=*) server=${1#*=} ;;
    --tags) [[ $# -ge 2 ]] || die "--tags needs a value"; tags=$2; tags_given=1; shift ;;
    --tags=*) tags=${1#*=}; tags_given=1 ;;
    --image) need_value "$@"; image=$2; shift ;;
    --image=*) image=${1#*=} ;;
    --network) need_value "$@"; network=$2; shift ;;
    --network=*) network=${1#*=} ;;
    --manifest) need_value "$@"; manifest_src=$2; shift ;;
    --manifest=*) manifest_src=${1#*=} ;;
    --ca-fingerprint) need_value "$@"; ca_fingerprint=$2; shift ;;
    --ca-fingerprint=*) ca_fingerprint=${1#*=} ;;
    --native) mode=native ;;
    --package) mode=package ;;
    --docker) mode=docker ;;
    --status) set_action status ;;
    --logs) set_action logs ;;
    --update) set_action update ;;
    --stop) set_action stop ;;
    --start) set_action start ;;
    --uninstall) set_action uninstall ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown option ${1%%=*} (try --help)" ;;
  esac
  shift
done

# --- validation: every value ends up in a KEY=value file, so no newlines or control characters.

[[ -z $key || $key =~ ^opa_[A-Za-z0-9_-]{16,200}$ ]] || die "--key must be an agent key (opa_ followed by letters, digits, - or _)"
url_re='^https?://[][A-Za-z0-9.:@%_~+/-]+$' # what /deploy.sh accepts as its URL, too
[[ -z $server || $server =~ $url_re ]] || die "--server must be an http:// or https:// URL without spaces or quotes"
server=${server%/}
[[ -z $tags || ($tags =~ ^[[:print:]]+$ && ${#tags} -le 4096) ]] || die "--tags must be printable characters (comma-separated tags)"
[[ $image =~ ^[A-Za-z0-9./:@_-]+$ ]] || die "--image must be an image reference (letters, digits, . / : @ _ -)"
[[ -z $network || $network =~ ^[A-Za-z0-9._-]+$ ]] || die "--network must be a Docker network name"
if [[ -n $manifest_src ]]; then
  [[ $action == install || $action == update ]] || die "--manifest goes with an install or --update"
  if [[ $manifest_src == http://* || $manifest_src == https://* ]]; then
    [[ $manifest_src =~ $url_re ]] || die "--manifest URL must be an http:// or https:// URL without spaces, quotes or a query"
  else
    [[ -e $manifest_src ]] || die "--manifest $manifest_src: no such file or folder"
    [[ $manifest_src == /* ]] || manifest_src=$PWD/$manifest_src
  fi
fi
[[ $container =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]] || die "OUTPOST_CONTAINER must be a Docker container name"
if [[ -n $ca_fingerprint ]]; then
  ca_fingerprint=$(tr -d ':' <<<"$ca_fingerprint" | tr 'A-F' 'a-f')
  [[ $ca_fingerprint =~ ^[0-9a-f]{64}$ ]] || die "--ca-fingerprint must be a SHA-256: 64 hex digits (colons allowed)"
fi
pubkey=${OUTPOST_RELEASE_PUBKEY:-$served_pubkey}
[[ -z $pubkey || $pubkey =~ ^[A-Za-z0-9+/]{43}=$ ]] || die "the release public key must be 32 bytes in base64"

# --- native layout (the contract with outpost-supervisor; see docs/OPERATIONS.md)

if [[ $(id -u) -eq 0 ]]; then
  home=${OUTPOST_PREFIX:-/opt/outpost}
  state=$home/state
else
  [[ -n ${HOME:-} ]] || die "HOME is not set"
  home=${OUTPOST_PREFIX:-$HOME/.outpost-agent}
  state=$home
fi
[[ $home == /* && $home != *"'"* && $home != *[[:space:]]* && $home != *%* ]] || die "install directory $home must be an absolute path without quotes, spaces or %"
# --uninstall deletes the whole directory: it must be one of its own.
[[ $(basename "$home") == *outpost* ]] || die "install directory $home must be a directory of its own, with \"outpost\" in its name"
bin=$home/bin
conf=$home/agent.env
ca_file=$home/ca.pem
scripts=$home/scripts
unit_name=outpost-agent.service
unit=/etc/systemd/system/$unit_name
supervisor=$bin/outpost-supervisor
start_cmd="'$supervisor' --env-file '$conf'"
cron_line="@reboot $start_cmd >/dev/null 2>&1"

# --- helpers

# The value of KEY in agent.env (empty when absent).
conf_get() {
  if [[ -f $conf ]]; then sed -n "s/^$1=//p" "$conf" | tail -n 1; fi
}

target_triple() {
  case $(uname -m) in
    x86_64 | amd64) echo x86_64-unknown-linux-gnu ;;
    aarch64 | arm64) echo aarch64-unknown-linux-gnu ;;
    *) die "no Outpost build for $(uname -m) (x86_64 and aarch64 Linux only)" ;;
  esac
}

# fetch URL FILE: downloads URL into FILE. On failure FILE is removed and the script stops
# with what the server said (the message of its JSON error, which says what to do).
fetch() {
  local code why tls=()
  # The server's own CA (--ca-fingerprint) is trusted for the server's URLs alone.
  if [[ -n $ca_fingerprint && $1 == "$server"/* && -f $ca_file ]]; then tls=(--cacert "$ca_file"); fi
  if ! code=$(curl -sSL --retry 3 --connect-timeout 10 "${tls[@]}" -o "$2" -w '%{http_code}' "$1"); then
    rm -f "$2"
    die "cannot download $1 (curl's reason is above)"
  fi
  if [[ $code != 2?? ]]; then
    why=$(error_message "$2")
    rm -f "$2"
    die "cannot download $1: HTTP $code${why:+: $why}"
  fi
}

# With --ca-fingerprint: fetches the server's agent CA (GET /agent/v1/ca; its TLS certificate
# cannot be checked before the CA is known, which is why the CA's own bytes are checked against
# the fingerprint) and keeps it as ca.pem, trusted from then on for the server's URLs.
pin_ca() {
  [[ -n $ca_fingerprint ]] || return 0
  local tmp=$home/.ca.pem.download got
  if [[ -f $ca_file ]]; then
    got=$(sed '/-----/d' "$ca_file" | base64 -d 2>/dev/null | sha256sum | cut -d' ' -f1)
    [[ $got != "$ca_fingerprint" ]] || return 0
  fi
  curl -fsSL -k --retry 3 --connect-timeout 10 -o "$tmp" "$server/agent/v1/ca" || { rm -f "$tmp"; die "cannot download the server's CA from $server/agent/v1/ca"; }
  got=$(sed '/-----/d' "$tmp" | base64 -d 2>/dev/null | sha256sum | cut -d' ' -f1)
  if [[ $got != "$ca_fingerprint" ]]; then
    rm -f "$tmp"
    die "the CA $server serves has SHA-256 $got, not --ca-fingerprint $ca_fingerprint: not trusted"
  fi
  chmod 0644 "$tmp"
  mv -f "$tmp" "$ca_file"
  say "trusting the server's CA $ca_file (sha256 $got)"
}

# The "message" of an error body in Outpost's JSON envelope, else the body's first line;
# printable characters only (it goes to a terminal), at most 600.
error_message() {
  local body message
  body=$(head -c 4096 "$1" 2>/dev/null | tr -d '\000' | tr -c '[:print:]\n' ' ') || true
  message=$(sed -n 's/.*"message":"\([^"]*\)".*/\1/p' <<<"$body" | head -n 1)
  [[ -n $message ]] || message=$(head -n 1 <<<"$body")
  printf '%s' "${message:0:600}"
}

# Downloads NAME from the latest release into bin/ beside the installed one, checks its
# SHA-256 against the server's, and renames it into place (atomic; a running process keeps
# its old file).
install_binary() {
  local name=$1 base want got tmp
  [[ -n $server ]] || die "no server URL: pass --server URL"
  base="$server/downloads/latest/$(target_triple)/$name"
  tmp="$bin/.$name.download"
  fetch "$base.sha256" "$tmp.sha256"
  want=$(cut -d' ' -f1 <"$tmp.sha256")
  rm -f "$tmp.sha256"
  [[ $want =~ ^[0-9a-f]{64}$ ]] || die "bad checksum file at $base.sha256"
  fetch "$base" "$tmp"
  got=$(sha256sum "$tmp" | cut -d' ' -f1)
  if [[ $got != "$want" ]]; then
    rm -f "$tmp"
    die "$name from $base has SHA-256 $got, the server says $want: not installed"
  fi
  chmod 0755 "$tmp"
  mv -f "$tmp" "$bin/$name"
  say "installed $bin/$name (sha256 $got)"
}

# The script files a manifest names: its "path" values, one per line. Each must be a plain
# relative path (letters, digits, . _ - and /, no ".." part), since it becomes a local file
# name and a URL; a manifest this reader cannot take whole is refused, never half-installed.
manifest_paths() {
  local file=$1 text keys found path
  text=$(tr '\n' ' ' <"$file")
  keys=$(grep -oE '"path"[[:space:]]*:' <<<"$text" | wc -l) || true
  found=$(grep -oE '"path"[[:space:]]*:[[:space:]]*"[^"\\]*"' <<<"$text" | sed 's/.*"\([^"]*\)"$/\1/') || true
  if [[ $(grep -c . <<<"$found") -ne $keys ]]; then
    die "$2: a script path there is not a plain string; install the folder instead (--manifest DIR)"
  fi
  while IFS= read -r path; do
    [[ -n $path ]] || continue
    if [[ ! $path =~ ^[A-Za-z0-9._][A-Za-z0-9._/-]*$ || /$path/ == */../* || /$path/ == */./* ]]; then
      die "$2 names the script path \"$path\": deploy.sh copies plain relative paths only (letters, digits, . _ - /, no ..); install the folder instead (--manifest DIR)"
    fi
    printf '%s\n' "$path"
  done <<<"$found"
}

# Installs --manifest into $scripts (replacing what was there) from a folder (copied whole),
# or from a manifest file or URL with the script files it names, fetched from beside it.
install_manifest() {
  local src=$manifest_src new=$home/.scripts.new old=$home/.scripts.old path paths count=0
  rm -rf "$new" "$old"
  mkdir -p "$new"
  if [[ $src == http://* || $src == https://* ]]; then
    fetch "$src" "$new/script_manifest.json"
    grep -q '"scripts"' "$new/script_manifest.json" || die "$src is not a script manifest (no \"scripts\" in it)"
    paths=$(manifest_paths "$new/script_manifest.json" "$src")
    while IFS= read -r path; do
      [[ -n $path ]] || continue
      mkdir -p "$new/$(dirname "$path")"
      fetch "${src%/*}/$path" "$new/$path"
      chmod 0700 "$new/$path"
      count=$((count + 1))
    done <<<"$paths"
  elif [[ -d $src ]]; then
    [[ -f $src/script_manifest.json ]] || die "--manifest $src: a folder needs a script_manifest.json in it"
    cp -R "$src/." "$new/" || die "cannot copy $src"
    count=$(find "$new" -type f ! -name script_manifest.json | wc -l)
  else
    [[ -f $src && -r $src ]] || die "--manifest $src: not a readable file or folder"
    cp "$src" "$new/script_manifest.json" || die "cannot copy $src"
    grep -q '"scripts"' "$new/script_manifest.json" || die "$src is not a script manifest (no \"scripts\" in it)"
    paths=$(manifest_paths "$new/script_manifest.json" "$src")
    while IFS= read -r path; do
      [[ -n $path ]] || continue
      [[ -f $(dirname "$src")/$path ]] || die "$src names $path, which is not in $(dirname "$src"): put the script there (paths are relative to the manifest), or install the folder (--manifest DIR)"
      mkdir -p "$new/$(dirname "$path")"
      cp "$(dirname "$src")/$path" "$new/$path" || die "cannot copy $(dirname "$src")/$path"
      chmod 0700 "$new/$path"
      count=$((count + 1))
    done <<<"$paths"
  fi
  if [[ -e $scripts ]]; then mv "$scripts" "$old"; fi
  mv "$new" "$scripts"
  rm -rf "$old"
  say "installed the script manifest $scripts/script_manifest.json and $count script file(s) from $src"
}

# PIDs of processes running one of the given executables (matched on the path in
# /proc/PID/exe, so another installation or an unrelated process is never touched; a binary
# replaced by an update shows as "PATH (deleted)"). The supervisor and the agent make
# themselves non-dumpable, which hides their exe link from other processes of their user
# (root still sees it): for those, the first word of their command line, the path they were
# started by, is matched instead.
pids_of() {
  local path file arg0 match=()
  for path in "$@"; do
    match+=(-o -lname "$path" -o -lname "$path (deleted)")
  done
  {
    find /proc -mindepth 2 -maxdepth 2 -name exe \( "${match[@]:1}" \) -print 2>/dev/null || true
    for file in /proc/[0-9]*/cmdline; do
      IFS= read -r -d '' arg0 2>/dev/null <"$file" || continue
      for path in "$@"; do
        if [[ $arg0 == "$path" ]]; then
          echo "${file%/cmdline}/exe"
        fi
      done
    done
  } | sed -n 's|^/proc/\([0-9][0-9]*\)/exe$|\1|p' | sort -u
}
install_pids() { pids_of "$supervisor" "$bin/outpost-agent"; }
supervisor_pids() { pids_of "$supervisor"; }

boot_method() {
  case ${OUTPOST_BOOT:-auto} in
    systemd | cron | none) echo "$OUTPOST_BOOT" ;;
    auto)
      if [[ $(id -u) -eq 0 && -d /run/systemd/system ]] && command -v systemctl >/dev/null; then
        echo systemd
      elif command -v crontab >/dev/null; then
        echo cron
      else
        echo none
      fi
      ;;
    *) die "OUTPOST_BOOT must be systemd, cron or none" ;;
  esac
}

# (Read whole before grep -q: with pipefail, grep exiting at the first match could fail the pipe.)
crontab_has_line() {
  local tab
  tab=$(crontab -l 2>/dev/null) || return 1
  grep -qxF "$cron_line" <<<"$tab"
}

write_unit() {
  local tmp
  tmp=$(mktemp)
  cat >"$tmp" <<EOF
# Written by Outpost's deploy.sh; removed by deploy.sh --uninstall.
[Unit]
Description=Outpost agent (outpost-supervisor running outpost-agent)
Wants=network-online.target
After=network-online.target

[Service]
ExecStart=$supervisor --env-file $conf
# The agent gives each script run a cgroup of its own below this unit's, and kills it whole
# when the run ends: systemd hands the subtree over.
Delegate=yes
# The supervisor forwards SIGTERM to the agent and kills it after 10 s.
KillMode=mixed
TimeoutStopSec=30
Restart=on-failure
RestartSec=5

[Install]
WantedBy=multi-user.target
EOF
  if cmp -s "$tmp" "$unit"; then
    rm -f "$tmp"
  else
    chmod 0644 "$tmp"
    mv -f "$tmp" "$unit"
    systemctl daemon-reload
    say "wrote $unit"
  fi
  systemctl is-enabled --quiet "$unit_name" 2>/dev/null || systemctl enable --quiet "$unit_name"
}

ensure_boot() {
  case $(boot_method) in
    systemd) write_unit ;;
    cron)
      if ! crontab_has_line; then
        { crontab -l 2>/dev/null || true; echo "$cron_line"; } | crontab -
        say "added an @reboot line to the crontab of $(id -un)"
      fi
      ;;
    none) say "no systemd unit or crontab: the agent will not start at boot" ;;
  esac
}

remove_boot() {
  local rest
  if [[ -f $unit ]] && grep -qF "$supervisor" "$unit"; then
    systemctl disable --now --quiet "$unit_name" 2>/dev/null || true
    rm -f "$unit"
    systemctl daemon-reload 2>/dev/null || true
    say "removed $unit"
  fi
  if command -v crontab >/dev/null && crontab_has_line; then
    rest=$(crontab -l 2>/dev/null | grep -vxF "$cron_line" || true)
    if [[ -z ${rest//[[:space:]]/} ]]; then
      crontab -r
    else
      printf '%s\n' "$rest" | crontab -
    fi
    say "removed the @reboot line from the crontab of $(id -un)"
  fi
}

uses_systemd() { [[ -f $unit ]] && grep -qF "$supervisor" "$unit" && command -v systemctl >/dev/null; }

native_running() { [[ -n $(supervisor_pids) ]]; }

native_start() {
  if uses_systemd; then
    systemctl start "$unit_name"
  elif ! native_running; then
    mkdir -p "$state"
    # A clean environment, as cron gives at boot: the configuration is agent.env alone.
    (cd "$state" && exec setsid env -i HOME="${HOME:-/}" PATH="$PATH" LANG=C.UTF-8 \
      "$supervisor" --env-file "$conf" </dev/null >/dev/null 2>&1 &)
  fi
  local i
  for ((i = 0; i < 50; i++)); do
    native_running && break
    sleep 0.1
  done
  native_running || die "the supervisor did not start; see $0 --logs"
  say "agent running (supervisor pid $(supervisor_pids | xargs))"
}

native_stop() {
  local pids i
  if uses_systemd; then
    systemctl stop "$unit_name" || true
  fi
  pids=$(supervisor_pids)
  if [[ -n $pids ]]; then
    # shellcheck disable=SC2086 # one PID per word
    kill -TERM $pids 2>/dev/null || true
  fi
  # The supervisor stops the agent (SIGTERM, SIGKILL after 10 s): wait for both.
  for ((i = 0; i < 300; i++)); do
    [[ -z $(install_pids) ]] && break
    sleep 0.1
  done
  pids=$(install_pids)
  if [[ -n $pids ]]; then
    # shellcheck disable=SC2086
    kill -KILL $pids 2>/dev/null || true
  fi
  say "agent stopped"
}

write_conf() {
  local tmp
  mkdir -p "$state"
  tmp=$(mktemp "$home/.agent.env.XXXXXX")
  {
    echo "# Outpost agent configuration, written by deploy.sh (KEY=value, no quoting)."
    echo "OUTPOST_SERVER_URL=$server"
    echo "OUTPOST_API_KEY=$key"
    echo "OUTPOST_STATE_DIR=$state"
    echo "OUTPOST_MANIFEST=$manifest"
    [[ -z $tags ]] || echo "OUTPOST_TAGS=$tags"
    [[ -z $pubkey ]] || echo "OUTPOST_RELEASE_PUBKEY=$pubkey"
    if [[ -n $ca_fingerprint ]]; then
      echo "OUTPOST_CA_FINGERPRINT=$ca_fingerprint"
      echo "OUTPOST_CA_CERT=$ca_file"
    fi
  } >"$tmp"
  chmod 0600 "$tmp"
  if cmp -s "$tmp" "$conf"; then
    rm -f "$tmp"
    return 1
  fi
  mv -f "$tmp" "$conf"
  say "wrote $conf (mode 0600)"
}

# Fills in what was not given from an existing agent.env, so a second run needs no options.
merge_conf() {
  [[ -n $key ]] || key=$(conf_get OUTPOST_API_KEY)
  [[ -n $server ]] || server=$(conf_get OUTPOST_SERVER_URL)
  [[ -n $server ]] || server=$served_url
  [[ -n $tags_given ]] || tags=$(conf_get OUTPOST_TAGS)
  [[ -n $ca_fingerprint ]] || ca_fingerprint=$(conf_get OUTPOST_CA_FINGERPRINT)
  # The manifest: where agent.env says, else (an install older than scripts/) the agent's old
  # default if one is there, else scripts/; --manifest installs it in scripts/.
  manifest=$(conf_get OUTPOST_MANIFEST)
  if [[ -z $manifest && -f $state/script_manifest.json ]]; then manifest=$state/script_manifest.json; fi
  [[ -n $manifest && -z $manifest_src ]] || manifest=$scripts/script_manifest.json
  # A pinned release key stays pinned: only a first install takes the served one.
  local pinned
  pinned=$(conf_get OUTPOST_RELEASE_PUBKEY)
  [[ -z $pinned || -n ${OUTPOST_RELEASE_PUBKEY:-} ]] || pubkey=$pinned
}

native_installed() { [[ -x $supervisor || -f $conf ]]; }

native_install() {
  merge_conf
  [[ -n $key ]] || die "an agent key is needed: --key opa_… (or OUTPOST_API_KEY)"
  [[ -n $server ]] || die "no server URL: pass --server URL"
  command -v curl >/dev/null || die "curl is needed"
  command -v sha256sum >/dev/null || die "sha256sum is needed"
  # A first install that fails leaves nothing behind (see undo_install).
  [[ -e $home ]] || first_install=1
  trap undo_install EXIT
  mkdir -p "$bin"
  chmod 0700 "$home"
  chmod 0755 "$bin"
  local name changed=0 running=0
  native_running && running=1
  pin_ca
  for name in outpost-agent outpost-supervisor; do
    [[ -x $bin/$name ]] || install_binary "$name"
  done
  [[ -z $manifest_src ]] || install_manifest
  write_conf && changed=1
  ensure_boot
  if ((changed && running)); then
    say "configuration changed: restarting"
    native_stop
    running=0
  fi
  native_start
  trap - EXIT
  # A supervisor that kept running gets the new manifest by SIGHUP (one started just now
  # read it at start, and may not handle SIGHUP yet).
  if [[ -n $manifest_src ]] && ((running)); then reload_manifest; fi
  manifest_note
}

# EXIT trap of an install: when it failed, removes what this run made (a first install:
# everything, the agent stopped and the boot entry removed; otherwise the partial downloads).
first_install=0
undo_install() {
  local status=$?
  ((status != 0)) || return 0
  rm -f "$bin"/.*.download "$bin"/.*.download.sha256 2>/dev/null || true
  rm -rf "$home/.scripts.new" "$home/.scripts.old"
  if ((first_install)) && [[ -d $home ]]; then
    if native_running; then native_stop >/dev/null 2>&1 || true; fi
    remove_boot >/dev/null 2>&1 || true
    rm -rf "$home"
    say "the install did not complete: removed $home" >&2
  fi
  exit "$status"
}

# After a new manifest on a running agent: SIGHUP makes it re-read the manifest now (the
# supervisor passes it on).
reload_manifest() {
  local pids
  pids=$(supervisor_pids)
  # shellcheck disable=SC2086 # one PID per word
  [[ -z $pids ]] || kill -HUP $pids 2>/dev/null || true
}

manifest_note() {
  if [[ -f $manifest ]]; then
    say "script manifest: $manifest (the agent runs only the scripts it lists; edits are picked up live)"
  else
    say "no script manifest yet: the agent runs no scripts until $manifest exists (deploy.sh --manifest DIR|FILE|URL installs one; see docs/OPERATIONS.md, Scripts)"
  fi
}

native_update() {
  native_installed || die "no native agent installed in $home"
  merge_conf
  local name
  pin_ca
  for name in outpost-agent outpost-supervisor; do
    install_binary "$name"
  done
  [[ -z $manifest_src ]] || install_manifest
  write_conf || true
  ensure_boot
  native_stop
  native_start
  manifest_note
}

native_status() {
  if ! native_installed; then
    echo "native: not installed ($home)"
    return 4
  fi
  echo "native: installed in $home"
  echo "  server:  $(conf_get OUTPOST_SERVER_URL)"
  echo "  agent:   $("$bin/outpost-agent" --version 2>/dev/null || echo unknown)"
  echo "  scripts: $(conf_get OUTPOST_MANIFEST)"
  echo "  boot:    $(if uses_systemd; then echo "systemd ($unit_name)"; elif command -v crontab >/dev/null && crontab_has_line; then echo "crontab @reboot"; else echo none; fi)"
  echo "  logs:    $state/logs"
  if native_running; then
    echo "  running: yes (supervisor pid $(supervisor_pids | xargs))"
    return 0
  fi
  echo "  running: no"
  return 3
}

native_logs() {
  native_installed || die "no native agent installed in $home"
  local file
  for file in "$state/logs/supervisor.log" "$state/logs/agent.log"; do
    echo "==> $file <=="
    if [[ -f $file ]]; then tail -n "${OUTPOST_LOG_LINES:-50}" "$file"; else echo "(none yet)"; fi
  done
}

native_uninstall() {
  native_stop
  remove_boot
  rm -rf "$home"
  say "removed $home"
}

# --- Docker mode

docker_usable() { command -v docker >/dev/null && docker info >/dev/null 2>&1; }
container_exists() { docker container inspect "$container" >/dev/null 2>&1; }

ensure_image() {
  docker image inspect "$image" >/dev/null 2>&1 && return 0
  say "pulling $image"
  docker pull "$image" >/dev/null 2>&1
}

docker_run() { # docker_run ENV_FILE
  docker volume create "$volume" >/dev/null
  docker run -d --name "$container" --init --restart unless-stopped \
    --env-file "$1" -v "$volume:/var/lib/outpost" ${network:+--network "$network"} \
    "$image" >/dev/null
  say "container $container running $image (volume $volume)"
}

# Writes the container's environment file (mode 0600, deleted after use): the key never
# appears on a command line.
docker_env_file() {
  local file
  file=$(mktemp)
  {
    echo "OUTPOST_SERVER_URL=$server"
    echo "OUTPOST_API_KEY=$key"
    [[ -z $tags ]] || echo "OUTPOST_TAGS=$tags"
    [[ -z $ca_fingerprint ]] || echo "OUTPOST_CA_FINGERPRINT=$ca_fingerprint"
  } >"$file"
  echo "$file"
}

docker_install() {
  if container_exists; then
    [[ -z $key && -z $tags_given ]] || say "$container exists: its settings are kept (--update re-creates it with new ones)"
    docker start "$container" >/dev/null
    say "container $container running"
    return
  fi
  [[ -n $key ]] || die "an agent key is needed: --key opa_… (or OUTPOST_API_KEY)"
  [[ -n $server ]] || server=$served_url
  [[ -n $server ]] || die "no server URL: pass --server URL"
  ensure_image || die "image $image is not here and cannot be pulled: build it (docker build -f Dockerfile.agent -t $image .), pass --image, or use --native"
  local env
  env=$(docker_env_file)
  docker_run "$env" || { rm -f "$env"; die "docker run failed"; }
  rm -f "$env"
}

# The container's setting KEY (from its environment).
container_env() {
  docker container inspect -f '{{range .Config.Env}}{{println .}}{{end}}' "$container" | sed -n "s/^$1=//p" | tail -n 1
}

docker_update() {
  container_exists || die "no container $container (install first)"
  [[ -n $key ]] || key=$(container_env OUTPOST_API_KEY)
  [[ -n $server ]] || server=$(container_env OUTPOST_SERVER_URL)
  [[ -n $tags_given ]] || tags=$(container_env OUTPOST_TAGS)
  [[ -n $ca_fingerprint ]] || ca_fingerprint=$(container_env OUTPOST_CA_FINGERPRINT)
  if [[ -z $network ]]; then
    network=$(docker container inspect -f '{{.HostConfig.NetworkMode}}' "$container")
    [[ $network != default && $network != bridge ]] || network=''
  fi
  docker pull "$image" >/dev/null 2>&1 || say "$image not pulled (no registry has it): using the local image"
  docker image inspect "$image" >/dev/null 2>&1 || die "image $image not found"
  local env
  env=$(docker_env_file)
  docker rm -f "$container" >/dev/null
  docker_run "$env" || { rm -f "$env"; die "docker run failed"; }
  rm -f "$env"
}

docker_status() {
  if ! container_exists; then
    echo "docker: no container $container"
    return 4
  fi
  local status
  status=$(docker container inspect -f '{{.State.Status}}' "$container")
  echo "docker: container $container ($(docker container inspect -f '{{.Config.Image}}' "$container")), volume $volume"
  echo "  server:  $(container_env OUTPOST_SERVER_URL)"
  echo "  status:  $status"
  [[ $status == running ]] || return 3
}

docker_uninstall() {
  if container_exists; then
    docker rm -f "$container" >/dev/null
    say "removed container $container"
  fi
  if docker volume inspect "$volume" >/dev/null 2>&1; then
    docker volume rm "$volume" >/dev/null
    say "removed volume $volume"
  fi
}

# --- Debian package mode: the server's outpost-agent package, run by its systemd unit.
# Paths are the package's (docs/OPERATIONS.md, "Installing from packages"); agent.env and the
# scripts are written before dpkg runs, so the package's postinst starts a configured agent.

package_deb=''
package_usable() {
  [[ $(id -u) -eq 0 && -z ${OUTPOST_PREFIX:-} && -d /run/systemd/system ]] &&
    command -v dpkg >/dev/null && command -v systemctl >/dev/null &&
    case $(dpkg --print-architecture) in amd64 | arm64) true ;; *) false ;; esac
}
package_installed() {
  [[ $(dpkg-query -W -f='${Status}' outpost-agent 2>/dev/null) == "install ok installed" ]]
}
package_url() { echo "${1%/}/downloads/packages/outpost-agent_$(dpkg --print-architecture).deb"; }
# Whether the server at $1 serves the package (a HEAD-sized check: its checksum file). With
# --ca-fingerprint its CA is not pinned yet, so the probe does not check TLS: it only chooses
# the mode; the package and its checksum are fetched later through the pinned CA.
package_served() {
  local insecure=()
  [[ -z $ca_fingerprint ]] || insecure=(-k)
  [[ -n $1 ]] && curl -fsS "${insecure[@]}" --connect-timeout 10 -o /dev/null "$(package_url "$1").sha256" 2>/dev/null
}
use_package_layout() {
  home=/etc/outpost
  state=/var/lib/outpost/agent
  conf=$home/agent.env
  ca_file=$home/ca.pem
  scripts=$home/scripts
  unit_name=outpost-agent.service
}

# Downloads the package, checks its SHA-256 against the server's, and installs it with dpkg
# (the postinst restarts a running agent). Skipped when that version is installed, unless
# $1 is "again".
package_fetch_install() {
  local url want got tmp version
  [[ -n $server ]] || die "no server URL: pass --server URL"
  url=$(package_url "$server")
  tmp=$(mktemp -d)
  package_deb=$tmp/outpost-agent.deb
  fetch "$url.sha256" "$tmp/sum"
  want=$(cut -d' ' -f1 <"$tmp/sum")
  [[ $want =~ ^[0-9a-f]{64}$ ]] || { rm -rf "$tmp"; die "bad checksum file at $url.sha256"; }
  fetch "$url" "$package_deb"
  got=$(sha256sum "$package_deb" | cut -d' ' -f1)
  [[ $got == "$want" ]] || { rm -rf "$tmp"; die "$url has SHA-256 $got, the server says $want: not installed"; }
  version=$(dpkg-deb -f "$package_deb" Version)
  if [[ $1 == again ]] || ! package_installed || [[ $(dpkg-query -W -f='${Version}' outpost-agent) != "$version" ]]; then
    dpkg -i "$package_deb" >"$tmp/dpkg.log" 2>&1 || { cat "$tmp/dpkg.log" >&2; rm -rf "$tmp"; die "dpkg -i failed (its output is above)"; }
    say "installed the package outpost-agent $version (sha256 $got)"
  fi
  rm -rf "$tmp"
}

package_install() {
  merge_conf
  [[ -n $key ]] || die "an agent key is needed: --key opa_… (or OUTPOST_API_KEY)"
  [[ -n $server ]] || die "no server URL: pass --server URL"
  command -v curl >/dev/null || die "curl is needed"
  install -d -m 0755 "$home"
  # Before the package's download: with --ca-fingerprint, its https is checked against it.
  pin_ca
  [[ -z $manifest_src ]] || install_manifest
  local changed=0
  write_conf && changed=1
  package_fetch_install once
  systemctl is-enabled --quiet "$unit_name" 2>/dev/null || systemctl enable --quiet "$unit_name"
  if ((changed)) || [[ -n $manifest_src ]]; then
    systemctl restart "$unit_name"
  else
    systemctl start "$unit_name"
  fi
  systemctl is-active --quiet "$unit_name" || die "$unit_name did not start: journalctl -u $unit_name"
  say "agent running ($unit_name, supervisor pid $(systemctl show -p MainPID --value "$unit_name"))"
  manifest_note
}

package_update() {
  package_installed || die "the outpost-agent package is not installed"
  merge_conf
  pin_ca
  [[ -z $manifest_src ]] || install_manifest
  write_conf || true
  package_fetch_install again
  systemctl restart "$unit_name"
  say "agent running ($unit_name)"
  manifest_note
}

package_status() {
  if ! package_installed; then
    echo "package: outpost-agent not installed"
    return 4
  fi
  echo "package: outpost-agent $(dpkg-query -W -f='${Version}' outpost-agent)"
  echo "  server:  $(conf_get OUTPOST_SERVER_URL)"
  echo "  scripts: $(conf_get OUTPOST_MANIFEST)"
  echo "  boot:    systemd ($unit_name, $(systemctl is-enabled "$unit_name" 2>/dev/null || echo disabled))"
  echo "  logs:    journalctl -u $unit_name, $state/logs"
  if systemctl is-active --quiet "$unit_name"; then
    echo "  running: yes (supervisor pid $(systemctl show -p MainPID --value "$unit_name"))"
    return 0
  fi
  echo "  running: no"
  return 3
}

# --- which mode

if [[ $mode == auto ]] && package_usable && package_installed; then
  mode=package
elif [[ $mode == auto && $action == install ]] && ! native_installed && package_usable &&
  package_served "${server:-$served_url}"; then
  mode=package
fi
if [[ $mode == auto ]]; then
  if [[ $action == install ]]; then
    if native_installed || [[ -n $manifest_src ]]; then
      mode=native
    elif docker_usable && { container_exists || ensure_image; }; then
      mode=docker
    else
      docker_usable && say "Docker is here but image $image is not: installing natively (--docker to insist)"
      mode=native
    fi
  else
    native=0 docker=0
    native_installed && native=1
    docker_usable && container_exists && docker=1
    if ((native && docker)); then
      die "both a native agent and a container are installed: add --native or --docker"
    elif ((docker)); then
      mode=docker
    elif ((native)) || [[ $action != uninstall ]]; then
      mode=native
    else
      echo "nothing to uninstall"
      exit 0
    fi
  fi
fi
if [[ $mode == package ]]; then
  [[ $(id -u) -eq 0 ]] || die "--package needs root (dpkg)"
  package_usable || die "--package needs dpkg and a running systemd, on amd64 or arm64, and no OUTPOST_PREFIX"
  use_package_layout
fi
if [[ $mode == docker ]]; then
  docker_usable || die "Docker is not usable here (is the daemon running, may this user use it?)"
  [[ -z $manifest_src ]] || die "--manifest installs scripts for a native agent: add --native (a container gets its scripts from a mounted folder: see docs/OPERATIONS.md, Docker mode)"
fi

case $mode:$action in
  native:install) native_install ;;
  native:update) native_update ;;
  native:status) native_status ;;
  native:logs) native_logs ;;
  native:stop) native_installed || die "no native agent installed in $home"; native_stop ;;
  native:start) native_installed || die "no native agent installed in $home"; native_start ;;
  native:uninstall) native_uninstall ;;
  package:install) package_install ;;
  package:update) package_update ;;
  package:status) package_status ;;
  package:logs) journalctl -u "$unit_name" -n "${OUTPOST_LOG_LINES:-50}" --no-pager ;;
  package:stop) systemctl stop "$unit_name"; say "agent stopped" ;;
  package:start) systemctl start "$unit_name"; say "agent running" ;;
  package:uninstall) dpkg --purge outpost-agent >/dev/null; say "purged the outpost-agent package (its state, key and scripts)" ;;
  docker:install) docker_install ;;
  docker:update) docker_update ;;
  docker:status) docker_status ;;
  docker:logs) container_exists || die "no container $container"; docker logs --tail "${OUTPOST_LOG_LINES:-50}" "$container" ;;
  docker:stop) container_exists || die "no container $container"; docker stop "$container" >/dev/null; say "container $container stopped" ;;
  docker:start) container_exists || die "no container $container"; docker start "$container" >/dev/null; say "container $container running" ;;
  docker:uninstall) docker_uninstall ;;
esac
