"""The Python baseline for `switchboard bench models`: onnxruntime + tokenizers, the same encoder
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
cache = Path(os.environ.get("SWITCHBOARD_CACHE", "/var/tmp/switchboard")) / "models" / "minilm-l6-int8"
registry = Path(__file__).resolve().parents[1] / "registry"
tok = Tokenizer.from_file(str(cache / "tokenizer.json"))
tok.no_padding()
tok.enable_truncation(max_length=256)
opts = ort.SessionOptions()
opts.intra_op_num_threads = threads
enc = ort.InferenceSession(str(cache / "model.onnx"), opts, providers=["CPUExecutionProvider"])
heads = []
for name in ("category", "intent", "sentiment"):
    versions = sorted(p for p in (registry / name).iterdir() if (p / "manifest.json").exists())
    heads.append(ort.InferenceSession(str(versions[-1] / "model.onnx"), opts, providers=["CPUExecutionProvider"]))

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
