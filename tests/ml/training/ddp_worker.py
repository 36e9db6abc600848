"""torchrun worker for the 2-process DDP test: trains the retriever warm-up on the tiny BERT.

    python -m torch.distributed.run --nproc_per_node=2 -m tests.ml.training.ddp_worker MODEL OUT [STOP]

With STOP the run stops after that many steps (test hook, as if killed); run again to resume
from OUT/state. Each rank writes OUT/rank<r>.pt (its weights) and OUT/rank<r>.json (what it saw).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from jrr_pipeline.ml.modeling import DenseRetriever, RetrieverConfig
from jrr_pipeline.ml.training import TrainConfig, train, world_info
from jrr_pipeline.ml.training.warmup import RetrievalExample, RetrieverWarmupTask

# fp32: the test compares DDP with one process to float precision, and bf16 autocast (on by
# default on a CPU with AVX512-BF16) rounds far more than that.
CONFIG = TrainConfig(max_steps=3, batch_size=8, lr=1e-3, warmup_ratio=0.0, seed=5, log_every=1,
                     checkpoint_every=1, bf16="off")
RETRIEVER = RetrieverConfig(query_max_length=8, passage_max_length=16)
WORDS = ["apple", "river", "music", "window", "garden", "doctor", "planet", "winter",
         "coffee", "bridge", "forest", "camera", "yellow", "engine", "silver", "market"]


def examples() -> list[RetrievalExample]:
    n = len(WORDS)
    return [
        RetrievalExample(w, f"{w} {w}", [f"{WORDS[(i + 5) % n]} x", f"{WORDS[(i + 9) % n]} y"])
        for i, w in enumerate(WORDS)
    ]


class RecordingTask(RetrieverWarmupTask):
    """Records each step's local batch size and logit width."""

    def __init__(self, retriever: DenseRetriever) -> None:
        super().__init__(retriever)
        self.seen: list[dict[str, float]] = []

    def loss(self, batch):
        loss, metrics = super().loss(batch)
        self.seen.append({"local_queries": len(batch), **metrics})
        return loss, metrics


def main() -> None:
    torch.set_num_threads(1)
    model_dir, out = sys.argv[1], Path(sys.argv[2])
    stop = int(sys.argv[3]) if len(sys.argv) > 3 else None
    task = RecordingTask(DenseRetriever.from_pretrained(model_dir, RETRIEVER))
    result = train(task, examples(), CONFIG, out / "model", state_dir=out / "state",
                   progress=False, stop_after_steps=stop)
    rank, world = world_info()
    torch.save(task.retriever.state_dict(), out / f"rank{rank}.pt")
    (out / f"rank{rank}.json").write_text(json.dumps({
        "world": world, "seen": task.seen, "step": result.step, "completed": result.completed,
        "resumed_from_step": result.resumed_from_step,
        "history": [[s, m] for s, m in result.history],
    }))


if __name__ == "__main__":
    main()
