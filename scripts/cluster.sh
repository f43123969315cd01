#!/usr/bin/env bash
# A throwaway Outpost cluster on this machine, as processes: a PostgreSQL (scripts/postgres.sh),
# N outpost-server nodes sharing it on free loopback ports, and HAProxy (Debian's `haproxy`) in
# front of them with deploy/haproxy.cfg's settings. For tests, benchmarks and trying scale-out
# (CONTRACT.md §13); deploy/compose.yaml is the same shape in containers, for operators.
#
#   scripts/cluster.sh start DIR [--nodes N] [--bin-dir DIR]   # N defaults to 3
#   scripts/cluster.sh stop DIR
#
# `start` prints, and writes to DIR/env (sourceable; mode 0600, it holds the owner key):
#   OUTPOST_URL             the balancer, http://127.0.0.1:PORT (what agents and the CLI use)
#   OUTPOST_NODE_URLS       every node's own URL, comma-separated (an OUTPOST_SERVER_URL list)
#   OUTPOST_TOKEN           the owner API key (the CLI reads OUTPOST_URL and OUTPOST_TOKEN)
#   OUTPOST_ADMIN_KEY       the same key, as the servers take it
#   OUTPOST_DATABASE_URL    the database the nodes share
# and returns once every node printed `outpost-server listening on URL` and answers /readyz
# with 200, and the balancer does too. The binaries come from --bin-dir, else $OUTPOST_BIN_DIR,
# else target/debug ($CARGO_TARGET_DIR/debug). OUTPOST_LOG, if set, is passed to the nodes;
# OUTPOST_CLUSTER_TIMEOUT (seconds, default 60) bounds each wait for readiness.
#
# What the nodes share is generated once into DIR and kept across stop/start: the owner key
# (admin.key), the master key (master.key) and the release signing key (release.key, copied
# into each node's data directory). Each node has its own data directory (DIR/nodeI/data), log
# (DIR/nodeI/server.log) and name (nodeI). `stop` ends what `start` started (the pids are in
# DIR) and PostgreSQL; DIR stays (rm -rf it yourself), and `start DIR` again brings the same
# cluster back with its data.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)

usage() {
  echo "usage: $0 start DIR [--nodes N] [--bin-dir DIR] | stop DIR" >&2
  exit 2
}
fail() {
  echo "cluster.sh: $*" >&2
  exit 1
}

