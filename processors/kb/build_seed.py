"""Builds processors/kb/articles.jsonl, the knowledge base seed, from the Bitext LLM dataset
(../shared/data/bitext/bitext_llm_v2023-09_4514.csv, CDLA-Sharing-1.0).

One article per (intent, answer): for each intent the three longest distinct answers whose
question has no order number or other entity, so the answer reads as a general article.
Deterministic: run it again and the file is identical.

    python3 processors/kb/build_seed.py ../shared/data/bitext/bitext_llm_v2023-09_4514.csv
"""
import csv
import json
import sys
import uuid
from collections import defaultdict
from pathlib import Path

NS = uuid.UUID("6f1c1d4e-7c55-4c8e-9a51-0a3f1f1b2a77")
PER_INTENT = 3


def main(src: str) -> None:
    by_intent = defaultdict(list)
    seen = set()
    with open(src, newline="", encoding="utf-8-sig") as f:
        for row in csv.DictReader(f):
            answer = row["response"].strip()
            question = row["instruction"].strip()
            if row["entity_type"] or not answer or answer.lower() in seen:
                continue
            seen.add(answer.lower())
            by_intent[row["intent"]].append((row["category"], question, answer))
    out = Path(__file__).with_name("articles.jsonl")
    n = 0
    with open(out, "w", encoding="utf-8") as f:
        for intent in sorted(by_intent):
            rows = sorted(by_intent[intent], key=lambda r: (-len(r[2]), r[1]))[:PER_INTENT]
            for i, (category, question, answer) in enumerate(rows):
                title = intent.replace("_", " ").capitalize()
                art = {
                    "id": str(uuid.uuid5(NS, f"{intent}:{answer}")),
                    "title": title,
                    "category": category.lower(),
                    "intent": intent,
                    "question": question,
                    "body": answer,
                    "source": "bitext_llm_v2023-09_4514 (CDLA-Sharing-1.0)",
                }
                f.write(json.dumps(art, ensure_ascii=False) + "\n")
                n += 1
    print(f"wrote {n} articles for {len(by_intent)} intents to {out}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/bitext/bitext_llm_v2023-09_4514.csv")
