"""Small synthetic datasets written in the layouts the pipeline reads (generated, never committed)."""

from __future__ import annotations

import json
import random
from pathlib import Path

TOPICS = [
    "protein folding chaperone misfolded aggregate", "vaccine antibody immune response dose",
    "insulin glucose diabetes pancreas beta", "tumor chemotherapy metastasis oncology",
    "neuron synapse dopamine cortex plasticity", "bacteria antibiotic resistance microbial",
    "mutation genome sequencing variant allele", "cardiac heart artery blood pressure",
    "virus replication rna host infection", "stem cell differentiation embryo tissue",
    "obesity diet fat metabolism weight", "sleep circadian rhythm melatonin clock",
    "malaria parasite mosquito plasmodium", "asthma lung airway inflammation",
    "kidney renal filtration nephron", "bone osteoporosis calcium fracture",
    "liver hepatitis cirrhosis enzyme", "skin melanoma ultraviolet pigment",
    "retina vision photoreceptor eye", "muscle exercise fiber mitochondria",
]
FILLER = ["study", "results", "patients", "analysis", "effect", "observed", "significant", "data", "group", "cohort"]


def make_beir(root: Path, seed: int = 0, docs_per_topic: int = 4, queries_per_topic: int = 3) -> Path:
    """A BEIR-layout dataset: each query is relevant to the first doc of its topic (d{t}_0).

    Per topic, two queries go to train and the rest to test, so train and test never share a query.
    """
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "qrels").mkdir(exist_ok=True)
    docs, queries, train, test = [], [], [], []
    for t, topic in enumerate(TOPICS):
        words = topic.split()
        for d in range(docs_per_topic):
            # doc 0 holds every topic word (the positive); the others share two (hard negatives)
            own = words * 2 if d == 0 else rng.sample(words, 2)
            body = own + rng.sample(FILLER, 5) + rng.sample(TOPICS[(t + d + 1) % len(TOPICS)].split(), 2)
            rng.shuffle(body)
            docs.append({"_id": f"d{t}_{d}", "title": f"{words[0].title()} report {d}",
                         "text": " ".join(body)})
        for q in range(queries_per_topic):
            qid = f"q{t}_{q}"
            queries.append({"_id": qid, "text": " ".join(rng.sample(words, 3))})
            (train if q < 2 else test).append((qid, f"d{t}_0", 1))
    write_jsonl(root / "corpus.jsonl", docs)
    write_jsonl(root / "queries.jsonl", queries)
    write_qrels(root / "qrels" / "train.tsv", train)
    write_qrels(root / "qrels" / "test.tsv", test)
    return root


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def write_qrels(path: Path, rows: list[tuple[str, str, int]]) -> None:
    lines = ["query-id\tcorpus-id\tscore"] + [f"{q}\t{d}\t{s}" for q, d, s in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
