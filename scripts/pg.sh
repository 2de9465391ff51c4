#!/usr/bin/env bash
#! Private PostgreSQL clusters: throw-away ones for tests, and the one `tollgate up`
#! keeps under ./.tollgate/pg (local development).
#!
#!   scripts/pg.sh start   DIR PORT   initdb if needed, start, wait until ready
#!   scripts/pg.sh stop    DIR        fast shutdown (no-op when not running)
#!   scripts/pg.sh destroy DIR        stop, then delete DIR and everything it owns
#!
#! The cluster listens on 127.0.0.1:PORT only, with trust auth (TCP from
#! 127.0.0.1 and the unix socket inside DIR), superuser role `postgres`:
#!   postgres://postgres@127.0.0.1:PORT/postgres
#! Prints nothing but errors.
#!
#! Layout: DIR/cluster/{data,run,postgres.log}; `run` holds the unix socket.
#!
#! Root: PostgreSQL refuses to run as root, so as root every server command runs
#! as the `postgres` OS user (override with TOLLGATE_PG_OS_USER) via runuser, and
#! DIR/cluster is owned by that user (mode 700). That user must be able to
#! traverse every parent of DIR. We never chmod the caller's parents (e.g. /root
#! is 700 on purpose); instead, when the postgres user cannot reach DIR, the
#! cluster lives in a fresh directory /var/lib/tollgate/pg-<hash of DIR>.XXXXXX
#! (override /var/lib/tollgate with TOLLGATE_PG_FALLBACK_DIR) and DIR/cluster is
#! a symlink to it. Unlike /tmp (used before), it survives reboots and /tmp
#! cleaning: `tollgate up` keeps projects, plans and keys there. The server is
#! always given the resolved real path, so it never walks through DIR.
#! `destroy` removes the symlink target too.
#! If DIR/cluster is a symlink whose target no longer exists (e.g. a cluster an
#! older pg.sh put in /tmp, and /tmp was cleared), `start` refuses rather than
#! silently initdb an empty cluster in its place: remove the symlink (or
#! `destroy` DIR) to start over empty. Likewise when the data directory is gone
#! but the server log shows a cluster ran there.
#!
#! Binaries: TOLLGATE_PG_BIN, else the newest /usr/lib/postgresql/*/bin that has
#! initdb, pg_ctl, postgres and pg_isready, else `pg_config --bindir` (if it has
#! them), else initdb on PATH. Missing? Run scripts/deps.sh.
set -euo pipefail
unset PGHOST PGHOSTADDR PGPORT PGSERVICE PGOPTIONS PGDATA PGDATABASE PGUSER

die() { echo "pg.sh: $*" >&2; exit 1; }
usage() { die "usage: pg.sh start DIR PORT | stop DIR | destroy DIR"; }

# The server binaries this script runs, all from one directory.
has_server_bins() {
  local b
  for b in initdb pg_ctl postgres pg_isready; do [ -x "$1/$b" ] || return 1; done
}

