"""Two gloo processes: cross-batch InfoNCE equals one process over the concatenated batch."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from jrr_pipeline.ml.losses import InfoNCELoss, gather_with_grad

WORLD = 2
B, GROUP, H, SCALE = 3, 3, 8, 20.0  # 3 queries per rank, 1 positive + 2 negatives each


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, out_dir: str, q_all: torch.Tensor, p_all: torch.Tensor) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        q = q_all[rank * B : (rank + 1) * B].clone().requires_grad_()
        p = p_all[rank * B * GROUP : (rank + 1) * B * GROUP].clone().requires_grad_()
        loss_fn = InfoNCELoss(cross_batch=True)
        loss = loss_fn(q, p, SCALE)
        loss.backward()
        local = InfoNCELoss(cross_batch=False)(q.detach(), p.detach(), SCALE)

        t = torch.full((2, 3), float(rank), requires_grad=True)
        gathered = gather_with_grad(t)
        weights = torch.arange(gathered.numel(), dtype=torch.float32).reshape(gathered.shape)
        (gathered * weights).sum().backward()
        torch.save(
            {
                "loss": loss.detach(),
                "local_loss": local,
                "num_passages": loss_fn.last_num_passages,
                "q_grad": q.grad,
                "p_grad": p.grad,
                "gathered": gathered.detach(),
                "t_grad": t.grad,
            },
            Path(out_dir) / f"rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def test_cross_batch_infonce_matches_single_process(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(0)
    q_all = torch.nn.functional.normalize(torch.randn(WORLD * B, H, generator=gen), dim=1)
    p_all = torch.nn.functional.normalize(torch.randn(WORLD * B * GROUP, H, generator=gen), dim=1)

    mp.spawn(_worker, args=(_free_port(), str(tmp_path), q_all, p_all), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]

    q_ref = q_all.clone().requires_grad_()
    p_ref = p_all.clone().requires_grad_()
    ref = InfoNCELoss()(q_ref, p_ref, SCALE)
    ref.backward()

    # the mean of the per-rank losses is the loss over the whole batch
    mean_loss = torch.stack([r["loss"] for r in ranks]).mean()
    assert torch.allclose(mean_loss, ref.detach(), atol=1e-6)
    for rank, r in enumerate(ranks):
        assert r["num_passages"] == WORLD * B * GROUP
        assert not torch.isclose(r["loss"], r["local_loss"])  # the other rank's passages counted
        # DDP averages gradients over ranks, so each rank's local gradient is WORLD x the
        # single-process gradient of the same rows
        qs = slice(rank * B, (rank + 1) * B)
        ps = slice(rank * B * GROUP, (rank + 1) * B * GROUP)
        assert torch.allclose(r["q_grad"] / WORLD, q_ref.grad[qs], atol=1e-6)
        assert torch.allclose(r["p_grad"] / WORLD, p_ref.grad[ps], atol=1e-6)

        # plain gather: values of both ranks; gradient reaches the local shard, summed over ranks
        assert torch.equal(r["gathered"][:2], torch.zeros(2, 3))
        assert torch.equal(r["gathered"][2:], torch.ones(2, 3))
        weights = torch.arange(12, dtype=torch.float32).reshape(4, 3)
        assert torch.equal(r["t_grad"], WORLD * weights[rank * 2 : rank * 2 + 2])
