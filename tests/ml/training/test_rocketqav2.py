"""RocketQAv2 joint training on a tiny BERT: both models learn (dynamic), the teacher stays fixed
(static), separate learning rates reach each model, lists are built from the candidates table."""

from __future__ import annotations

import polars as pl
import pytest
import torch

from jrr_pipeline.ml.modeling import (
    CrossEncoderReranker,
    DenseRetriever,
    RerankerConfig,
    RetrieverConfig,
)
from jrr_pipeline.ml.training import TrainConfig, train
from jrr_pipeline.ml.training.lists import (
    CandidateList,
    build_candidate_lists,
    in_batch_positive_mask,
    own_list_scores,
)
from jrr_pipeline.ml.training.rocketqav2 import RocketQAv2Task

WORDS = ["apple", "river", "music", "window", "garden", "doctor", "planet", "winter"]
OTHERS = ["stone", "cloud", "paper", "glass", "metal", "sugar"]


def lists(length: int = 4) -> list[CandidateList]:
    return [CandidateList(w, (f"{w} {w} {w}", *(f"{o} {o}" for o in
                                                  [OTHERS[(i + k) % len(OTHERS)] for k in range(length - 1)])))
            for i, w in enumerate(WORDS)]


def models(tiny_model_dir):
    torch.manual_seed(0)
    retriever = DenseRetriever.from_pretrained(
        str(tiny_model_dir), RetrieverConfig(query_max_length=8, passage_max_length=12))
    reranker = CrossEncoderReranker.from_pretrained(str(tiny_model_dir), RerankerConfig(max_length=20))
    return retriever, reranker


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(before: dict, module: torch.nn.Module) -> bool:
    return any(not torch.equal(before[k], v) for k, v in module.state_dict().items())


def eval_loss(task, batch) -> tuple[float, float]:
    for m in (task.retriever, task.reranker):
        m.eval()
    with torch.no_grad():
        _, metrics = task.loss(batch)
    return metrics["kl"], metrics["ce_loss"]


def test_dynamic_joint_training_trains_both_and_saves_both(tiny_model_dir, tmp_path):
    retriever, reranker = models(tiny_model_dir)
    task = RocketQAv2Task(retriever, reranker, mode="dynamic")
    r0, c0 = snapshot(retriever), snapshot(reranker)
    data = lists()
    _, ce_before = eval_loss(task, data)
    cfg = TrainConfig(epochs=12, batch_size=4, lr=3e-3, warmup_ratio=0.1, seed=0, log_every=4,
                      head_lr_multiplier=3.0)
    result = train(task, data, cfg, tmp_path / "joint", progress=False)
    _, ce_after = eval_loss(task, data)
    assert changed(r0, retriever) and changed(c0, reranker)
    assert ce_after < 0.5 * ce_before, (ce_before, ce_after)
    assert {"kl", "ce_loss", "retriever_acc", "reranker_acc"} <= set(result.history[-1][1])
    # the saved folders hold the trained models: same embeddings and scores on the same inputs
    saved_retriever = DenseRetriever.from_pretrained(str(tmp_path / "joint" / "retriever"))
    texts = [lst.passages[0] for lst in data[:3]]
    for kind in ("query", "passage"):
        assert torch.allclose(torch.from_numpy(saved_retriever.embed(texts, kind)),
                              torch.from_numpy(retriever.embed(texts, kind)), atol=1e-6), kind
    saved_reranker = CrossEncoderReranker.from_pretrained(str(tmp_path / "joint" / "reranker"))
    pairs = [(lst.query, passage) for lst in data[:3] for passage in lst.passages]
    assert torch.allclose(torch.from_numpy(saved_reranker.predict(pairs)),
                          torch.from_numpy(reranker.predict(pairs)), atol=1e-6)


