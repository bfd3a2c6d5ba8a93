#!/usr/bin/env bash
# What an idle `switchboard up` costs: starts the whole embedded stack on private ports under a
# temporary directory, waits for /readyz and 20 s of settling, then samples the CPU time of the
# embedded broker (tansu) and of switchboard itself over 20 s from /proc and prints it as a share
# of one core. Compare brokers or settings side by side in one run, e.g.
#   scripts/bench-idle.sh target/release/switchboard
#   SWITCHBOARD_TANSU_BIN=/path/to/stock/tansu scripts/bench-idle.sh target/release/switchboard \
#     SWITCHBOARD__SERVICES__KAFKA__FETCH_WAIT_MS=25
# usage: bench-idle.sh SWITCHBOARD_BIN [NAME=VALUE...]   (SAMPLE_SECS, default 20)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$(realpath "$1"); shift
SAMPLE=${SAMPLE_SECS:-20}
D=$(mktemp -d /var/tmp/switchboard-idle.XXXX)
chmod 755 "$D" # the embedded Postgres runs as its own user and reads its files here
export SWITCHBOARD__DATA_DIR=$D SWITCHBOARD__HTTP__LISTEN=127.0.0.1:18480 \
  SWITCHBOARD__SERVICES__KAFKA__EMBEDDED_PORT=19492 \
  SWITCHBOARD__SERVICES__POSTGRES__EMBEDDED_PORT=15439 \
  SWITCHBOARD__SERVICES__CLICKHOUSE__EMBEDDED_HTTP_PORT=18133 \
  SWITCHBOARD__SERVICES__CLICKHOUSE__EMBEDDED_TCP_PORT=19010
for kv in "$@"; do export "${kv?}"; done
"$BIN" --config pipelines.yaml up >"$D/up.log" 2>&1 &
UP=$!
cleanup() { kill -INT "$UP" 2>/dev/null && wait "$UP" 2>/dev/null; rm -rf "$D"; }
trap cleanup EXIT
echo "waiting for /readyz (log: $D/up.log)"
for _ in $(seq 1 300); do
  curl -sf http://127.0.0.1:18480/readyz >/dev/null && break
  kill -0 "$UP" 2>/dev/null || { tail -20 "$D/up.log"; exit 1; }
  sleep 1
done
curl -sf http://127.0.0.1:18480/readyz >/dev/null || { echo "not ready"; tail -20 "$D/up.log"; exit 1; }
sleep 20
TANSU=$(pgrep -f "tansu.*19492" | head -1)
TICK=$(getconf CLK_TCK)
cpu() { awk '{print $14+$15}' "/proc/$1/stat"; }
a=$(cpu "$TANSU"); b=$(cpu "$UP"); t0=$(date +%s.%N)
sleep "$SAMPLE"
a2=$(cpu "$TANSU"); b2=$(cpu "$UP"); t1=$(date +%s.%N)
python3 -c "
el = $t1 - $t0
print(f'idle for {el:.1f} s: broker (tansu) {($a2 - $a) / $TICK / el * 100:.1f}% of a core, switchboard {($b2 - $b) / $TICK / el * 100:.1f}%')"
