from __future__ import annotations

import pytest
import torch

from jrr_pipeline.ml.modeling.pooling import cls_pool, mean_pool, normalize, pool


def _example() -> tuple[torch.Tensor, torch.Tensor]:
    tokens = torch.tensor(
        [
            [[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]],  # last token is padding
            [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]],
        ]
    )
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    return tokens, mask


def test_mean_pool_ignores_padding_by_hand() -> None:
    tokens, mask = _example()
    expected = torch.tensor([[2.0, 3.0], [2.0, 3.0]])
    assert torch.equal(mean_pool(tokens, mask), expected)
    assert torch.equal(pool(tokens, mask, "mean"), expected)


def test_cls_pool_takes_first_token() -> None:
    tokens, mask = _example()
    expected = torch.tensor([[1.0, 2.0], [0.0, 1.0]])
    assert torch.equal(cls_pool(tokens, mask), expected)
    assert torch.equal(pool(tokens, mask, "cls"), expected)


def test_normalize_rows_to_unit_length() -> None:
    out = normalize(torch.tensor([[3.0, 4.0], [0.0, 2.0]]))
    assert torch.allclose(out, torch.tensor([[0.6, 0.8], [0.0, 1.0]]))


def test_unknown_mode_is_rejected() -> None:
    tokens, mask = _example()
    with pytest.raises(ValueError, match="max"):
        pool(tokens, mask, "max")  # type: ignore[arg-type]
