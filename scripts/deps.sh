#!/usr/bin/env bash
#! Makes sure the servers the tests need are installed: nats-server and the
#! PostgreSQL server binaries (initdb, pg_ctl, postgres, pg_isready).
#!
#! Idempotent and quiet when everything is present. When something is missing:
#! as root, installs it with apt-get (Debian/Ubuntu packages `nats-server` and
#! `postgresql`); otherwise prints the exact command to run and exits 1.
#! Lookup rules match scripts/pg.sh, scripts/nats.sh and the testkit:
#! TOLLGATE_NATS_SERVER_BIN / PATH / /usr/sbin for nats-server, and
#! TOLLGATE_PG_BIN / /usr/lib/postgresql/*/bin / pg_config / PATH for PostgreSQL.
#! (Installing `postgresql` also creates the `postgres` OS user that pg.sh needs
#! as root, and Debian starts its own cluster on 5432, which we do not use.)
set -euo pipefail

have_nats() {
  if [ -n "${TOLLGATE_NATS_SERVER_BIN:-}" ]; then [ -x "$TOLLGATE_NATS_SERVER_BIN" ]; return; fi
  command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ]
}

have_pg() {
  local d
  if [ -n "${TOLLGATE_PG_BIN:-}" ]; then [ -x "$TOLLGATE_PG_BIN/initdb" ]; return; fi
  for d in /usr/lib/postgresql/*/bin; do
    if [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && [ -x "$d/pg_isready" ]; then return 0; fi
  done
  if command -v pg_config >/dev/null 2>&1; then
    d=$(pg_config --bindir 2>/dev/null || true)
    if [ -n "$d" ] && [ -x "$d/initdb" ]; then return 0; fi
  fi
  command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1
}

missing=()
have_nats || missing+=(nats-server)
have_pg || missing+=(postgresql)
[ ${#missing[@]} -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
  echo "deps.sh: missing ${missing[*]}; install them with your package manager" >&2
  echo "  (e.g. macOS: brew install nats-server postgresql@15)" >&2
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
