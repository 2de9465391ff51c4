#!/usr/bin/env bash
#! Makes sure what Tollgate needs is installed.
#!
#!   scripts/deps.sh          what `tollgate up` runs: nats-server and the PostgreSQL
#!                            server binaries (initdb, pg_ctl, postgres, pg_isready)
#!   scripts/deps.sh --test   the same, plus what scripts/test.sh needs: a C compiler
#!                            (`cc`; mimalloc and ring compile C code) and python3 with
#!                            venv for tests/sdk/run.sh (the OpenAI SDK is installed
#!                            into a venv; pip alone also does, see run.sh)
#!
#! Idempotent and quiet when everything is present. When something is missing:
#! as root, installs it with apt-get (Debian/Ubuntu packages `nats-server`,
#! `postgresql`, `build-essential`, `python3`, `python3-venv`); otherwise prints
#! the exact command to run and exits 1.
#! Lookup rules match scripts/pg.sh, scripts/nats.sh, tests/sdk/run.sh and the testkit:
#! TOLLGATE_NATS_SERVER_BIN / PATH / /usr/sbin for nats-server, and
#! TOLLGATE_PG_BIN / /usr/lib/postgresql/*/bin / pg_config / PATH for PostgreSQL;
#! the C compiler is $CC or `cc` on PATH.
#! (Installing `postgresql` also creates the `postgres` OS user that pg.sh needs
#! as root, and Debian starts its own cluster on 5432, which we do not use.)
set -euo pipefail

TEST=0
case "${1:-}" in
  "") ;;
  --test) TEST=1 ;;
  *) echo "usage: deps.sh [--test]" >&2; exit 2 ;;
esac

have_nats() {
  if [ -n "${TOLLGATE_NATS_SERVER_BIN:-}" ]; then [ -x "$TOLLGATE_NATS_SERVER_BIN" ]; return; fi
  command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ]
}

have_pg() {
  local d
  if [ -n "${TOLLGATE_PG_BIN:-}" ]; then [ -x "$TOLLGATE_PG_BIN/initdb" ]; return; fi
  for d in /usr/lib/postgresql/*/bin; do
    if [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && [ -x "$d/postgres" ] && [ -x "$d/pg_isready" ]; then return 0; fi
  done
  if command -v pg_config >/dev/null 2>&1; then
    d=$(pg_config --bindir 2>/dev/null || true)
    if [ -n "$d" ] && [ -x "$d/initdb" ]; then return 0; fi
  fi
  command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1
}

# What the cc crate (used by mimalloc and ring) runs: $CC, else `cc`.
have_cc() {
  local cc=${CC:-cc}
  command -v "${cc%% *}" >/dev/null 2>&1
}

have_python3() { command -v python3 >/dev/null 2>&1; }

# tests/sdk/run.sh makes a venv (Debian ships `ensurepip`, which venv needs, in
# python3-venv), or failing that installs with pip --target.
have_python_env() {
  python3 -c 'import ensurepip, venv' >/dev/null 2>&1 ||
    python3 -m pip --version >/dev/null 2>&1
}

missing=()
have_nats || missing+=(nats-server)
have_pg || missing+=(postgresql)
if [ "$TEST" -eq 1 ]; then
  have_cc || missing+=(build-essential)
  if ! have_python3; then
    missing+=(python3 python3-venv)
  elif ! have_python_env; then
    missing+=(python3-venv)
  fi
fi
[ ${#missing[@]} -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
  echo "deps.sh: missing ${missing[*]} (Debian package names); install them with your package manager" >&2
  echo "  (e.g. macOS: brew install nats-server postgresql@15 python; xcode-select --install for cc)" >&2
  exit 1
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "deps.sh: missing ${missing[*]}; run:" >&2
  echo "  sudo apt-get update && sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
  exit 1
fi

echo "deps.sh: installing ${missing[*]} with apt-get" >&2
export DEBIAN_FRONTEND=noninteractive
log=$(mktemp)
if ! { apt-get update -q && apt-get install -y -q --no-install-recommends "${missing[@]}"; } >"$log" 2>&1; then
  tail -n 40 "$log" >&2
  rm -f "$log"
  echo "deps.sh: apt-get failed" >&2
  exit 1
fi
rm -f "$log"

have_nats || { echo "deps.sh: nats-server still not found after install" >&2; exit 1; }
have_pg || { echo "deps.sh: PostgreSQL server binaries still not found after install" >&2; exit 1; }
if [ "$TEST" -eq 1 ]; then
  have_cc || { echo "deps.sh: no C compiler (${CC:-cc}) after installing build-essential" >&2; exit 1; }
  have_python3 || { echo "deps.sh: python3 still not found after install" >&2; exit 1; }
  have_python_env || { echo "deps.sh: python3 can neither make a venv nor run pip after installing python3-venv" >&2; exit 1; }
fi
