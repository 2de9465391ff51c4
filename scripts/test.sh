#!/usr/bin/env bash
#! The project's test command (the README points here): `bash scripts/test.sh [cargo test args]`.
#!
#! 1. `scripts/deps.sh --test` makes sure nats-server, PostgreSQL, a C compiler and
#!    python3 with venv (for step 4) are installed.
#! 2. A fresh private PostgreSQL cluster starts under ./.tollgate/test/pg on a
#!    free port; TOLLGATE_TEST_DATABASE_URL points the testkit at it (each test
#!    then creates its own throw-away database there). The cluster is destroyed
#!    on exit (set TOLLGATE_KEEP_TEST_PG=1 to only stop it and keep the data).
#! 3. `cargo test --workspace --all-targets --no-fail-fast` (extra arguments are passed on).
#!    Tests start their own nats-server per test through the testkit.
#! 4. tests/sdk/run.sh, if it exists.
#! Exits non-zero if any step fails; steps 3 and 4 both run either way.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/deps.sh --test

# A clean build of every test binary writes about 4.5 GB under target/; a
# full disk shows up minutes later as a linker's "No space left on device".
target_dir=${CARGO_TARGET_DIR:-target}
mkdir -p "$target_dir"
free_kb=$(df -Pk "$target_dir" 2>/dev/null | awk 'NR == 2 { print $4 }') || free_kb="" # only a warning
if [ -n "$free_kb" ] && [ "$free_kb" -lt $((6 * 1024 * 1024)) ]; then
  echo "test.sh: warning: only $((free_kb / 1024)) MB free under $target_dir; a clean test build needs about 4.5 GB" >&2
fi

PG_DIR=.tollgate/test/pg

# Random port in 20000-31999: below Linux's ephemeral range (32768+), so it
# does not collide with the port-0 ports the tests bind themselves.
pick_port() {
  local p i
  for i in $(seq 1 50); do
    p=$((20000 + (RANDOM * 32768 + RANDOM) % 12000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return 0; fi
  done
  echo "test.sh: no free port found" >&2
  return 1
}

cleanup() {
  if [ "${TOLLGATE_KEEP_TEST_PG:-0}" = 1 ]; then
    bash scripts/pg.sh stop "$PG_DIR" || true
  else
    bash scripts/pg.sh destroy "$PG_DIR" || true
  fi
}

# Start from an empty cluster: databases left by an earlier run are not wanted.
bash scripts/pg.sh destroy "$PG_DIR"
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

started=0
for attempt in 1 2 3; do
  port=$(pick_port)
  if bash scripts/pg.sh start "$PG_DIR" "$port"; then started=1; break; fi
  echo "test.sh: PostgreSQL did not start on port $port (attempt $attempt)" >&2
done
[ "$started" = 1 ] || { echo "test.sh: could not start PostgreSQL" >&2; exit 1; }
export TOLLGATE_TEST_DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres"
echo "test.sh: PostgreSQL ready at $TOLLGATE_TEST_DATABASE_URL" >&2

status=0
# --no-fail-fast: one failing test binary must not hide the others.
cargo test --workspace --all-targets --no-fail-fast "$@" || status=$?

if [ -f tests/sdk/run.sh ]; then
  bash tests/sdk/run.sh || status=$?
fi

if [ "$status" -ne 0 ]; then echo "test.sh: FAILED (exit $status)" >&2; fi
exit "$status"
