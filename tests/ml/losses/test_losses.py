from __future__ import annotations

import math

import pytest
import torch

from jrr_pipeline.ml.losses import InfoNCELoss, ListwiseCELoss, gather_with_grad


def _lse(*xs: float) -> float:
    return math.log(sum(math.exp(x) for x in xs))


def test_infonce_by_hand() -> None:
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # layout [pos_0, neg_0, pos_1, neg_1]
    p = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0], [1.0, 1.0]])
    loss_fn = InfoNCELoss()
    loss = loss_fn(q, p, scale=2.0)
    # logits q0: [2, 1, 0, 2], target 0;  q1: [0, 1, 2, 2], target 2
    expected = ((-2 + _lse(2, 1, 0, 2)) + (-2 + _lse(0, 1, 2, 2))) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert loss_fn.last_num_passages == 4


def test_infonce_other_queries_passages_are_negatives() -> None:
    torch.manual_seed(0)
    q = torch.randn(3, 8)
    p = torch.randn(9, 8)  # 1 positive + 2 negatives per query
    base = InfoNCELoss()(q, p, scale=1.0)
    # making query 1's own negative look like query 0 raises query 0's loss too
    p2 = p.clone()
    p2[4] = q[0] * 5
    assert InfoNCELoss()(q, p2, scale=1.0) > base
    # positives are rows 0, 3, 6: swapping a query's positive with its negative changes the loss
    p3 = p.clone()
    p3[[3, 4]] = p3[[4, 3]]
    assert not torch.isclose(InfoNCELoss()(q, p3, scale=1.0), base)


def test_infonce_gradient_and_shape_errors() -> None:
    q = torch.randn(2, 4, requires_grad=True)
    p = torch.randn(6, 4, requires_grad=True)
    InfoNCELoss(cross_batch=True)(q, p, scale=20.0).backward()  # no process group: in-batch only
    assert q.grad is not None and p.grad is not None and p.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="multiple"):
        InfoNCELoss()(torch.randn(2, 4), torch.randn(5, 4), scale=1.0)
    with pytest.raises(ValueError, match=r"\[B, H\]"):
        InfoNCELoss()(torch.randn(2, 4), torch.randn(4, 3), scale=1.0)


def test_gather_with_grad_is_identity_without_a_process_group() -> None:
    t = torch.randn(3, 2, requires_grad=True)
    out = gather_with_grad(t)
    assert out is t
    (out * 2).sum().backward()
    assert torch.equal(t.grad, torch.full((3, 2), 2.0))


def test_listwise_ce_by_hand() -> None:
    scores = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0]], requires_grad=True)
    loss = ListwiseCELoss()(scores)
    expected = ((-2 + _lse(2, 1, 0)) + (0 + _lse(0, 3, 1))) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    targeted = ListwiseCELoss()(scores, torch.tensor([0, 1]))
    assert targeted.item() == pytest.approx(((-2 + _lse(2, 1, 0)) + (-3 + _lse(0, 3, 1))) / 2)
    loss.backward()
    # d/ds = (softmax - onehot) / B: the positive's gradient is negative
    assert scores.grad[0, 0] < 0 and scores.grad[1, 0] < 0
    assert torch.allclose(scores.grad.sum(dim=1), torch.zeros(2), atol=1e-6)


def test_listwise_ce_shape_errors() -> None:
    with pytest.raises(ValueError, match="target shape"):
        ListwiseCELoss()(torch.zeros(2, 3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[B, L\]"):
        ListwiseCELoss()(torch.zeros(4))


def test_infonce_mask_removes_a_querys_other_positives_from_its_negatives() -> None:
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    p = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0], [1.0, 1.0]])
    # query 0's second positive sits in column 2 (query 1's positive): masked for row 0 only
    mask = torch.tensor([[False, False, True, False], [False, False, False, False]])
    loss = InfoNCELoss()(q, p, scale=2.0, mask=mask)
    expected = ((-2 + _lse(2, 1, 2)) + (-2 + _lse(0, 1, 2, 2))) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="own positive"):
        InfoNCELoss()(q, p, scale=2.0, mask=torch.tensor([[True, False, False, False],
                                                          [False, False, False, False]]))
    with pytest.raises(ValueError, match="does not match"):
        InfoNCELoss()(q, p, scale=2.0, mask=torch.zeros(2, 3, dtype=torch.bool))


def test_infonce_is_fp32_under_bf16_autocast() -> None:
    """Given the same embeddings, the loss inside bf16 autocast equals the fp32 loss: the
    logits (up to ~20 at temperature 0.05) are not rounded to bf16."""
    torch.manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(8, 32), dim=-1)
    p = torch.nn.functional.normalize(torch.randn(24, 32), dim=-1)
    p[::3] = torch.nn.functional.normalize(q + 0.3 * torch.randn(8, 32), dim=-1)
    plain = InfoNCELoss()(q, p, scale=20.0).item()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = InfoNCELoss()(q, p, scale=20.0).item()
        rounded = torch.nn.functional.cross_entropy(
            (q @ p.T).float() * 20.0, torch.arange(8) * 3).item()
    assert under == pytest.approx(plain, abs=1e-4)
    assert abs(rounded - plain) > 1e-4  # what a bf16 matmul would have given


def test_listwise_ce_is_fp32_under_bf16_autocast() -> None:
    torch.manual_seed(0)
    scores = torch.randn(4, 8) * 6 + 15
    plain = ListwiseCELoss()(scores).item()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert ListwiseCELoss()(scores).item() == pytest.approx(plain, abs=1e-4)
