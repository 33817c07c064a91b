#!/usr/bin/env bash
# ferry's demo: a private MariaDB server with the project's OpenMRS fixture, capture
# installed, a clinic's workload written, and what an operator would look at.
# Everything lives under a temporary directory and is removed at the end
# (set FERRY_DEMO_KEEP=1 to keep it).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --quiet
ferry_bin="$(pwd)/target/debug/ferry"
work=$(mktemp -d /tmp/ferry-demo.XXXXXX)
sites=()

cleanup() {
  for s in "${sites[@]}"; do "$ferry_bin" dev mariadb stop --dir "$work/$s/db" || true; done
  if [ "${FERRY_DEMO_KEEP:-0}" = 1 ]; then echo "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
show() { printf '$ %s\n' "$*"; "$@"; }

# start_site NAME: a private MariaDB with the fixture loaded, and a node config for it;
# sets site_url. (Not called as $(start_site ...): in that subshell the server would
# not be added to sites, and the cleanup would leave it running.)
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
  site_url="mysql://root@127.0.0.1:$port/openmrs"
}

ferry_at() { local site=$1; shift; show "$ferry_bin" --config "$work/$site/ferry.toml" "$@"; }

say "two clinics, each with its own private MariaDB and the OpenMRS fixture"
start_site clinic-a
url_a=$site_url
start_site clinic-b
url_b=$site_url
echo "clinic-a: $url_a"
echo "clinic-b: $url_b"

say "each node has a keypair; peers trust each other's public key"
key_a=$("$ferry_bin" --config "$work/clinic-a/ferry.toml" key)
key_b=$("$ferry_bin" --config "$work/clinic-b/ferry.toml" key)
ferry_at clinic-a peer add clinic-b "$key_b"
ferry_at clinic-b peer add clinic-a "$key_a"

say "the sync plan ferry derives from the schema alone (clinic-a)"
ferry_at clinic-a plan | tail -12

say "installing capture on both (triggers and ferry_* tables; no OpenMRS table is altered)"
ferry_at clinic-a setup
ferry_at clinic-b setup

say "a week offline: each clinic registers patients and records visits, obs and orders"
show "$ferry_bin" dev gen --db "$url_a" --seed 11 --patients 60
show "$ferry_bin" dev gen --db "$url_b" --seed 22 --patients 40

say "each clinic seals its changes into a signed, encrypted bundle for the other"
ferry_at clinic-a export
ferry_at clinic-b export

stick="$work/usb-stick"
mkdir -p "$stick"
say "a driver carries a USB stick: both clinics copy their outbox onto it..."
ferry_at clinic-a send "$stick"
ferry_at clinic-b send "$stick"
ls -l "$stick"

say "...and each takes what is addressed to it, verified, into its inbox, then imports"
ferry_at clinic-a receive "$stick"
ferry_at clinic-b receive "$stick"
ferry_at clinic-a import
ferry_at clinic-b import

say "the acknowledgements travel back on the next trip (heartbeat bundles)"
ferry_at clinic-a export --heartbeat
ferry_at clinic-b export --heartbeat
ferry_at clinic-a send "$stick"
ferry_at clinic-b send "$stick"
ferry_at clinic-a receive "$stick"
ferry_at clinic-b receive "$stick"
ferry_at clinic-a import
ferry_at clinic-b import

say "status of both nodes"
ferry_at clinic-a status
ferry_at clinic-b status

say "proof of convergence: ferry verify prints identical bytes on both nodes"
"$ferry_bin" --config "$work/clinic-a/ferry.toml" verify --json > "$work/a.json"
"$ferry_bin" --config "$work/clinic-b/ferry.toml" verify --json > "$work/b.json"
ferry_at clinic-b verify --against "$work/a.json"
if cmp -s "$work/a.json" "$work/b.json"; then
  echo "clinic-a and clinic-b hold the same data: $(grep -m1 '"digest"' "$work/a.json")"
else
  echo "clinic-a and clinic-b differ" >&2
  exit 1
fi

say "done"
