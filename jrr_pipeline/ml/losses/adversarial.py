"""AR2's retriever objective against a frozen ranker (the ranker is the teacher).

Zhang et al. 2022, "Adversarial Retriever-Ranker for Dense Text Retrieval" (AR2, ICLR). Over
query q's candidate list D_q (positive first, the rest retrieved by the current retriever), with
retriever distribution p_theta(d) = softmax(s_de / T) and ranker distribution
p_phi(d) = softmax(s_ce / T)::

    L_G = L_adv + lambda * KL(p_phi || p_theta)

**Adversarial term.** The retriever plays the generator of the minimax game: it moves probability
mass to the passages the ranker finds relevant, ``-E_{d ~ p_theta}[log p_phi(d | q, D_q)]``
(eq. 3-5; ``reward="listwise"``, computed exactly over the list, so no sampling variance)::

    L_adv = - sum_d p_theta(d) * log p_phi(d)

AR2's official training code uses a pairwise reward instead (``reward="pairwise"``): the log
probability that the positive beats d, r_d = log softmax([s_+, s_d])[0] = log sigmoid(s_+ - s_d),
as a REINFORCE weight on the retriever's log probabilities: L_adv = sum_d r_d * log p_theta(d)
(r_d <= 0, so passages the ranker confuses with the positive gain mass). We average over lists
where the official code sums over the batch.

**Regulariser.** The ranker as teacher: KL(p_phi || p_theta) = sum_d p_phi (log p_phi - log p_theta),
whose gradient is that of the official code's cross-entropy -sum p_phi log p_theta. (The reverse
KL(p_theta || p_phi) equals L_adv - H(p_theta): it would only add an entropy bonus.)

lambda weights the regulariser against the adversarial term. The official code writes
``lam_c * adv + (1 - lam_c) * ce``; that is our loss scaled by lam_c with lambda = (1 - lam_c) /
lam_c, so its default 0.5 is our lambda = 1. Scores and softmaxes are computed in fp32, outside
any autocast.
"""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

from jrr_pipeline.ml.precision import full_precision

REWARDS = ("listwise", "pairwise")


class AR2RetrieverLoss(nn.Module):
    def __init__(self, lam: float = 1.0, temperature: float = 1.0,
                 reward: Literal["listwise", "pairwise"] = "listwise") -> None:
        super().__init__()
        if lam < 0:
            raise ValueError(f"AR2RetrieverLoss: lambda must be >= 0, got {lam}")
        if temperature <= 0:
            raise ValueError(f"AR2RetrieverLoss: temperature must be > 0, got {temperature}")
        if reward not in REWARDS:
            raise ValueError(f"AR2RetrieverLoss: reward must be one of {REWARDS}, got {reward!r}")
        self.lam = lam
        self.temperature = temperature
        self.reward = reward
        self.last_terms: dict[str, float] = {}

    def forward(self, retriever_scores: Tensor, ranker_scores: Tensor) -> Tensor:
        """Mean over the B lists of L_adv + lambda * KL(p_phi || p_theta); both inputs [B, L],
        the positive in column 0 (used by the pairwise reward)."""
        if retriever_scores.shape != ranker_scores.shape or retriever_scores.dim() != 2:
            raise ValueError(f"AR2RetrieverLoss: expected two [B, L] tensors, got "
                             f"{tuple(retriever_scores.shape)} and {tuple(ranker_scores.shape)}")
        with full_precision(retriever_scores.device):
            log_g = F.log_softmax(retriever_scores.float() / self.temperature, dim=-1)
            s_ce = ranker_scores.detach().float()
            log_d = F.log_softmax(s_ce / self.temperature, dim=-1)
            if self.reward == "listwise":
                adversarial = -(log_g.exp() * log_d).sum(-1).mean()
            else:
                reward = F.logsigmoid(s_ce[:, :1] - s_ce)  # log P(positive beats d)
                adversarial = (reward * log_g).sum(-1).mean()
            kl = (log_d.exp() * (log_d - log_g)).sum(-1).mean()
            total = adversarial + self.lam * kl
        self.last_terms = {"adversarial": float(adversarial.detach()), "kl": float(kl.detach())}
        return total
