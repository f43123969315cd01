#!/usr/bin/env bash
# Builds the Debian packages: outpost-server, outpost-agent (agent and supervisor) and outpost
# (the CLI), with dpkg-deb, from binaries already built. The files they install, their
# systemd units and maintainer scripts are in deploy/debian/; docs/OPERATIONS.md ("Installing
# from packages") says what each does.
#
#   cargo build --release -p outpost-server
#   cargo build --release -p outpost-agent -p outpost-supervisor -p outpost-cli
#   scripts/packages.sh                          # dist/packages/*.deb
#
# Options (or environment):
#   --bin-dir DIR   the binaries (OUTPOST_BIN_DIR; default target/release)
#   --out DIR       where the .deb files go (default dist/packages)
#   --version V     the packages' version (default: the workspace's, from Cargo.toml); a
#                   Debian version, e.g. 0.1.0 or 0.1.0-2
#   --arch ARCH     Debian architecture of the binaries (default: dpkg --print-architecture)
#   --fast          gzip -1 instead of xz -6: a few seconds instead of minutes for debug
#                   binaries, larger files (CI's end-to-end test uses it)
#
# The server package carries the agent and CLI packages (and the agent and supervisor
# binaries) in /usr/lib/outpost/builds, which it serves at /downloads/packages/… and
# /downloads/…: a server installed from it can install agents with deploy.sh at once.
# Binaries are stripped into the packages; a debug build works too (CI uses one).
set -euo pipefail
cd "$(dirname "$0")/.."

bin_dir=${OUTPOST_BIN_DIR:-target/release}
out=dist/packages
version=''
arch=''
compression=(-Zxz -z6)

die() {
  printf 'packages.sh: %s\n' "$*" >&2
  exit 1
}
need_value() { [[ $# -ge 2 && -n $2 ]] || die "$1 needs a value (try --help)"; }
while (($#)); do
  case $1 in
    --bin-dir) need_value "$@"; bin_dir=$2; shift ;;
    --out) need_value "$@"; out=$2; shift ;;
    --version) need_value "$@"; version=$2; shift ;;
    --arch) need_value "$@"; arch=$2; shift ;;
    --fast) compression=(-Zgzip -z1) ;;
    -h | --help) sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option $1 (try --help)" ;;
  esac
  shift
done

for tool in dpkg-deb strip sha256sum; do
  command -v "$tool" >/dev/null || die "$tool is needed (apt-get install dpkg-dev binutils coreutils)"
done
[[ -n $version ]] || version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
[[ $version =~ ^[0-9][A-Za-z0-9.+~-]*$ ]] || die "--version $version is not a Debian version"
[[ -n $arch ]] || arch=$(dpkg --print-architecture)
case $arch in
  amd64 | arm64) ;;
  *) die "--arch $arch: Outpost builds for amd64 (x86_64) and arm64 (aarch64) only" ;;
esac
for b in outpost-server outpost-agent outpost-supervisor outpost; do
  [[ -x $bin_dir/$b ]] || die "$bin_dir/$b is not built (see --help)"
done
# The binaries must be for --arch: a package for arm64 holding x86-64 code installs, then fails.
want_machine=$([[ $arch == amd64 ]] && echo x86-64 || echo aarch64)
if command -v file >/dev/null && ! file -L "$bin_dir/outpost-agent" | grep -qi "$want_machine"; then
  die "$bin_dir/outpost-agent is not an $want_machine binary (--arch $arch)"
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$out"
maintainer="Outpost <outpost@localhost>"
homepage_note="See /usr/share/doc/outpost-server/OPERATIONS.md.gz"

# put SRC DEST MODE: copies a file into a package root, stripping executables.
put() {
  install -D -m "$3" "$1" "$2"
  if [[ $3 == 0755 && $(head -c 4 "$2" | od -An -c | tr -d ' ') == 177ELF ]]; then
    strip --strip-unneeded "$2" 2>/dev/null || true
  fi
}

