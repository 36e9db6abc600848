"""A tiny learnable regression task (MLP with LayerNorm and dropout) for the loop's tests.

Dropout makes the torch RNG matter, so resume tests also check that RNG states are restored.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import Tensor, nn


def make_examples(n: int = 40, seed: int = 0) -> list[tuple[list[float], float]]:
    """(x, y) pairs with y a fixed nonlinear function of x."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=gen)
    y = torch.sin(x[:, 0]) + 0.5 * x[:, 1] * x[:, 2] - x[:, 3]
    return [(row.tolist(), float(t)) for row, t in zip(x, y, strict=True)]


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(4, 32), nn.LayerNorm(32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 1)
    )


class ToyTask:
    """MSE regression; `sleep_s` slows each step down (for the SIGKILL test)."""

    def __init__(self, model: nn.Module, sleep_s: float = 0.0) -> None:
        self.model = model
        self.sleep_s = sleep_s
        self.batch_sizes: list[int] = []

    def modules(self) -> dict[str, nn.Module]:
        return {"mlp": self.model}

    def loss(self, batch: list) -> tuple[Tensor, dict[str, float]]:
        if self.sleep_s:
            time.sleep(self.sleep_s)
        self.batch_sizes.append(len(batch))
        x = torch.tensor([b[0] for b in batch])
        y = torch.tensor([b[1] for b in batch])
        pred = self.model(x).squeeze(-1)
        return nn.functional.mse_loss(pred, y), {"batch": float(len(batch))}

    def save(self, output_dir: Path) -> None:
        Path(output_dir).mkdir(parents=True)
        torch.save(self.model.state_dict(), Path(output_dir) / "mlp.pt")


def eval_loss(model: nn.Module, examples: list) -> float:
    model.eval()
    with torch.no_grad():
        x = torch.tensor([b[0] for b in examples])
        y = torch.tensor([b[1] for b in examples])
        loss = float(nn.functional.mse_loss(model(x).squeeze(-1), y))
    model.train()
    return loss