(($# >= 2)) || usage
action=$1
dir=$2
shift 2
nodes=3
bin_dir=${OUTPOST_BIN_DIR:-${CARGO_TARGET_DIR:-$root/target}/debug}
while (($#)); do
  case $1 in
  --nodes)
    (($# >= 2)) || usage
    nodes=$2
    shift 2
    ;;
  --bin-dir)
    (($# >= 2)) || usage
    bin_dir=$2
    shift 2
    ;;
  *) usage ;;
  esac
done
[[ $nodes =~ ^[1-9][0-9]*$ ]] || fail "--nodes takes a number from 1, not '$nodes'"

# How long a node, PostgreSQL or the balancer may take to become ready. Generous for small,
# busy machines; every wait returns as soon as its condition holds.
ready_timeout_s=${OUTPOST_CLUSTER_TIMEOUT:-60}
# Set once `start` has everything running; until then, exiting stops what it started.
started=0

port_free() {
  python3 -c 'import socket, sys; s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("127.0.0.1", int(sys.argv[1])))' "$1" 2>/dev/null
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

random_hex() {
  od -An -tx1 -N"$1" /dev/urandom | tr -d ' \n'
}

# Whether pid file $1 names a live process whose command line contains $2: a pid left in DIR
# by an earlier run may belong to an unrelated process by now, which is never signalled.
alive() {
  local pid
  [[ -s $1 ]] || return 1
  pid=$(<"$1")
  [[ -r /proc/$pid/cmdline ]] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$2"
}

# Stops the processes of the pid files given as FILE:WHAT pairs (each checked with `alive`
# against WHAT): SIGTERM to all at once, then SIGKILL to any still there after 15 s (a node
# drains its requests for up to 10 s).
stop_pids() {
  local pair file pids=() pid i
  for pair in "$@"; do
    file=${pair%%:*}
    if alive "$file" "${pair#*:}"; then
      pid=$(<"$file")
      kill -TERM "$pid" 2>/dev/null || true
      pids+=("$pid")
    fi
    rm -f "$file"
  done
  for pid in "${pids[@]}"; do
    for ((i = 0; i < 150; i++)); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
  done
}

stop_all() {
  local node pairs=("$dir/haproxy.pid:haproxy")
  for node in "$dir"/node*/; do
    [[ -d $node ]] && pairs+=("${node}pid:outpost-server")
  done
  stop_pids "${pairs[@]}"
  if [[ -d $dir/pg ]]; then
    "$root/scripts/postgres.sh" stop "$dir/pg" || true
  fi
}

stop_unless_started() {
  if ((started == 0)); then stop_all; fi
}

# Waits until `$@` succeeds, for at most $ready_timeout_s; fails naming $what and the log $log.
wait_until() {
  local what=$1 log=$2 deadline=$((SECONDS + ready_timeout_s))
  shift 2
  until "$@"; do
    if ((SECONDS >= deadline)); then
      echo "cluster.sh: $what not ready after ${ready_timeout_s} s; the end of $log:" >&2
      tail -n 30 "$log" >&2 || true
      return 1
    fi
    sleep 0.1
  done
}

# Whether the process in pid file $1, started by this script, is still running. Unlike
# `alive` it does not look at the command line: just after `start_node` the child may still be
# the shell that has not exec'd the server yet, whose command line is this script's (a busy
# machine made `start` report a healthy node as exited that way).
running() {
  local pid
  [[ -s $1 ]] || return 1
  pid=$(<"$1")
  kill -0 "$pid" 2>/dev/null && ! grep -q '^State:[[:space:]]*Z' "/proc/$pid/status" 2>/dev/null
}

# A node is up once it printed its listening line (the database is migrated, the owner key
# registered); it must still be running.
node_listening() {
  local node=$1
  running "$node/pid" || fail "$(basename "$node") exited; the end of its log:
$(tail -n 30 "$node/server.log" 2>/dev/null)"
  grep -q '^outpost-server listening on ' "$node/stdout" 2>/dev/null
}

# Waits until node $1 has printed its listening line and answers /readyz with 200.
wait_ready() {
  local node=$dir/node$1
  wait_until "node$1" "$node/server.log" node_listening "$node"
  wait_until "node$1's /readyz" "$node/server.log" ready "http://127.0.0.1:$(<"$node/port")"
}

ready() {
  [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$1/readyz") == 200 ]]
}

# Starts node $1 in the background (binary $2, database $3, owner key $4, master key $5); its
# pid, port, stdout and log are in DIR/node$1.
start_node() {
  local i=$1 server=$2 database_url=$3 admin_key=$4 master_key=$5
  local node=$dir/node$i port
  mkdir -p "$node/data"
  [[ -s $node/data/release.key ]] || cp "$dir/release.key" "$node/data/release.key"
  # The same port as last time, if it is still free.
  port=$(cat "$node/port" 2>/dev/null || true)
  if [[ -z $port ]] || ! port_free "$port"; then
    port=$(free_port)
    echo "$port" >"$node/port"
  fi
  rm -f "$node/stdout"
  # Behind the balancer every agent comes from its address: let as many of them be between
  # connecting and authenticating as the server allows in all (docs/OPERATIONS.md,
  # "Connections: timeouts and caps"), and count rate limits by the client HAProxy names in
  # X-Forwarded-For (the nodes listen on loopback only; "Rate limits and proxies").
  OUTPOST_ADMIN_KEY=$admin_key OUTPOST_MASTER_KEY=$master_key \
    "$server" --listen "127.0.0.1:$port" --data-dir "$node/data" \
    --database-url "$database_url" --node-name "node$i" \
    --max-unauthenticated-per-address 2048 --trusted-proxy 127.0.0.1 \
    </dev/null >"$node/stdout" 2>>"$node/server.log" &
  echo $! >"$node/pid"
}

start() {
  command -v haproxy >/dev/null || fail "haproxy is not installed (Debian: apt-get install haproxy)"
  command -v curl >/dev/null || fail "curl is not installed"
  command -v psql >/dev/null || fail "psql is not installed (Debian: postgresql-client)"
  local server=$bin_dir/outpost-server
  [[ -x $server ]] || fail "$server not found: build it (cargo build -p outpost-server) or pass --bin-dir"
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  if alive "$dir/haproxy.pid" haproxy; then
    fail "a cluster is already running in $dir: stop it first ($0 stop $dir)"
  fi
  # As root, PostgreSQL runs as `postgres` (see postgres.sh), which must reach DIR/pg.
  if ((EUID == 0)); then chmod 0711 "$dir"; fi
  # From here on a failure stops whatever was started.
  trap stop_unless_started EXIT

  umask 077
  [[ -s $dir/admin.key ]] || echo "opk_cluster$(random_hex 24)" >"$dir/admin.key"
  [[ -s $dir/master.key ]] || random_hex 32 >"$dir/master.key"
  [[ -s $dir/release.key ]] ||
    "$server" release keygen --out "$dir/release.key" >/dev/null 2>"$dir/keygen.log" ||
    fail "outpost-server release keygen failed: $(cat "$dir/keygen.log")"
  local admin_key master_key
  admin_key=$(<"$dir/admin.key")
  master_key=$(<"$dir/master.key")

  local pg_url database_url
  pg_url=$("$root/scripts/postgres.sh" start "$dir/pg")
  database_url=${pg_url%/postgres}/outpost
  if [[ -z $(psql -X -q -t -A "$pg_url" -c "SELECT 1 FROM pg_database WHERE datname = 'outpost'") ]]; then
    psql -X -q -v ON_ERROR_STOP=1 "$pg_url" -c 'CREATE DATABASE outpost' >/dev/null
  fi

  # The first node alone, then the others together. Nodes may start together on an empty
  # database (they take turns migrating it and making the owner key: server/store/tests/it/nodes.rs);
  # the first one alone keeps one node's log holding the first start's story.
  local i node_urls=() servers=()
  start_node 1 "$server" "$database_url" "$admin_key" "$master_key"
  wait_ready 1
  for ((i = 2; i <= nodes; i++)); do
    start_node "$i" "$server" "$database_url" "$admin_key" "$master_key"
  done
  for ((i = 1; i <= nodes; i++)); do
    ((i == 1)) || wait_ready "$i"
    node_urls+=("http://127.0.0.1:$(<"$dir/node$i/port")")
    servers+=("    server node$i 127.0.0.1:$(<"$dir/node$i/port")")
  done

  # deploy/haproxy.cfg down to its servers marker, then this cluster's nodes.
  {
    echo "# Made by scripts/cluster.sh from deploy/haproxy.cfg; remade at every start."
    sed '/^ *# --- servers/q' "$root/deploy/haproxy.cfg"
    printf '%s\n' "${servers[@]}"
  } >"$dir/haproxy.cfg"
  local lb_port
  lb_port=$(free_port)
  OUTPOST_LB_BIND=127.0.0.1:$lb_port haproxy -c -q -f "$dir/haproxy.cfg" >"$dir/haproxy.log" 2>&1 ||
    fail "HAProxy refused $dir/haproxy.cfg: $(cat "$dir/haproxy.log")"
  OUTPOST_LB_BIND=127.0.0.1:$lb_port haproxy -db -f "$dir/haproxy.cfg" \
    </dev/null >>"$dir/haproxy.log" 2>&1 &
  echo $! >"$dir/haproxy.pid"
  local url=http://127.0.0.1:$lb_port
  wait_until "the balancer" "$dir/haproxy.log" ready "$url"
  started=1

  local nodes_csv
  nodes_csv=$(
    IFS=,
    echo "${node_urls[*]}"
  )
  {
    echo "export OUTPOST_URL=$url"
    echo "export OUTPOST_NODE_URLS=$nodes_csv"
    echo "export OUTPOST_TOKEN=$admin_key"
    echo "export OUTPOST_ADMIN_KEY=$admin_key"
    echo "export OUTPOST_DATABASE_URL=$database_url"
  } >"$dir/env"
  cat "$dir/env"
}

case $action in
start) start ;;
stop)
  [[ -d $dir ]] || fail "$dir does not exist"
  stop_all
  ;;
*) usage ;;
esac
