#!/usr/bin/env bash
# Makes the base images Dockerfile.agent and Dockerfile.server build FROM, on a machine whose
# Docker engine cannot pull images: a Debian bookworm root filesystem from debootstrap, imported
# with `docker import`.
#
#   scripts/docker-base.sh            # outpost-base:bookworm (runtime base, ca-certificates)
#   scripts/docker-base.sh --builder  # also outpost-builder:bookworm (base + gcc + this
#                                     # machine's Rust toolchain), for compiling in Docker
#
# Then: docker build -f Dockerfile.agent --build-arg RUNTIME_IMAGE=outpost-base:bookworm \
#         --build-arg BUILDER_IMAGE=outpost-builder:bookworm -t outpost-agent .
# An image that already exists is kept (delete it to rebuild). Needs root and debootstrap
# (installed with apt-get when missing). Image names: OUTPOST_BASE_IMAGE, OUTPOST_BUILDER_IMAGE.
set -euo pipefail

base_image=${OUTPOST_BASE_IMAGE:-outpost-base:bookworm}
builder_image=${OUTPOST_BUILDER_IMAGE:-outpost-builder:bookworm}
suite=bookworm
want_builder=0

for arg in "$@"; do
  case $arg in
    --builder) want_builder=1 ;;
    -h | --help)
      sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "docker-base.sh: unknown option $arg (try --help)" >&2
      exit 2
      ;;
  esac
done

have_image() { docker image inspect "$1" >/dev/null 2>&1; }

if have_image "$base_image" && { ((want_builder == 0)) || have_image "$builder_image"; }; then
  echo "docker-base.sh: $base_image$( ((want_builder)) && echo " and $builder_image") already exist"
  exit 0
fi

if [[ $(id -u) -ne 0 ]]; then
  echo "docker-base.sh: debootstrap needs root" >&2
  exit 1
fi
if ! command -v debootstrap >/dev/null; then
  apt-get update -q
  apt-get install -y -q debootstrap
fi

work=$(mktemp -d)
cleanup() { rm -rf "$work"; }
trap cleanup EXIT
rootfs=$work/rootfs

echo "docker-base.sh: debootstrap --variant=minbase $suite (a few minutes)"
debootstrap --variant=minbase --include=ca-certificates "$suite" "$rootfs" >"$work/debootstrap.log" 2>&1 || {
  tail -n 30 "$work/debootstrap.log" >&2
  exit 1
}

# Smaller image: no package cache, lists, docs, man pages or locales (like debian:*-slim).
slim() {
  rm -rf "$1"/var/cache/apt/archives/*.deb "$1"/var/lib/apt/lists/* "$1"/usr/share/doc/* \
    "$1"/usr/share/man/* "$1"/usr/share/info/* "$1"/var/log/*.log
  find "$1"/usr/share/locale -mindepth 1 -maxdepth 1 ! -name 'locale.alias' -exec rm -rf {} +
}

import() { # import ROOTFS IMAGE [docker import --change ...]
  local dir=$1 image=$2
  shift 2
  tar --numeric-owner -C "$dir" -c . | docker import "$@" - "$image" >/dev/null
  echo "docker-base.sh: made $image ($(docker image inspect -f '{{.Size}}' "$image" | awk '{printf "%.0f MB", $1/1e6}'))"
}

if ! have_image "$base_image"; then
  cp -a "$rootfs" "$work/base"
  slim "$work/base"
  import "$work/base" "$base_image" --change 'CMD ["/bin/bash"]'
  rm -rf "$work/base"
fi

if ((want_builder)) && ! have_image "$builder_image"; then
  toolchain=$(rustc --print sysroot)
  echo "docker-base.sh: adding gcc and the Rust toolchain in $toolchain"
  cp /etc/resolv.conf "$rootfs/etc/resolv.conf"
  chroot "$rootfs" apt-get install -y -q --no-install-recommends gcc libc6-dev >"$work/apt.log" 2>&1 || {
    tail -n 30 "$work/apt.log" >&2
    exit 1
  }
  # The host's CA bundle: cargo inside the builder then fetches crates through whatever TLS
  # proxy this machine trusts (this image is for local builds on this machine only).
  cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
  mkdir -p "$rootfs/usr/local/rust"
  tar -C "$toolchain" --exclude=./share/doc -c . | tar -C "$rootfs/usr/local/rust" -x
  slim "$rootfs"
  import "$rootfs" "$builder_image" \
    --change 'ENV PATH=/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV CARGO_HOME=/usr/local/cargo' \
    --change 'CMD ["/bin/bash"]'
fi
