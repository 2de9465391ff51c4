#!/usr/bin/env bash
#! The official OpenAI Python SDK against a real `tollgate serve` and mock providers.
#!
#!   bash tests/sdk/run.sh [pytest args]
#!
#! 1. Builds `tollgate` and the testkit's `mock_providers` (debug).
#! 2. Python: a venv in .tollgate/sdk-venv with `openai>=1.40,<2` and pytest
#!    (kept between runs). Without python3-venv (Debian's python3 lacks it
#!    unless installed), pip installs into .tollgate/sdk-pylib instead and
#!    PYTHONPATH points there. TOLLGATE_SDK_NO_VENV=1 forces that path.
#! 3. PostgreSQL: the cluster at TOLLGATE_TEST_DATABASE_URL (scripts/test.sh
#!    sets it), else a private one this script starts under .tollgate/sdk/pg.
#!    A fresh database is created in it for this run and dropped at the end.
#! 4. A fresh nats-server (scripts/nats.sh) under .tollgate/sdk/nats, the four
#!    mocks, and `tollgate serve` (all services) on free ports; logs in
#!    .tollgate/sdk/. Creates a project and applies the plan below.
#! 5. pytest -q tests/sdk/test_sdk.py. Everything started here is stopped on
#!    exit, failure or not; on failure the tail of tollgate.log is printed.
#! Exit code: pytest's (or 1 if the set-up failed).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd -P)

SDK=.tollgate/sdk
VENV=.tollgate/sdk-venv
PYLIB=.tollgate/sdk-pylib
REQUIREMENTS=("openai>=1.40,<2" "pytest")

say() { echo "sdk: $*" >&2; }
die() { say "$*"; exit 1; }

mkdir -p "$SDK"
LOG="$SDK/tollgate.log"
MOCK_OUT="$SDK/mocks.json"
MOCK_LOG="$SDK/mocks.log"
NATS_DIR="$SDK/nats"
PG_DIR="$SDK/pg"
: >"$LOG"

TOLLGATE_PID=""
MOCK_PID=""
NATS_STARTED=0
OWN_PG=0
DB_NAME=""
ADMIN_URL=""
PSQL=""

