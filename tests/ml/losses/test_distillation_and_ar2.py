"""ListwiseKLLoss and AR2RetrieverLoss against hand-computed values, and where gradients flow."""

from __future__ import annotations

import math

import pytest
import torch

from jrr_pipeline.ml.losses import AR2RetrieverLoss, ListwiseKLLoss


def softmax(xs):
    e = [math.exp(x) for x in xs]
    return [v / sum(e) for v in e]


DE = [[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]]
CE = [[1.0, 1.0, -2.0], [3.0, 0.0, 0.0]]


def kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True))


def test_kl_matches_hand_values_in_both_directions():
    de, ce = torch.tensor(DE), torch.tensor(CE)
    expected = sum(kl(softmax(a), softmax(b)) for a, b in zip(DE, CE, strict=True)) / 2
    assert ListwiseKLLoss()(de, ce).item() == pytest.approx(expected, rel=1e-6)
    reverse = sum(kl(softmax(b), softmax(a)) for a, b in zip(DE, CE, strict=True)) / 2
    assert ListwiseKLLoss(direction="ce||de")(de, ce).item() == pytest.approx(reverse, rel=1e-6)
    t = 2.0
    scaled = sum(kl(softmax([x / t for x in a]), softmax([x / t for x in b]))
                 for a, b in zip(DE, CE, strict=True)) / 2
    assert ListwiseKLLoss(temperature=t)(de, ce).item() == pytest.approx(scaled, rel=1e-6)
    assert ListwiseKLLoss()(ce, ce).item() == pytest.approx(0.0, abs=1e-7)


def test_dynamic_distillation_updates_both_sides_static_only_the_retriever():
    for detach, ce_gets_grad in ((False, True), (True, False)):
        de = torch.tensor(DE, requires_grad=True)
        ce = torch.tensor(CE, requires_grad=True)
        ListwiseKLLoss(detach_teacher=detach)(de, ce).backward()
        assert de.grad is not None and de.grad.abs().sum() > 0
        assert (ce.grad is not None and ce.grad.abs().sum() > 0) == ce_gets_grad


def test_ar2_loss_matches_hand_values_and_freezes_the_ranker():
    de = torch.tensor(DE, requires_grad=True)
    ce = torch.tensor(CE, requires_grad=True)
    loss_fn = AR2RetrieverLoss(lam=0.3)
    loss = loss_fn(de, ce)
    adv = sum(-sum(p * math.log(q) for p, q in zip(softmax(a), softmax(b), strict=True))
              for a, b in zip(DE, CE, strict=True)) / 2
    kld = sum(kl(softmax(a), softmax(b)) for a, b in zip(DE, CE, strict=True)) / 2
    assert loss.item() == pytest.approx(0.3 * adv + 0.7 * kld, rel=1e-6)
    assert loss_fn.last_terms == {"adversarial": pytest.approx(adv, rel=1e-6),
                                  "kl": pytest.approx(kld, rel=1e-6)}
    loss.backward()
    assert ce.grad is None and de.grad.abs().sum() > 0


def test_ar2_adversarial_term_moves_mass_to_what_the_ranker_likes():
    de = torch.zeros(1, 3, requires_grad=True)
    ce = torch.tensor([[0.0, 4.0, 0.0]])
    AR2RetrieverLoss(lam=1.0)(de, ce).backward()
    assert de.grad[0, 1] < 0 < de.grad[0, 0]  # gradient descent raises the ranker's favourite


@pytest.mark.parametrize("bad", [dict(lam=1.5), dict(temperature=0.0)])
def test_ar2_rejects_bad_settings(bad):
    with pytest.raises(ValueError):
        AR2RetrieverLoss(**bad)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match=r"\[B, L\]"):
        ListwiseKLLoss()(torch.zeros(2, 3), torch.zeros(2, 4))
