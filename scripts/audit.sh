#!/usr/bin/env bash
# Audit Cargo.lock offline against the vendored RustSec advisory database
# (scripts/rustsec-advisory-db-*.tgz, a snapshot of the CC0 database).
# Ignored advisories and their reasons: .cargo/audit.toml.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo-audit >/dev/null 2>&1; then
  echo "installing cargo-audit (several minutes)"
  cargo install --locked cargo-audit
fi

db_tgz=$(ls scripts/rustsec-advisory-db-*.tgz | tail -n 1)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/advisory-db"
tar -xzf "$db_tgz" -C "$tmp/advisory-db"

echo "== cargo audit against $(basename "$db_tgz")"
cargo audit --db "$tmp/advisory-db" --no-fetch --stale --deny warnings
