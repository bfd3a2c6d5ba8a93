#!/usr/bin/env bash
# Runs the whole test suite on a fresh or warm machine: installs prerequisites, checks formatting
# and lints, builds, starts real services (tansu, Postgres, ClickHouse) on private ports under a
# temporary directory, runs every test against them, and stops them again.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
export SWITCHBOARD_CACHE=${SWITCHBOARD_CACHE:-/var/tmp/switchboard}
# Build output lives outside the clone so a warm machine rebuilds only what changed.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$SWITCHBOARD_CACHE/target}
export CARGO_TERM_COLOR=never
log() { printf '[test %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

scripts/setup.sh

log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -q -- -D warnings
log "arroyo udfs (own workspace): fmt, clippy, tests through the FFI entry point"
(
  cd udfs
  export CARGO_TARGET_DIR="$SWITCHBOARD_CACHE/udf-target"
  cargo fmt --all -- --check
  cargo clippy --all-targets --locked -q -- -D warnings
  cargo test --locked -q
)
log "console: component tests (vitest)"
(cd console && npx --no-install vitest run --reporter=dot)
log "fuzz targets (own workspace): fmt, and every corpus input replayed through the targets"
cargo fmt --manifest-path fuzz/Cargo.toml --all -- --check
cargo test --manifest-path fuzz/Cargo.toml --locked -q
log "building"
cargo build --workspace --all-targets --locked -q
log "validating the published OpenAPI document (openapi-spec-validator)"
"$CARGO_TARGET_DIR/debug/switchboard" openapi >"$CARGO_TARGET_DIR/openapi.json"
"$SWITCHBOARD_CACHE/openapi-venv/bin/openapi-spec-validator" "$CARGO_TARGET_DIR/openapi.json"
log "console: its API types are the published document's (console/src/api/schema.d.ts)"
(cd console && npx --no-install openapi-typescript "$CARGO_TARGET_DIR/openapi.json" -o "$CARGO_TARGET_DIR/console-schema.d.ts" >/dev/null 2>&1)
cmp -s console/src/api/schema.d.ts "$CARGO_TARGET_DIR/console-schema.d.ts" \
  || { log "console/src/api/schema.d.ts is stale: (cd console && OPENAPI=<switchboard openapi output> npm run schema)"; exit 1; }

RUN=$(mktemp -d /tmp/switchboard-test.XXXXXX)
chmod 755 "$RUN"
cat >"$RUN/pipelines.yaml" <<YAML
version: 1
data_dir: $RUN/data
services:
  kafka: { embedded_port: 39092 }
  postgres: { embedded_port: 35432 }
  clickhouse: { embedded_http_port: 38123, embedded_tcp_port: 39000 }
YAML
log "starting test services under $RUN"
"$CARGO_TARGET_DIR/debug/switchboard" --config "$RUN/pipelines.yaml" services --env-file "$RUN/env" >"$RUN/services.log" 2>&1 &
SERVICES=$!
cleanup() {
  kill -TERM "$SERVICES" 2>/dev/null || true
  wait "$SERVICES" 2>/dev/null || true
  rm -rf "$RUN"
}
trap cleanup EXIT
for _ in $(seq 1 120); do
  [ -f "$RUN/env" ] && break
  kill -0 "$SERVICES" 2>/dev/null || { cat "$RUN/services.log"; exit 1; }
  sleep 0.5
done
[ -f "$RUN/env" ] || { log "services did not start"; cat "$RUN/services.log"; exit 1; }
# shellcheck disable=SC1091
source "$RUN/env"
export SWITCHBOARD_TEST_SERVICES=1 SWITCHBOARD_REPO="$ROOT"

# What the shared services said, printed when a test failed: a failure that several tests share
# (a broker refusing records, say) is the broker's, and its log goes with the temporary directory.
services_digest() {
  log "the services' own log (last 40 lines, without the environment it exports)"
  grep -v '^export ' "$RUN/services.log" | sed -E 's#://([^:/@]+):[^@]*@#://\1:***@#g' | tail -n 40 || true
  for f in "$RUN"/data/logs/*.log; do
    [ -f "$f" ] || continue
    log "$(basename "$f"): warnings and errors, most frequent first (colour and timestamps removed)"
    sed 's/\x1b\[[0-9;]*m//g' "$f" | grep -E 'ERROR|WARN|PANIC|FATAL|panicked' \
      | grep -v 'TopicAlreadyExists' | sed -E 's/^[0-9-]+[ T][0-9:.]+(Z| UTC)? *//; s/\[[0-9]+\] //' | cut -c1-300 \
      | sort | uniq -c | sort -rn | head -n 25 || true
  done
}

log "running tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast --test-threads 2 || { services_digest; exit 1; }
  cargo test --workspace --doc --locked -q
else
  cargo test --workspace --locked --no-fail-fast -- --test-threads 2 || { services_digest; exit 1; }
fi
log "all tests passed"
