#!/usr/bin/env bash
# ferry's demo: a private MariaDB server with the project's OpenMRS fixture, capture
# installed, a clinic's workload written, and what an operator would look at.
# Everything lives under a temporary directory and is removed at the end
# (set FERRY_DEMO_KEEP=1 to keep it).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --quiet
ferry_bin="$(pwd)/target/release/ferry"
work=$(mktemp -d /tmp/ferry-demo.XXXXXX)
sites=()

cleanup() {
  for s in "${sites[@]}"; do "$ferry_bin" dev mariadb stop --dir "$work/$s/db" || true; done
  if [ "${FERRY_DEMO_KEEP:-0}" = 1 ]; then echo "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
show() { printf '$ %s\n' "$*"; "$@"; }

# start_site NAME: a private MariaDB with the fixture loaded, and a node config for it.
start_site() {
  local name=$1
  mkdir -p "$work/$name"
  local port
  port=$("$ferry_bin" dev mariadb start --dir "$work/$name/db")
  sites+=("$name")
  mariadb --no-defaults --protocol=tcp -h127.0.0.1 -P"$port" -uroot \
    -e "CREATE DATABASE openmrs CHARACTER SET utf8mb4"
  for f in fixtures/openmrs/schema.sql fixtures/openmrs/metadata.sql; do
    mariadb --no-defaults --protocol=tcp -h127.0.0.1 -P"$port" -uroot openmrs < "$f"
  done
  "$ferry_bin" --config "$work/$name/ferry.toml" init \
    --db "mysql://root@127.0.0.1:$port/openmrs" --node "$name" >/dev/null
  echo "mysql://root@127.0.0.1:$port/openmrs"
}

ferry_at() { local site=$1; shift; show "$ferry_bin" --config "$work/$site/ferry.toml" "$@"; }

say "starting a private MariaDB for clinic-a and loading the OpenMRS fixture"
url_a=$(start_site clinic-a)
echo "clinic-a: $url_a"

say "the sync plan ferry derives from the schema alone"
ferry_at clinic-a plan

say "installing capture (triggers and ferry_* tables; no OpenMRS table is altered)"
ferry_at clinic-a setup

say "a clinic day: registrations, visits, encounters with obs, orders, edits"
show "$ferry_bin" dev gen --db "$url_a" --seed 1 --patients 200

say "what ferry captured"
ferry_at clinic-a status
ferry_at clinic-a tables | head -15

say "switching capture off for one table, and on again"
ferry_at clinic-a tables disable obs
ferry_at clinic-a tables enable obs

say "done"
