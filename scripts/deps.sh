#!/usr/bin/env bash
# Installs what ferry's demo and tests need on a Debian machine: MariaDB's server and
# client (mariadbd, mariadb-install-db, mariadb, mariadb-dump) and zstd. Rust must
# already be there. Needs root (or sudo) only when something is missing.
set -euo pipefail

have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/usr/bin/$1" ]; }

missing=()
have mariadbd || missing+=(mariadb-server)
have mariadb || missing+=(mariadb-client)
have mariadb-dump || missing+=(mariadb-client)
have zstd || missing+=(zstd)

if ! command -v cargo >/dev/null 2>&1; then
  echo "error: cargo not found" >&2
  echo "hint: install Rust (https://rustup.rs) and open a new shell" >&2
  exit 1
fi

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

pkgs=$(printf '%s\n' "${missing[@]}" | sort -u | tr '\n' ' ')
if [ "$(id -u)" -eq 0 ]; then
  sudo=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  sudo="sudo"
else
  echo "error: missing packages: $pkgs" >&2
  echo "hint: run 'sudo apt-get install -y $pkgs' (or run this as root), then try again" >&2
  exit 1
fi
echo "installing $pkgs" >&2
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -q >/dev/null
# policy-rc.d keeps Debian from starting the system MariaDB service: ferry starts its own.
$sudo apt-get install -y -q --no-install-recommends $pkgs >/dev/null
