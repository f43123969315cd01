#!/usr/bin/env bash
# The fault suite (CONTRACT.md §21; docs/FAULTS.md): PostgreSQL, three server nodes and three
# agent hosts (two agents each) as network namespaces on one bridge, with partitions, latency
# and loss, a node paused past its lease, skewed clocks, kill -9 of nodes and agents and a
# PostgreSQL crash injected while jobs, a schedule and webhook deliveries run; then a history
# checker judges what the clients saw. scripts/faults.py does the work; this script checks
# what it needs, runs the checker's self-test, then the suite.
#
#   scripts/faults.sh [--bin-dir DIR] [--work DIR] [--rounds N] [--node-skew +S]
#
# Needs root (namespaces, nftables, tc), Debian's iproute2, nftables, faketime, postgresql and
# postgresql-client, and the binaries outpost-server and outpost-agent (--bin-dir, else
# $OUTPOST_BIN_DIR, else target/debug). Ends with the lines CONTRACT.md §21 names and exits
# non-zero when a result was lost, a run executed twice, a schedule fire or a delivery went
# missing, or the fleet did not recover from a fault. The work directory (a new one under
# /tmp unless --work) keeps every log and the history (history.jsonl):
# `scripts/faults.py check DIR/history.jsonl` judges it again.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
bin_dir=${OUTPOST_BIN_DIR:-${CARGO_TARGET_DIR:-$root/target}/debug}
args=()
while (($#)); do
  case $1 in
  --bin-dir)
    (($# >= 2)) || {
      echo "usage: $0 [--bin-dir DIR] [--work DIR] [--rounds N] [--node-skew +S]" >&2
      exit 2
    }
    bin_dir=$2
    shift 2
    ;;
  --work | --rounds | --node-skew)
    (($# >= 2)) || {
      echo "usage: $0 [--bin-dir DIR] [--work DIR] [--rounds N] [--node-skew +S]" >&2
      exit 2
    }
    args+=("$1" "$2")
    shift 2
    ;;
  *)
    echo "usage: $0 [--bin-dir DIR] [--work DIR] [--rounds N] [--node-skew +S]" >&2
    exit 2
    ;;
  esac
done

fail() {
  echo "faults.sh: $*" >&2
  exit 1
}

((EUID == 0)) || fail "needs root: it makes network namespaces, nftables rules and tc qdiscs"
for pair in ip:iproute2 tc:iproute2 nft:nftables faketime:faketime psql:postgresql-client \
  runuser:util-linux python3:python3; do
  command -v "${pair%%:*}" >/dev/null || fail "${pair%%:*} is not installed (Debian: ${pair#*:})"
done
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null ||
  fail "PostgreSQL's server programs are not installed (Debian: postgresql)"
for bin in outpost-server outpost-agent; do
  [[ -x $bin_dir/$bin ]] || fail "$bin_dir/$bin not found: cargo build -p outpost-server -p outpost-agent, or --bin-dir"
done

python3 "$root/scripts/faults.py" selftest
exec python3 "$root/scripts/faults.py" run --bin-dir "$bin_dir" "${args[@]}"