# Stops a process we started: SIGTERM, then SIGKILL after ~10 s.
stop_pid() {
  local pid=$1 i
  [ -n "$pid" ] || return 0
  kill -TERM "$pid" 2>/dev/null || return 0
  for i in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  local rc=$?
  set +e
  stop_pid "$TOLLGATE_PID"
  stop_pid "$MOCK_PID"
  if [ "$NATS_STARTED" = 1 ]; then bash scripts/nats.sh stop "$NATS_DIR"; fi
  if [ -n "$DB_NAME" ] && [ -n "$PSQL" ] && [ "${TOLLGATE_SDK_KEEP_DB:-0}" != 1 ]; then
    "$PSQL" "$ADMIN_URL" -qAt -v ON_ERROR_STOP=1 \
      -c "DROP DATABASE IF EXISTS \"$DB_NAME\"" >/dev/null 2>&1 ||
      say "could not drop database $DB_NAME"
  fi
  if [ "$OWN_PG" = 1 ]; then bash scripts/pg.sh destroy "$PG_DIR"; fi
  if [ "$rc" -ne 0 ]; then
    if [ -s "$LOG" ]; then
      say "FAILED (exit $rc); last lines of $LOG:"
      tail -n 40 "$LOG" >&2
    else
      say "FAILED (exit $rc)"
    fi
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Random port in 20000-31999 (below Linux's ephemeral range), not in use now.
pick_port() {
  local p i
  for i in $(seq 1 50); do
    p=$((20000 + (RANDOM * 32768 + RANDOM) % 12000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return 0; fi
  done
  die "no free port found"
}

find_psql() {
  if command -v psql >/dev/null 2>&1; then command -v psql; return; fi
  local d
  # Newest version that has psql (not merely the newest directory).
  while IFS= read -r d; do
    if [ -x "$d/psql" ]; then echo "$d/psql"; return; fi
  done < <(printf '%s\n' /usr/lib/postgresql/*/bin | sort -rV)
  die "psql not found (install postgresql-client, or run scripts/deps.sh)"
}

# ---------------------------------------------------------------- 1. build
say "building tollgate and mock_providers"
cargo build -q -p tollgate -p tollgate-testkit --bin tollgate --bin mock_providers
TARGET_DIR=${CARGO_TARGET_DIR:-target}
case "$TARGET_DIR" in /*) ;; *) TARGET_DIR="$ROOT/$TARGET_DIR" ;; esac
TOLLGATE="$TARGET_DIR/debug/tollgate"
MOCKS="$TARGET_DIR/debug/mock_providers"
[ -x "$TOLLGATE" ] && [ -x "$MOCKS" ] || die "built binaries not found in $TARGET_DIR/debug"

# ---------------------------------------------------------------- 2. python
command -v python3 >/dev/null 2>&1 || die "python3 not found (run scripts/deps.sh --test)"
# Installed once per requirement set and Python version; a stamp skips pip afterwards.
STAMP_TEXT="$(python3 -c 'import sys; print(sys.version)') ${REQUIREMENTS[*]}"

stamp_ok() { [ -f "$1/.tollgate-stamp" ] && [ "$(cat "$1/.tollgate-stamp")" = "$STAMP_TEXT" ]; }

setup_venv() {
  [ "${TOLLGATE_SDK_NO_VENV:-0}" = 1 ] && return 1
  if [ -x "$VENV/bin/python" ] && stamp_ok "$VENV"; then return 0; fi
  rm -rf "$VENV"
  if ! python3 -m venv "$VENV" >"$SDK/venv.log" 2>&1; then
    say "python3 -m venv failed (no python3-venv?); falling back to pip --target"
    rm -rf "$VENV"
    return 1
  fi
  say "installing ${REQUIREMENTS[*]} into $VENV"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "${REQUIREMENTS[@]}" ||
    die "pip install into $VENV failed"
  echo "$STAMP_TEXT" >"$VENV/.tollgate-stamp"
}

setup_pylib() {
  if [ -d "$PYLIB" ] && stamp_ok "$PYLIB"; then return 0; fi
  rm -rf "$PYLIB"
  mkdir -p "$PYLIB"
  python3 -m pip --version >/dev/null 2>&1 || die "neither python3-venv nor pip is available (run scripts/deps.sh --test)"
  say "installing ${REQUIREMENTS[*]} into $PYLIB"
  local pip=(python3 -m pip install -q --disable-pip-version-check --target "$PYLIB")
  # Debian's pip refuses some installs as "externally managed" (PEP 668); --target
  # is normally allowed, but retry with the override if this pip objects anyway.
  if ! "${pip[@]}" "${REQUIREMENTS[@]}" 2>"$SDK/pip.log"; then
    if grep -q externally-managed "$SDK/pip.log"; then
      "${pip[@]}" --break-system-packages "${REQUIREMENTS[@]}" ||
        die "pip install --target $PYLIB failed"
    else
      cat "$SDK/pip.log" >&2
      die "pip install --target $PYLIB failed"
    fi
  fi
  echo "$STAMP_TEXT" >"$PYLIB/.tollgate-stamp"
}

if setup_venv; then
  PY="$ROOT/$VENV/bin/python"
else
  setup_pylib
  PY=python3
  export PYTHONPATH="$ROOT/$PYLIB${PYTHONPATH:+:$PYTHONPATH}"
fi
"$PY" -c 'import openai, pytest' || die "the SDK environment is broken: delete $VENV and $PYLIB"
say "openai $("$PY" -c 'import openai; print(openai.__version__)') via $PY"

json_field() { "$PY" -c 'import json, sys; print(json.loads(sys.stdin.readline())[sys.argv[1]])' "$1"; }

# ---------------------------------------------------------------- 3. database
PSQL=$(find_psql)
if [ -z "${TOLLGATE_TEST_DATABASE_URL:-}" ]; then
  say "TOLLGATE_TEST_DATABASE_URL is unset: starting PostgreSQL under $PG_DIR"
  bash scripts/pg.sh destroy "$PG_DIR"
  OWN_PG=1
  started=0
  for attempt in 1 2 3; do
    pg_port=$(pick_port)
    if bash scripts/pg.sh start "$PG_DIR" "$pg_port"; then started=1; break; fi
  done
  [ "$started" = 1 ] || die "could not start PostgreSQL"
  ADMIN_URL="postgres://postgres@127.0.0.1:$pg_port/postgres"
else
  ADMIN_URL=$TOLLGATE_TEST_DATABASE_URL
fi
DB_NAME="tollgate_sdk_$(date +%s)_$$"
"$PSQL" "$ADMIN_URL" -qAt -v ON_ERROR_STOP=1 -c "CREATE DATABASE \"$DB_NAME\"" >/dev/null ||
  { DB_NAME=""; die "could not create a database at $ADMIN_URL"; }
# Same server, new database: replace the path, keep any ?query.
url_base=${ADMIN_URL%%\?*}
url_query=${ADMIN_URL#"$url_base"}
DATABASE_URL="${url_base%/*}/$DB_NAME$url_query"
export DATABASE_URL

# ---------------------------------------------------------------- 4. services
# A fresh JetStream store: events of earlier runs must not reach this database.
bash scripts/nats.sh stop "$NATS_DIR"
rm -rf "$NATS_DIR"
NATS_STARTED=1
started=0
for attempt in 1 2 3; do
  nats_port=$(pick_port)
  if bash scripts/nats.sh start "$NATS_DIR" "$nats_port"; then started=1; break; fi
  bash scripts/nats.sh stop "$NATS_DIR"
  rm -rf "$NATS_DIR"
done
[ "$started" = 1 ] || die "could not start nats-server"
export NATS_URL="nats://127.0.0.1:$nats_port"

: >"$MOCK_OUT"
"$MOCKS" >"$MOCK_OUT" 2>"$MOCK_LOG" </dev/null &
MOCK_PID=$!
for i in $(seq 1 100); do
  if [ -n "$(head -n 1 "$MOCK_OUT")" ]; then break; fi
  kill -0 "$MOCK_PID" 2>/dev/null || { cat "$MOCK_LOG" >&2; die "mock_providers exited"; }
  sleep 0.1
done
MOCK_LINE=$(head -n 1 "$MOCK_OUT")
[ -n "$MOCK_LINE" ] || die "mock_providers printed no URLs within 10 s"
export TOLLGATE_OPENAI_BASE_URL TOLLGATE_ANTHROPIC_BASE_URL TOLLGATE_GEMINI_BASE_URL TOLLGATE_XAI_BASE_URL
TOLLGATE_OPENAI_BASE_URL=$(json_field openai <<<"$MOCK_LINE")
TOLLGATE_ANTHROPIC_BASE_URL=$(json_field anthropic <<<"$MOCK_LINE")
TOLLGATE_GEMINI_BASE_URL=$(json_field gemini <<<"$MOCK_LINE")
TOLLGATE_XAI_BASE_URL=$(json_field xai <<<"$MOCK_LINE")

export TOLLGATE_LOG=${TOLLGATE_SDK_LOG:-warn}
unset TOLLGATE_LOG_FORMAT
export NO_COLOR=1   # plain text in tollgate.log
healthy() {
  "$PY" - "$1" <<'EOF' 2>/dev/null
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1] + "/healthz", timeout=1) as r:
    sys.exit(0 if r.status == 200 else 1)
EOF
}
started=0
for attempt in 1 2 3; do
  proxy_port=$(pick_port)
  ingest_port=$(pick_port)
  [ "$proxy_port" != "$ingest_port" ] || continue
  PROXY_URL="http://127.0.0.1:$proxy_port"
  INGEST_URL="http://127.0.0.1:$ingest_port"
  TOLLGATE_PROXY_ADDR="127.0.0.1:$proxy_port" TOLLGATE_INGEST_ADDR="127.0.0.1:$ingest_port" \
    "$TOLLGATE" serve >>"$LOG" 2>&1 </dev/null &
  TOLLGATE_PID=$!
  for i in $(seq 1 300); do
    if ! kill -0 "$TOLLGATE_PID" 2>/dev/null; then break; fi
    if healthy "$PROXY_URL" && healthy "$INGEST_URL"; then started=1; break; fi
    sleep 0.1
  done
  [ "$started" = 1 ] && break
  say "tollgate serve did not become healthy (attempt $attempt)"
  stop_pid "$TOLLGATE_PID"
  TOLLGATE_PID=""
done
[ "$started" = 1 ] || die "tollgate serve did not start (see $LOG)"
say "tollgate serving: proxy $PROXY_URL, ingest $INGEST_URL"

PROJECT_JSON=$("$TOLLGATE" project create --name sdk-test 2>>"$LOG")
PROJECT_KEY=$(json_field project_key <<<"$PROJECT_JSON")
SECRET_KEY=$(json_field secret_key <<<"$PROJECT_JSON")

PLAN="$SDK/plan.yaml"
cat >"$PLAN" <<'EOF'
default_tier: free
tiers:
  free:
    message: "Free plan limit reached: {{usage}}/{{limit}} {{unit}} per {{window}}. Upgrade!"
    deep_link: "myapp://upgrade"
    limits:
      - { unit: requests, window: day, cap: 100000 }
  tiny:
    message: "Free plan limit reached: {{usage}}/{{limit}} {{unit}} per {{window}}. Upgrade!"
    deep_link: "myapp://upgrade"
    limits:
      - { unit: requests, window: minute, cap: 2 }
  metered:
    limits:
      - { unit: usd, window: month, cap: "100" }
EOF
"$TOLLGATE" plans apply --project "$PROJECT_KEY" "$PLAN" >/dev/null 2>>"$LOG"
# A custom provider on a port nothing listens on yet: the test that needs it
# listens there itself, reads each request and hangs up.
HANGUP_PORT=$(pick_port)
"$TOLLGATE" providers add --project "$PROJECT_KEY" --name hangup \
  --base-url "http://127.0.0.1:$HANGUP_PORT/v1" >/dev/null 2>>"$LOG"

# ---------------------------------------------------------------- 5. pytest
export TOLLGATE_PROXY_URL=$PROXY_URL TOLLGATE_INGEST_URL=$INGEST_URL
export TOLLGATE_PROJECT_KEY=$PROJECT_KEY TOLLGATE_SECRET_KEY=$SECRET_KEY
export TOLLGATE_MOCK_INPUT_TOKENS=11 TOLLGATE_HANGUP_PORT=$HANGUP_PORT
status=0
"$PY" -m pytest -q -p no:cacheprovider tests/sdk/test_sdk.py "$@" || status=$?
exit "$status"
