"""The Python baseline for `switchboard-sim bench models`: onnxruntime + tokenizers, the same encoder
and pooling, and the heads. Prints texts/s."""
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

texts = Path(sys.argv[1]).read_text(encoding="utf-8").split("\n")
batch = int(sys.argv[2])
threads = int(sys.argv[3])
cache = os.environ.get("SWITCHBOARD_CACHE", "/var/tmp/switchboard")
registry = Path(__file__).resolve().parents[1] / "registry"
# The active set, as the Rust runtime sees it.
state = registry / "active.json"
active = json.loads(state.read_text())["active"] if state.exists() else json.loads((registry / "defaults.json").read_text())


def file_of(name, fname):
    d = registry / name / active[name]
    spec = json.loads((d / "manifest.json").read_text())["files"][fname]
    return Path(spec["path"].replace("${SWITCHBOARD_CACHE}", cache)) if spec.get("path") else d / fname


tok = Tokenizer.from_file(str(file_of("encoder", "tokenizer.json")))
tok.no_padding()
tok.enable_truncation(max_length=256)
opts = ort.SessionOptions()
opts.intra_op_num_threads = threads
enc = ort.InferenceSession(str(file_of("encoder", "model.onnx")), opts, providers=["CPUExecutionProvider"])
heads = [ort.InferenceSession(str(file_of(n, "model.onnx")), opts, providers=["CPUExecutionProvider"]) for n in ("category", "intent", "sentiment")]

started = time.time()
for s in range(0, len(texts), batch):
    chunk = texts[s : s + batch]
    e = tok.encode_batch(chunk)
    n = max(len(x.ids) for x in e)
    ids = np.zeros((len(chunk), n), dtype=np.int64)
    mask = np.zeros((len(chunk), n), dtype=np.int64)
    for r, x in enumerate(e):
        ids[r, : len(x.ids)] = x.ids
        mask[r, : len(x.ids)] = 1
    hidden = enc.run(None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})[0]
    m = mask[:, :, None].astype(np.float32)
    pooled = (hidden * m).sum(1) / np.clip(m.sum(1), 1e-9, None)
    pooled /= np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
    for h in heads:
        h.run(None, {"embedding": pooled.astype(np.float32)})
print(f"{len(texts) / (time.time() - started):.1f}")
