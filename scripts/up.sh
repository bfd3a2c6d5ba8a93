#!/usr/bin/env bash
# Runs Switchboard with its whole local stack on this machine: installs prerequisites (cached),
# builds, and starts `switchboard up` (broker, Postgres, ClickHouse, every role, the API on
# 127.0.0.1:8080) with all data under ./data. Ctrl-C stops everything cleanly.
set -euo pipefail
cd "$(dirname "$0")/.."
export SWITCHBOARD_CACHE=${SWITCHBOARD_CACHE:-/var/tmp/switchboard}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$SWITCHBOARD_CACHE/target}
scripts/setup.sh
cargo build --release --locked -q -p switchboard
exec "$CARGO_TARGET_DIR/release/switchboard" up "$@"
