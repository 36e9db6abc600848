"""AR2's retriever objective against a frozen ranker.

Zhang et al. 2022, "Adversarial Retriever-Ranker for Dense Text Retrieval" (AR2), ICLR. Over query
q's candidate list D_q (retrieved by the current retriever), with retriever distribution
p_theta(d | q) = softmax(s_de / T) and ranker distribution p_phi(d | q, D_q) = softmax(s_ce / T):

- adversarial term (the retriever "fools" the ranker: it moves probability mass to the passages the
  ranker already finds relevant; the minimax objective's retriever side, eq. 3-5, whose gradient
  E_{d ~ p_theta}[grad log p_theta(d) * log p_phi(d)] is computed exactly here over the list)::

      L_adv = - sum_d p_theta(d | q) * log p_phi(d | q, D_q)

- regulariser: the distillation term KL(p_theta || p_phi) that keeps the retriever close to the
  ranker's whole distribution (the paper's eq. 7 regularisation)::

      L_G = lambda * L_adv + (1 - lambda) * KL(p_theta || p_phi)

The ranker is frozen in the retriever phase, so its scores are detached here.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class AR2RetrieverLoss(nn.Module):
    def __init__(self, lam: float = 0.5, temperature: float = 1.0) -> None:
        super().__init__()
        if not 0.0 <= lam <= 1.0:
            raise ValueError(f"AR2RetrieverLoss: lambda must be in [0, 1], got {lam}")
        if temperature <= 0:
            raise ValueError(f"AR2RetrieverLoss: temperature must be > 0, got {temperature}")
        self.lam = lam
        self.temperature = temperature
        self.last_terms: dict[str, float] = {}

    def forward(self, retriever_scores: Tensor, ranker_scores: Tensor) -> Tensor:
        """Mean over the B lists of lambda * L_adv + (1 - lambda) * KL; both inputs [B, L]."""
        if retriever_scores.shape != ranker_scores.shape or retriever_scores.dim() != 2:
            raise ValueError(f"AR2RetrieverLoss: expected two [B, L] tensors, got "
                             f"{tuple(retriever_scores.shape)} and {tuple(ranker_scores.shape)}")
        log_g = F.log_softmax(retriever_scores.float() / self.temperature, dim=-1)
        log_d = F.log_softmax(ranker_scores.detach().float() / self.temperature, dim=-1)
        p_g = log_g.exp()
        adversarial = -(p_g * log_d).sum(-1).mean()
        kl = (p_g * (log_g - log_d)).sum(-1).mean()
        self.last_terms = {"adversarial": float(adversarial.detach()), "kl": float(kl.detach())}
        return self.lam * adversarial + (1.0 - self.lam) * kl
