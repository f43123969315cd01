#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for tests and benchmarks, from Debian's `postgresql` package:
# initdb into a directory, a free port on 127.0.0.1, trust authentication on loopback only.
#
#   scripts/postgres.sh start DIR   # prints the URL of its `postgres` database, e.g.
#                                   # postgres://postgres@127.0.0.1:40123/postgres
#   scripts/postgres.sh stop DIR    # stops it (the directory stays; rm -rf it yourself)
#   scripts/postgres.sh url DIR     # prints the URL again
#
# The tests read OUTPOST_TEST_POSTGRES (that URL) and make a database of their own in it:
#   export OUTPOST_TEST_POSTGRES=$(scripts/postgres.sh start /tmp/outpost-pg)
#
# As root (CI, containers) the cluster runs as the `postgres` user, since PostgreSQL refuses
# to run as root.
set -euo pipefail

usage() {
  echo "usage: $0 start|stop|url DIR" >&2
  exit 2
}
(($# == 2)) || usage
action=$1
dir=$2

bin=${PG_BIN:-}
if [[ -z $bin ]]; then
  for candidate in /usr/lib/postgresql/*/bin; do
    [[ -x $candidate/initdb ]] && bin=$candidate
  done
fi
if [[ -z $bin || ! -x $bin/initdb ]]; then
  echo "$0: PostgreSQL's server programs are not installed (Debian: apt-get install postgresql)" >&2
  exit 1
fi

as_owner() {
  if ((EUID == 0)); then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

url() {
  echo "postgres://postgres@127.0.0.1:$(cat "$dir/port")/postgres"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

case $action in
start)
  mkdir -p "$dir"
  if ((EUID == 0)); then chown postgres: "$dir"; fi
  if [[ ! -f $dir/data/PG_VERSION ]]; then
    as_owner "$bin/initdb" -D "$dir/data" -U postgres --auth=trust --encoding=UTF8 \
      --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 || {
      cat "$dir/initdb.log" >&2
      exit 1
    }
  fi
  [[ -f $dir/port ]] || free_port >"$dir/port"
  port=$(cat "$dir/port")
  # Enough connections for a few servers (16 pooled + 1 writer + 1 listener each) and the
  # tests; fsync stays on, so that what a test kills is what production would lose.
  as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 60 start \
    -o "-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories=$dir \
        -c max_connections=300 -c shared_buffers=128MB" >/dev/null
  url
  ;;
stop)
  if [[ -f $dir/data/postmaster.pid ]]; then
    as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null
  fi
  ;;
url)
  url
  ;;
*)
  usage
  ;;
esac
