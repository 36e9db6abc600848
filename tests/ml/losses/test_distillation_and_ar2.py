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
    """L = -sum p_theta log p_phi + lambda * KL(p_phi || p_theta), the ranker as teacher."""
    de = torch.tensor(DE, requires_grad=True)
    ce = torch.tensor(CE, requires_grad=True)
    loss_fn = AR2RetrieverLoss(lam=0.3)
    loss = loss_fn(de, ce)
    adv = sum(-sum(p * math.log(q) for p, q in zip(softmax(a), softmax(b), strict=True))
              for a, b in zip(DE, CE, strict=True)) / 2
    teacher_kl = sum(kl(softmax(b), softmax(a)) for a, b in zip(DE, CE, strict=True)) / 2
    assert loss.item() == pytest.approx(adv + 0.3 * teacher_kl, rel=1e-6)
    assert loss_fn.last_terms == {"adversarial": pytest.approx(adv, rel=1e-6),
                                  "kl": pytest.approx(teacher_kl, rel=1e-6)}
    loss.backward()
    assert ce.grad is None and de.grad.abs().sum() > 0


def test_lambda_trades_the_adversarial_term_against_distillation():
    """Unlike KL(p_theta || p_phi) (= L_adv - entropy), lambda changes where the optimum is."""
    ce = torch.tensor([[2.0, 1.0, 0.0]])

    def optimum(lam: float) -> list[float]:
        de = torch.zeros(1, 3, requires_grad=True)
        opt = torch.optim.SGD([de], lr=0.5 / (1 + lam))
        for _ in range(2000):
            opt.zero_grad()
            AR2RetrieverLoss(lam=lam)(de, ce).backward()
            opt.step()
        return torch.softmax(de.detach(), -1)[0].tolist()

    teacher = torch.softmax(ce, -1)[0].tolist()
    strong = optimum(50.0)
    assert strong == pytest.approx(teacher, abs=0.02)  # distillation dominates: p_theta = p_phi
    weak = optimum(0.1)
    assert weak[0] > strong[0] + 0.1  # the adversarial term concentrates mass on the favourite


def test_ar2_pairwise_reward_matches_the_official_form():
    """sum_d log sigmoid(s_+ - s_d) * log p_theta(d), averaged over lists, + lambda * KL."""
    de, ce = torch.tensor(DE), torch.tensor(CE)
    loss_fn = AR2RetrieverLoss(lam=0.5, reward="pairwise")
    expected_adv = 0.0
    for a, b in zip(DE, CE, strict=True):
        log_p = [math.log(v) for v in softmax(a)]
        rewards = [math.log(1 / (1 + math.exp(-(b[0] - s)))) for s in b]
        expected_adv += sum(r * lp for r, lp in zip(rewards, log_p, strict=True))
    expected_adv /= 2
    teacher_kl = sum(kl(softmax(b), softmax(a)) for a, b in zip(DE, CE, strict=True)) / 2
    assert loss_fn(de, ce).item() == pytest.approx(expected_adv + 0.5 * teacher_kl, rel=1e-6)
    assert loss_fn.last_terms["adversarial"] == pytest.approx(expected_adv, rel=1e-6)


def test_ar2_adversarial_term_moves_mass_to_what_the_ranker_likes():
    for reward in ("listwise", "pairwise"):
        de = torch.zeros(1, 3, requires_grad=True)
        ce = torch.tensor([[0.0, 4.0, 0.0]])
        AR2RetrieverLoss(lam=0.0, reward=reward)(de, ce).backward()
        assert de.grad[0, 1] < 0 < de.grad[0, 2], reward  # descent raises the ranker's favourite


@pytest.mark.parametrize("bad", [dict(lam=-0.5), dict(temperature=0.0), dict(reward="tuple")])
def test_ar2_rejects_bad_settings(bad):
    with pytest.raises(ValueError):
        AR2RetrieverLoss(**bad)


@pytest.mark.parametrize("loss_fn", [ListwiseKLLoss(), ListwiseKLLoss(direction="ce||de"),
                                     AR2RetrieverLoss(), AR2RetrieverLoss(reward="pairwise")])
def test_list_losses_are_fp32_under_bf16_autocast(loss_fn):
    """Logits near 20 (temperature 0.05) lose ~0.1 per bf16 step; inside autocast the loss must
    still equal the fp32 one."""
    torch.manual_seed(0)
    de, ce = torch.randn(4, 8) * 8 + 12, torch.randn(4, 8) * 5
    plain = loss_fn(de, ce).item()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = loss_fn(de, ce).item()
    assert under == pytest.approx(plain, abs=1e-4)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match=r"\[B, L\]"):
        ListwiseKLLoss()(torch.zeros(2, 3), torch.zeros(2, 4))
