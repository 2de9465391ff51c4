#!/usr/bin/env bash
#! A private nats-server with JetStream, in the background, for local development.
#!
#!   scripts/nats.sh start DIR PORT   start (no-op if already running on PORT; restarted if running
#!                                    on another port), wait until it accepts
#!   scripts/nats.sh stop  DIR        SIGTERM, then SIGKILL after 10 s (no-op when not running)
#!
#! Store: DIR/js. Pid file: DIR/nats.pid. Log: DIR/nats.log. Listens on 127.0.0.1:PORT only.
#! Binary: TOLLGATE_NATS_SERVER_BIN, else nats-server on PATH, else /usr/sbin/nats-server
#! (Debian installs it there, outside a normal user's PATH). Missing? Run scripts/deps.sh.
#! Tests do not use this script: the testkit starts one nats-server per test.
set -euo pipefail

die() { echo "nats.sh: $*" >&2; exit 1; }
usage() { die "usage: nats.sh start DIR PORT | stop DIR"; }

find_nats() {
  if [ -n "${TOLLGATE_NATS_SERVER_BIN:-}" ]; then echo "$TOLLGATE_NATS_SERVER_BIN"; return; fi
  if command -v nats-server >/dev/null 2>&1; then command -v nats-server; return; fi
  if [ -x /usr/sbin/nats-server ]; then echo /usr/sbin/nats-server; return; fi
  die "nats-server not found: run scripts/deps.sh or set TOLLGATE_NATS_SERVER_BIN"
}

# Go schedules nats-server on one thread per core by default, and on a machine it
# shares with Tollgate and PostgreSQL its idle threads spin and hand work to each
# other (measured on 2 cores: over half its CPU in the kernel, a fifth in context
# switches). Half the cores, at least one, unless GOMAXPROCS is set.
gomaxprocs() {
  if [ -n "${GOMAXPROCS:-}" ]; then echo "$GOMAXPROCS"; return; fi
  local cores
  cores=$(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN 2>/dev/null || echo 2)
  [[ "$cores" =~ ^[0-9]+$ ]] || cores=2
  echo $(( cores / 2 > 1 ? cores / 2 : 1 ))
}

# Pid from DIR/nats.pid if that process is alive (and, where /proc exists, is a nats-server).
live_pid() {
  local pid
  pid=$(cat "$DIR/nats.pid" 2>/dev/null || true)
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  if [ -r "/proc/$pid/comm" ] && ! grep -q nats "/proc/$pid/comm"; then return 1; fi
  echo "$pid"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

cmd_start() {
  [ $# -eq 2 ] || usage
  DIR=$1
  local port=$2 bin pid i
  [[ "$port" =~ ^[0-9]+$ ]] && [ "$port" -gt 0 ] && [ "$port" -lt 65536 ] || die "bad port: $port"
  mkdir -p "$DIR/js"
  DIR=$(cd "$DIR" && pwd -P)
  if pid=$(live_pid) && [ "$(cat "$DIR/nats.port" 2>/dev/null || true)" != "$port" ]; then
    # Left running by an earlier start (a crash, a closed terminal): restart it on PORT.
    echo "nats.sh: restarting the nats-server left running in $DIR (pid $pid) on port $port" >&2
    cmd_stop "$DIR"
  fi
  if pid=$(live_pid); then
    :
  else
    bin=$(find_nats)
    echo "$port" >"$DIR/nats.port"
    # setsid: a Ctrl-C in the calling terminal must not take the server down with it.
    local detach=()
    if command -v setsid >/dev/null 2>&1; then detach=(setsid); fi
    GOMAXPROCS=$(gomaxprocs) "${detach[@]}" "$bin" -js -sd "$DIR/js" -a 127.0.0.1 -p "$port" -P "$DIR/nats.pid" \
      >>"$DIR/nats.log" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$DIR/nats.pid"
  fi
  for i in $(seq 1 100); do
    if port_open "$port"; then return 0; fi
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 20 "$DIR/nats.log" >&2 || true
      rm -f "$DIR/nats.pid"
      die "nats-server exited during start-up (see $DIR/nats.log)"
    fi
    sleep 0.1
  done
  tail -n 20 "$DIR/nats.log" >&2 || true
  die "nats-server not accepting on 127.0.0.1:$port after 10 s"
}

cmd_stop() {
  [ $# -eq 1 ] || usage
  DIR=$1
  local pid i
  [ -d "$DIR" ] || return 0
  if pid=$(live_pid); then
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
  fi
  rm -f "$DIR/nats.pid"
}

case "${1:-}" in
  start) shift; cmd_start "$@" ;;
  stop) shift; cmd_stop "$@" ;;
  *) usage ;;
esac