def test_static_distillation_leaves_the_teacher_untouched(tiny_model_dir, tmp_path):
    retriever, reranker = models(tiny_model_dir)
    task = RocketQAv2Task(retriever, reranker, mode="static")
    assert set(task.modules()) == {"retriever"}
    r0, c0 = snapshot(retriever), snapshot(reranker)
    kl_before, _ = eval_loss(task, lists())
    cfg = TrainConfig(epochs=8, batch_size=4, lr=3e-3, seed=0, log_every=4)
    train(task, lists(), cfg, tmp_path / "static", progress=False)
    kl_after, _ = eval_loss(task, lists())
    assert changed(r0, retriever) and not changed(c0, reranker)
    assert kl_after < kl_before


def test_separate_learning_rates(tiny_model_dir, tmp_path):
    retriever, reranker = models(tiny_model_dir)
    task = RocketQAv2Task(retriever, reranker)
    r0, c0 = snapshot(retriever), snapshot(reranker)
    cfg = TrainConfig(max_steps=2, batch_size=4, lr=1e-3, seed=0)
    train(task, lists(), cfg, tmp_path / "lr", progress=False,
          module_lr_multipliers={"reranker": 0.0})
    assert changed(r0, retriever)
    # AdamW's weight decay also scales with lr, so an lr of 0 leaves every reranker weight as it was
    assert not changed(c0, reranker)


def test_lists_from_the_candidates_table():
    queries = pl.DataFrame({"query_id": ["q1", "q2", "q3"], "text": ["one", "two", "three"]})
    corpus = pl.DataFrame({"doc_id": [f"d{i}" for i in range(6)], "title": [""] * 6,
                           "text": [f"t{i}" for i in range(6)]})
    candidates = pl.DataFrame({
        "query_id": ["q1", "q1", "q1", "q1", "q1", "q2", "q2", "q3", "q3", "q3"],
        "doc_id": ["d1", "d0", "d2", "d5", "d4", "d3", "d4", "d5", "d0", "d1"],
        "label": [0, 1, 0, 1, 1, 1, 0, 0, 0, 0],
        "source": ["raw:bm25", "qrels", "denoised:dense", "qrels", "pseudo_positive:bm25",
                   "qrels", "raw:dense", "raw:bm25", "raw:bm25", "raw:bm25"],
        "ce_score": [0.0] * 10,
    })
    out = build_candidate_lists(queries, corpus, candidates, list_length=3)
    # q1: a list per labelled positive (not for the pseudo positive d4), negatives in table
    # order, all three positives masked; q2 too short; q3 has no positive
    positives = frozenset({"d0", "d5", "d4"})
    assert out == [CandidateList("one", ("t0", "t1", "t2"), "q1", ("d0", "d1", "d2"), positives),
                   CandidateList("one", ("t5", "t1", "t2"), "q1", ("d5", "d1", "d2"), positives)]
    mask = in_batch_positive_mask(out)
    # row 0 (positive d0): column 3 holds d5, another positive of q1; its own column 0 is kept
    assert mask.tolist() == [[False, False, False, True, False, False],
                             [True, False, False, False, False, False]]


def test_mixed_lengths_in_a_batch_are_an_error(tiny_model_dir):
    task = RocketQAv2Task(*models(tiny_model_dir))
    with pytest.raises(ValueError, match="different lengths"):
        task.loss([CandidateList("a", ("b", "c")), CandidateList("d", ("e",))])


@pytest.mark.parametrize(("mode", "in_batch"), [("dynamic", False), ("static", False),
                                                ("dynamic", True)])