# control ROOT NAME DEPENDS DESCRIPTION [LONG]: writes DEBIAN/control.
control() {
  local root=$1 name=$2 depends=$3 summary=$4 long=${5:-}
  mkdir -p "$root/DEBIAN"
  {
    echo "Package: $name"
    echo "Version: $version"
    echo "Architecture: $arch"
    echo "Maintainer: $maintainer"
    echo "Section: admin"
    echo "Priority: optional"
    [[ -z $depends ]] || echo "Depends: $depends"
    echo "Installed-Size: $(du -sk --exclude=DEBIAN "$root" | cut -f1)"
    echo "Description: $summary"
    if [[ -n $long ]]; then fold -s -w 78 <<<"$long" | sed 's/^/ /; s/ *$//'; fi
  } >"$root/DEBIAN/control"
}

# build ROOT FILE: the .deb, owned by root whatever the builder's user.
build() {
  dpkg-deb --root-owner-group "${compression[@]}" --build "$1" "$2" >/dev/null
  echo "built $2 ($(du -h "$2" | cut -f1))"
}

# --- outpost (the CLI)
root=$work/outpost
put "$bin_dir/outpost" "$root/usr/bin/outpost" 0755
put docs/CLI.md "$root/usr/share/doc/outpost/CLI.md" 0644
control "$root" outpost "libc6" "Outpost command bus: the outpost CLI" \
  "Drives an Outpost server over its REST API: agents, jobs, keys, schedules. Reads OUTPOST_URL and OUTPOST_API_KEY."
cli_deb=$out/outpost_${version}_$arch.deb
build "$root" "$cli_deb"

# --- outpost-agent (the agent and its supervisor, as a systemd service running as root)
root=$work/agent
put "$bin_dir/outpost-agent" "$root/usr/bin/outpost-agent" 0755
put "$bin_dir/outpost-supervisor" "$root/usr/bin/outpost-supervisor" 0755
put deploy/debian/outpost-agent.service "$root/lib/systemd/system/outpost-agent.service" 0644
put deploy/debian/agent.env "$root/usr/share/outpost/agent.env" 0644
for script in postinst prerm postrm; do
  put "deploy/debian/outpost-agent.$script" "$root/DEBIAN/$script" 0755
done
control "$root" outpost-agent "libc6" "Outpost command bus: the agent and its supervisor" \
  "Connects this machine to an Outpost server and runs the scripts its manifest allows (/etc/outpost/scripts). Configure /etc/outpost/agent.env, then start outpost-agent.service. $homepage_note on the server."
sed -i '/^Depends:/a Recommends: ca-certificates' "$root/DEBIAN/control"
agent_deb=$out/outpost-agent_${version}_$arch.deb
build "$root" "$agent_deb"

# --- outpost-server (the server, and the builds it serves to deploy.sh)
root=$work/server
put "$bin_dir/outpost-server" "$root/usr/bin/outpost-server" 0755
builds=$root/usr/lib/outpost/builds
put "$bin_dir/outpost-agent" "$builds/outpost-agent" 0755
put "$bin_dir/outpost-supervisor" "$builds/outpost-supervisor" 0755
put "$agent_deb" "$builds/packages/outpost-agent_$arch.deb" 0644
put "$cli_deb" "$builds/packages/outpost_$arch.deb" 0644
put deploy/debian/outpost-server.service "$root/lib/systemd/system/outpost-server.service" 0644
put deploy/debian/server.env "$root/usr/share/outpost/server.env" 0644
for doc in OPERATIONS.md CONTRACT.md; do
  put "docs/$doc" "$root/usr/share/doc/outpost-server/$doc" 0644
  gzip -9n "$root/usr/share/doc/outpost-server/$doc"
done
for script in postinst prerm postrm; do
  put "deploy/debian/outpost-server.$script" "$root/DEBIAN/$script" 0755
done
control "$root" outpost-server "libc6, passwd" "Outpost command bus: the server" \
  "REST API, agent hub, dashboard and storage (SQLite in /var/lib/outpost/server, or PostgreSQL). Serves the agent package and deploy.sh to the machines it manages. Settings: /etc/outpost/server.env."
sed -i '/^Depends:/a Recommends: ca-certificates' "$root/DEBIAN/control"
build "$root" "$out/outpost-server_${version}_$arch.deb"
