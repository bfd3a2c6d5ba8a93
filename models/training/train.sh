#!/usr/bin/env bash
# One command: builds the pinned training environment (cached under $SWITCHBOARD_CACHE) and trains
# every head into models/registry/. Pass --quick for a smoke run on a small subset.
set -euo pipefail
cd "$(dirname "$0")/../.."
CACHE=${SWITCHBOARD_CACHE:-/var/tmp/switchboard}
scripts/setup.sh
VENV="$CACHE/train-venv"
if [ ! -f "$VENV/.req-$(sha256sum models/training/requirements.txt | cut -c1-16)" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q -r models/training/requirements.txt
  touch "$VENV/.req-$(sha256sum models/training/requirements.txt | cut -c1-16)"
fi
exec "$VENV/bin/python" models/training/train.py "$@"
