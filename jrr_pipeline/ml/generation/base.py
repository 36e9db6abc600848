"""What every query generator of the generator-retriever game offers: ``sample`` writes ``k``
queries per document and returns, with each one, the log-probability of having written it (with
gradient to the generator's trainable parameters), which is all REINFORCE needs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor


@dataclass
class GeneratedQuery:
    """One sampled query: the index of its source document in the list given to ``sample``, its
    text, and log pi(query | document) (a scalar tensor, with grad unless sampled greedily)."""

    doc_index: int
    text: str
    log_prob: Tensor


@runtime_checkable
class QueryGenerator(Protocol):
    """A stochastic policy over queries for a document."""

    def sample(self, documents: list[str], k: int,
               rng: torch.Generator | None = None) -> list[GeneratedQuery]:
        """``k`` queries per document, document by document (``len(documents) * k`` items)."""
        ...

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """What the policy gradient updates."""
        ...

    def save(self, directory: Path) -> None:
        """Write what ``load`` needs to rebuild this generator."""
        ...