def test_grad_cache_gives_the_plain_steps_gradients(tiny_model_dir, mode, in_batch):
    """GradCache over queries, passages and reranker pairs in chunks of 3 = the plain step
    (dropout off: chunks draw other masks than one big batch; test_gradcache covers dropout)."""
    def grads_of(chunk: int) -> tuple[float, dict[str, torch.Tensor]]:
        retriever, reranker = models(tiny_model_dir)
        task = RocketQAv2Task(retriever, reranker, mode=mode, grad_cache_chunk=chunk,
                              retriever_ce_weight=1.0 if in_batch else 0.0,
                              retriever_in_batch=in_batch)
        retriever.eval()
        reranker.eval()
        loss, _ = task.loss(lists()[:4])
        if not task.backward_done:
            loss.backward()
        named = [*(("r." + n, p) for n, p in retriever.named_parameters()),
                 *(("c." + n, p) for n, p in reranker.named_parameters())]
        return float(loss.detach()), {n: p.grad.clone() for n, p in named if p.grad is not None}

    plain_loss, plain = grads_of(0)
    cached_loss, cached = grads_of(3)
    assert cached_loss == pytest.approx(plain_loss, rel=1e-5)
    assert set(cached) == set(plain) and len(plain) > 10
    assert any(n.startswith("c.") for n in plain) == (mode == "dynamic")
    for name, grad in plain.items():
        torch.testing.assert_close(cached[name], grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_retriever_ce_weight_adds_the_retrievers_own_ce(tiny_model_dir, mode):
    retriever, reranker = models(tiny_model_dir)
    s_de = torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 3.0]])
    s_ce = torch.tensor([[1.0, 0.5, 0.0], [0.5, 0.0, 1.0]])
    plain, _ = RocketQAv2Task(retriever, reranker, mode=mode)._combine(s_de, s_ce)
    weighted, metrics = RocketQAv2Task(retriever, reranker, mode=mode,
                                       retriever_ce_weight=0.5)._combine(s_de, s_ce)
    # CE of the positive (index 0) by hand: mean over queries of logsumexp(s) - s[0]
    retriever_ce = float((torch.logsumexp(s_de, 1) - s_de[:, 0]).mean())
    assert metrics["retriever_ce_loss"] == pytest.approx(retriever_ce, rel=1e-6)
    assert float(weighted) == pytest.approx(float(plain) + 0.5 * retriever_ce, rel=1e-6)
    with pytest.raises(ValueError, match="retriever_ce_weight"):
        RocketQAv2Task(retriever, reranker, retriever_ce_weight=-1.0)


def test_own_list_scores_cut_each_querys_block_out_of_the_batch_scores():
    q, p = torch.randn(3, 5), torch.randn(3 * 4, 5)
    expected = torch.einsum("bd,bld->bl", q, p.view(3, 4, 5))
    torch.testing.assert_close(own_list_scores(q @ p.T, 4), expected)


def test_in_batch_retriever_ce_uses_other_lists_as_negatives_and_masks_copies_of_the_positive(
        tiny_model_dir):
    retriever, reranker = models(tiny_model_dir)
    batch = [CandidateList("a", ("pa", "n1"), "qa", ("da", "d1")),
             CandidateList("b", ("pb", "da"), "qb", ("db", "da"))]
    mask = in_batch_positive_mask(batch)
    # query a's positive da also sits in b's list (column 3): not a negative of a
    assert mask.tolist() == [[False, False, False, True], [False, False, False, False]]
    s_all = torch.tensor([[3.0, 1.0, 0.5, 2.5], [0.0, 1.0, 2.0, -1.0]])
    task = RocketQAv2Task(retriever, reranker, retriever_ce_weight=1.0, retriever_in_batch=True)
    s_de, s_ce = own_list_scores(s_all, 2), torch.zeros(2, 2)
    total, metrics = task._combine(s_de, s_ce, task._in_batch(s_all, batch))
    # by hand: a over [3, 1, 0.5] (2.5 masked), positive 3; b over all four, positive column 2
    ce_a = float(torch.logsumexp(torch.tensor([3.0, 1.0, 0.5]), 0) - 3.0)
    ce_b = float(torch.logsumexp(s_all[1], 0) - 2.0)
    assert metrics["retriever_ce_loss"] == pytest.approx((ce_a + ce_b) / 2, rel=1e-6)
    plain, _ = RocketQAv2Task(retriever, reranker)._combine(s_de, s_ce)
    assert float(total) == pytest.approx(float(plain) + (ce_a + ce_b) / 2, rel=1e-6)
    with pytest.raises(ValueError, match="retriever_in_batch"):
        RocketQAv2Task(retriever, reranker, retriever_in_batch=True)
