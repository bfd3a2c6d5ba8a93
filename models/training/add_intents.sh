#!/usr/bin/env bash
# Adds the post-purchase few-shot intents to the active intent head, one after the other, as
# one new registered version (VERSION, default 2026.12.02-pp), evaluated on the held-out
# examples under models/testsets/intents/. Intermediate versions are removed; the result is
# not activated (switchboard models activate intent VERSION).
set -euo pipefail
cd "$(dirname "$0")/../.."
VERSION=${1:-2026.12.02-pp}
BIN=${SWITCHBOARD_BIN:-switchboard}
REG=models/registry
declare -A CATEGORY=([return_item]=REFUND [exchange_item]=REFUND [damaged_item]=ORDER [wrong_item]=ORDER
  [missing_item]=ORDER [delivery_problem]=DELIVERY [thanks]=FEEDBACK)
ORIGINAL=$(python3 -c 'import json;print(json.load(open("models/registry/active.json"))["active"]["intent"])')
i=0
for name in return_item exchange_item damaged_item wrong_item missing_item delivery_problem thanks; do
  i=$((i + 1))
  v="$VERSION.step$i"
  [ "$i" = 7 ] && v="$VERSION"
  echo "== $name -> intent $v"
  "$BIN" models add-intent "$name" --examples "models/training/intents/$name.txt" \
    --category "${CATEGORY[$name]}" --held-out "models/testsets/intents/$name.txt" --version "$v" --activate
done
# Back to the original head; the steps go.
"$BIN" models activate intent "$ORIGINAL" >/dev/null
python3 - "$REG" "$ORIGINAL" <<'PY'
import json, sys
reg, original = sys.argv[1], sys.argv[2]
state = json.load(open(f"{reg}/active.json"))
state["active"]["intent"] = original
state["history"] = {}
json.dump(state, open(f"{reg}/active.json", "w"), indent=2)
PY
rm -rf "$REG"/intent/"$VERSION".step*
echo "registered intent $VERSION: switchboard models activate intent $VERSION"