find_pg_bin() {
  if [ -n "${TOLLGATE_PG_BIN:-}" ]; then
    [ -x "$TOLLGATE_PG_BIN/initdb" ] || die "TOLLGATE_PG_BIN=$TOLLGATE_PG_BIN has no initdb"
    echo "$TOLLGATE_PG_BIN"; return
  fi
  local d
  # Newest version first, skipping a directory with only some binaries (e.g. a
  # newer postgresql-client next to an older server).
  while IFS= read -r d; do
    if has_server_bins "$d"; then echo "$d"; return; fi
  done < <(printf '%s\n' /usr/lib/postgresql/*/bin | sort -rV)
  if command -v pg_config >/dev/null 2>&1; then
    d=$(pg_config --bindir 2>/dev/null || true)
    if [ -n "$d" ] && has_server_bins "$d"; then echo "$d"; return; fi
  fi
  if command -v initdb >/dev/null 2>&1; then dirname "$(command -v initdb)"; return; fi
  die "PostgreSQL server binaries (initdb, pg_ctl, postgres, pg_isready in one directory) not found: run scripts/deps.sh or set TOLLGATE_PG_BIN"
}

IS_ROOT=0
[ "$(id -u)" -eq 0 ] && IS_ROOT=1
PG_OS_USER=${TOLLGATE_PG_OS_USER:-postgres}
FALLBACK_BASE=${TOLLGATE_PG_FALLBACK_DIR:-/var/lib/tollgate}
# Written into every fallback cluster directory, so `destroy` knows it may delete it.
MARKER=.tollgate-pg-cluster

# Run a command as the OS user that owns the cluster, from `/` so that a
# cwd the postgres user cannot read (e.g. /root) causes no warnings.
as_pg() {
  if [ "$IS_ROOT" -eq 1 ]; then
    if command -v runuser >/dev/null 2>&1; then
      (cd / && runuser -u "$PG_OS_USER" -- "$@")
    else
      (cd / && su -s /bin/sh "$PG_OS_USER" -c "$(printf '%q ' "$@")")
    fi
  else
    (cd / && "$@")
  fi
}

# A new, empty directory for DIR's cluster under FALLBACK_BASE (root only; see
# the header), which the postgres user can reach.
new_fallback_dir() {
  local id old target
  if [ ! -d "$FALLBACK_BASE" ]; then
    mkdir -p "$FALLBACK_BASE"
    chmod 755 "$FALLBACK_BASE"
  fi
  as_pg test -x "$FALLBACK_BASE" ||
    die "the $PG_OS_USER user can reach neither $DIR nor $FALLBACK_BASE; make one of them reachable or set TOLLGATE_PG_FALLBACK_DIR"
  id=$(printf '%s' "$DIR" | sha256sum | cut -c1-12)
  for old in "$FALLBACK_BASE/pg-$id".*; do
    if [ -f "$old/$MARKER" ]; then
      echo "pg.sh: note: $old holds an earlier cluster of $DIR (whose $CL symlink is gone); delete it if it is not needed" >&2
    fi
  done
  target=$(mktemp -d "$FALLBACK_BASE/pg-$id.XXXXXX")
  printf 'PostgreSQL cluster of %s (scripts/pg.sh)\n' "$DIR" >"$target/$MARKER"
  echo "$target"
}

# Sets DIR (absolute), CL (DIR/cluster), REAL (resolved CL), DATA, RUN, LOG.
# With create=1, makes the directories (see the root notes in the header).
resolve_dirs() {
  local create=$1
  if [ "$create" -eq 1 ]; then mkdir -p "$DIR"; fi
  [ -d "$DIR" ] || return 1
  DIR=$(cd "$DIR" && pwd -P)
  CL="$DIR/cluster"
  if [ "$create" -eq 1 ]; then
    if [ -L "$CL" ]; then
      if [ ! -d "$CL/" ]; then
        local target why=''
        target=$(readlink "$CL")
        case "$target" in
          /tmp/*) why=" (an older pg.sh kept clusters in /tmp, which has been cleared since; new ones go to $FALLBACK_BASE)" ;;
        esac
        die "$CL points to $target, which no longer exists: that cluster and all its data (projects, plans, keys) are gone$why. Refusing to create an empty cluster in its place; to start over with an empty one: rm $CL"
      fi
    elif [ ! -d "$CL" ]; then
      if [ "$IS_ROOT" -eq 1 ] && ! as_pg test -x "$DIR"; then
        local fallback
        fallback=$(new_fallback_dir)
        ln -s "$fallback" "$CL"
      else
        mkdir "$CL"
      fi
    fi
    chmod 700 "$CL/"
    if [ "$IS_ROOT" -eq 1 ] && [ "$(stat -c %U "$CL/")" != "$PG_OS_USER" ]; then
      chown -R "$PG_OS_USER": "$CL/"
    fi
  fi
  [ -d "$CL" ] || return 1
  REAL=$(cd "$CL" && pwd -P)
  DATA="$REAL/data"
  RUN="$REAL/run"
  LOG="$REAL/postgres.log"
}

is_running() { [ -f "$DATA/postmaster.pid" ] && as_pg "$BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1; }

init_cluster() {
  rm -rf "$DATA"   # a half-finished initdb leaves junk behind
  if ! as_pg "$BIN/initdb" -D "$DATA" -U postgres -A trust -E UTF8 --locale=C --no-sync \
      >"$REAL/initdb.log" 2>&1; then
    cat "$REAL/initdb.log" >&2
    die "initdb failed in $DATA"
  fi
  # Trust, but only over the private socket and 127.0.0.1 (no ::1, no LAN).
  printf '%s\n' \
    'local all all trust' \
    'host  all all 127.0.0.1/32 trust' >"$DATA/pg_hba.conf"
  printf "\ninclude 'tollgate.conf'\n" >>"$DATA/postgresql.conf"
  if [ "$IS_ROOT" -eq 1 ]; then chown "$PG_OS_USER": "$DATA/pg_hba.conf"; fi
}

write_conf() {
  local port=$1 sockdir=$RUN
  # sun_path is 108 bytes; past that the server refuses to start, so fall back
  # to TCP only (pg_ctl -w reads postmaster.pid and does not need the socket).
  if [ ${#sockdir} -gt 90 ]; then sockdir=''; fi
  local quoted=${sockdir//\'/\'\'}
  {
    echo "# written by scripts/pg.sh on every start"
    echo "listen_addresses = '127.0.0.1'"
    echo "port = $port"
    echo "unix_socket_directories = '$quoted'"
    echo "max_connections = 300"
  } >"$DATA/tollgate.conf"
  mkdir -p "$RUN"
  if [ "$IS_ROOT" -eq 1 ]; then chown "$PG_OS_USER": "$DATA/tollgate.conf" "$RUN"; fi
}

wait_ready() {
  local port=$1 i
  for i in $(seq 1 120); do
    if "$BIN/pg_isready" -q -h 127.0.0.1 -p "$port" -U postgres -d postgres; then return 0; fi
    sleep 0.25
  done
  tail -n 30 "$LOG" >&2 || true
  die "PostgreSQL in $DATA not ready on 127.0.0.1:$port after 30 s"
}

running_port() { sed -n 4p "$DATA/postmaster.pid" 2>/dev/null || true; }

cmd_start() {
  [ $# -eq 2 ] || usage
  DIR=$1
  local port=$2
  [[ "$port" =~ ^[0-9]+$ ]] && [ "$port" -gt 0 ] && [ "$port" -lt 65536 ] || die "bad port: $port"
  if [ "$IS_ROOT" -eq 1 ]; then
    id -u "$PG_OS_USER" >/dev/null 2>&1 ||
      die "running as root needs the OS user '$PG_OS_USER' (created by the postgresql package; see scripts/deps.sh)"
  fi
  BIN=$(find_pg_bin)
  resolve_dirs 1
  if [ ! -s "$DATA/PG_VERSION" ]; then
    # The server log is written only once a cluster has started: its data is gone.
    [ ! -e "$LOG" ] ||
      die "$DATA holds no cluster, but $LOG shows one ran there: its data (projects, plans, keys) is gone. Refusing to create an empty cluster in its place; to start over with an empty one: pg.sh destroy $DIR"
    init_cluster
  fi
  if is_running; then
    if [ "$(running_port)" = "$port" ]; then wait_ready "$port"; return 0; fi
    cmd_stop "$DIR"
  fi
  write_conf "$port"
  if ! as_pg "$BIN/pg_ctl" -D "$DATA" -l "$LOG" -w -t 60 -s start >/dev/null; then
    tail -n 30 "$LOG" >&2 || true
    die "could not start PostgreSQL in $DATA on 127.0.0.1:$port"
  fi
  wait_ready "$port"
}

cmd_stop() {
  [ $# -eq 1 ] || usage
  DIR=$1
  resolve_dirs 0 || return 0
  [ -f "$DATA/postmaster.pid" ] || return 0
  BIN=$(find_pg_bin)
  is_running || return 0   # stale pid file from a crash: nothing to stop
  as_pg "$BIN/pg_ctl" -D "$DATA" -m fast -w -t 30 -s stop >/dev/null 2>&1 ||
    as_pg "$BIN/pg_ctl" -D "$DATA" -m immediate -w -t 30 -s stop >/dev/null ||
    die "could not stop PostgreSQL in $DATA"
}

cmd_destroy() {
  [ $# -eq 1 ] || usage
  cmd_stop "$1"
  DIR=$1
  [ -e "$DIR" ] || return 0
  DIR=$(cd "$DIR" && pwd -P)
  if [ -L "$DIR/cluster" ]; then
    local target
    target=$(readlink "$DIR/cluster")
    # Only a directory pg.sh made: a fallback cluster (it holds the marker), or
    # one an older pg.sh made in /tmp.
    case "$target" in
      /tmp/tollgate-pg.*) rm -rf "$target" ;;
      /*) if [ -f "$target/$MARKER" ]; then rm -rf "$target"; fi ;;
    esac
  fi
  rm -rf "$DIR"
}

case "${1:-}" in
  start) shift; cmd_start "$@" ;;
  stop) shift; cmd_stop "$@" ;;
  destroy) shift; cmd_destroy "$@" ;;
  *) usage ;;
esac
