"""GradCache gives the plain step's gradients on a tiny retriever (dropout included)."""

from __future__ import annotations

import pytest
import torch

from jrr_pipeline.ml.losses import InfoNCELoss
from jrr_pipeline.ml.modeling import DenseRetriever, RetrieverConfig
from jrr_pipeline.ml.training.gradcache import Encoder, chunked, grad_cache_backward

QUERIES = ["red apples", "deep rivers", "loud music", "open window", "green garden", "old doctor"]
PASSAGES = [t for q in QUERIES for t in (f"about {q} and more", f"nothing on {q[::-1]}")]


def model(tiny_model_dir) -> DenseRetriever:
    torch.manual_seed(0)
    config = RetrieverConfig(base_model=str(tiny_model_dir), query_max_length=12,
                             passage_max_length=16)
    return DenseRetriever.from_pretrained(str(tiny_model_dir), config)


def encoders(r: DenseRetriever, q_chunk: int, p_chunk: int) -> list[Encoder]:
    return [Encoder(lambda t: r.encode_queries(r.tokenize_queries(list(t))), chunked(QUERIES, q_chunk)),
            Encoder(lambda t: r.encode_passages(r.tokenize_passages(list(t))), chunked(PASSAGES, p_chunk))]


def grads(r: DenseRetriever) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in r.named_parameters() if p.grad is not None}


def loss_fn(reps):
    return InfoNCELoss(cross_batch=False)(reps[0], reps[1], 20.0)


def test_same_gradients_as_the_plain_step_without_dropout(tiny_model_dir):
    r = model(tiny_model_dir).eval()
    plain_loss = loss_fn([e.fn(list(QUERIES if i == 0 else PASSAGES)) for i, e in
                          enumerate(encoders(r, 6, 12))])
    plain_loss.backward()
    plain = grads(r)
    r.zero_grad(set_to_none=True)
    cached_loss = grad_cache_backward(encoders(r, 2, 3), loss_fn)
    cached = grads(r)
    assert cached_loss.item() == pytest.approx(plain_loss.item(), rel=1e-5)
    assert plain.keys() == cached.keys() and len(plain) > 10
    for name in plain:
        torch.testing.assert_close(cached[name], plain[name], rtol=1e-4, atol=1e-6, msg=name)


def test_dropout_masks_are_replayed(tiny_model_dir):
    r = model(tiny_model_dir).train()
    with torch.no_grad():  # dropout is active: the replay is what makes the gradients match
        once, twice = (r.encode_queries(r.tokenize_queries(QUERIES[:2])) for _ in range(2))
    assert not torch.allclose(once, twice)
    torch.manual_seed(5)
    encs = encoders(r, 2, 4)
    reps = [torch.cat([e.fn(c) for c in e.chunks]) for e in encs]  # chunked, with graph
    loss_fn(reps).backward()
    reference = grads(r)
    after_reference = torch.rand(1)
    r.zero_grad(set_to_none=True)
    torch.manual_seed(5)
    grad_cache_backward(encoders(r, 2, 4), loss_fn)
    assert torch.rand(1).item() == after_reference.item()  # the random stream continues alike
    for name, g in grads(r).items():
        torch.testing.assert_close(g, reference[name], rtol=1e-4, atol=1e-6, msg=name)


def test_chunk_size_must_be_positive():
    with pytest.raises(ValueError):
        chunked([1, 2], 0)
