"""The offline query generator: a stochastic policy that writes a query for a document by
choosing spans of the document's own text (no generative weights needed).

The packaged MiniLM (frozen) encodes the document; every candidate span (``spans.py``) gets the
mean of its tokens' states ``h_s``, and a small head scores it::

    score(s) = w2 . tanh(W1 [h_s ; h_s * h_d ; position ; length ; idf] + b1) + b2

(``h_d`` the document's mean state). A query is ``m`` spans drawn without replacement from
softmax(score / temperature) (Plackett-Luce), then put in document order, so

    log pi(q | d) = sum_t [score(s_t) / T - logsumexp_{s not yet chosen} score(s) / T]

which REINFORCE differentiates (spans overlapping a chosen one leave the draw). The head's last layer starts at zero, so an untrained policy is
exactly the uniform span sampler (``uniform=True`` keeps it so: the "random spans" ablation).
"""

from __future__ import annotations

import io
import json
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from jrr_pipeline.ml.generation.base import GeneratedQuery
from jrr_pipeline.ml.generation.spans import Span, candidate_spans, lowered_words
from jrr_pipeline.ml.io import atomic_write_bytes, atomic_write_json
from jrr_pipeline.ml.modeling.base import resolve_model_path

POLICY_FILE = "span_policy.json"
HEAD_FILE = "span_head.pt"


@dataclass(frozen=True)
class SpanPolicyConfig:
    base_model: str = "default"
    max_length: int = 256  # document tokens the encoder reads
    max_span_words: int = 3
    spans_per_query: int = 2
    max_candidates: int = 256
    temperature: float = 1.0
    hidden: int = 64
    uniform: bool = False
    batch_size: int = 16


def inverse_document_frequencies(texts: Iterable[str]) -> dict[str, float]:
    """log(N / df) of every (case-folded) word of ``texts``."""
    df: Counter[str] = Counter()
    n = 0
    for text in texts:
        df.update(set(lowered_words(text)))
        n += 1
    return {word: math.log(n / count) for word, count in df.items()}


class ExtractiveSpanPolicy(nn.Module):
    """Span-choosing query policy over a frozen encoder (see the module docstring)."""

    def __init__(self, encoder: nn.Module, tokenizer, config: SpanPolicyConfig,
                 idf: dict[str, float] | None = None) -> None:
        super().__init__()
        self.encoder = encoder.eval()
        for parameter in self.encoder.parameters():
            parameter.requires_grad_(False)
        self.tokenizer = tokenizer
        self.config = config
        self.idf = dict(idf or {})
        self._max_idf = max(self.idf.values(), default=1.0) or 1.0
        dim = int(encoder.config.hidden_size)
        self.head = nn.Sequential(nn.Linear(2 * dim + 3, config.hidden), nn.Tanh(),
                                  nn.Linear(config.hidden, 1))
        nn.init.zeros_(self.head[2].weight)
        nn.init.zeros_(self.head[2].bias)

    @classmethod
    def from_pretrained(cls, config: SpanPolicyConfig,
                        idf: dict[str, float] | None = None) -> ExtractiveSpanPolicy:
        from transformers import AutoModel, AutoTokenizer

        path = resolve_model_path(config.base_model)
        return cls(AutoModel.from_pretrained(path), AutoTokenizer.from_pretrained(path), config,
                   idf)

    @property
    def device(self) -> torch.device:
        return next(self.head.parameters()).device

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [] if self.config.uniform else list(self.head.parameters())

    # ------------------------------------------------------------------------------ scoring
    def span_scores(self, documents: list[str]) -> list[tuple[list[Span], Tensor]]:
        """Per document: its candidate spans and their scores [n_spans] (with grad to the head;
        zeros for the uniform policy)."""
        out: list[tuple[list[Span], Tensor]] = []
        size = self.config.batch_size
        for start in range(0, len(documents), size):
            out += self._score_batch(documents[start:start + size])
        return out

    def _score_batch(self, documents: list[str]) -> list[tuple[list[Span], Tensor]]:
        enc = self.tokenizer(documents, padding=True, truncation=True,
                             max_length=self.config.max_length, return_offsets_mapping=True,
                             return_tensors="pt")
        offsets = enc.pop("offset_mapping")
        with torch.no_grad():
            inputs = {k: v.to(self.device) for k, v in enc.items()}
            states = self.encoder(**inputs).last_hidden_state.float()
        results = []
        for i, text in enumerate(documents):
            mask = enc["attention_mask"][i].bool()
            tokens = offsets[i][mask]  # [T, 2] character offsets (0, 0 for special tokens)
            seen_chars = int(tokens[:, 1].max()) if len(tokens) else 0
            spans = candidate_spans(text, self.config.max_span_words, seen_chars,
                                    self.config.max_candidates)
            if not spans:
                results.append((spans, torch.zeros(0, device=self.device)))
                continue
            if self.config.uniform:
                results.append((spans, torch.zeros(len(spans), device=self.device)))
                continue
            hidden = states[i][mask.to(states.device)]
            results.append((spans, self.head(self._features(spans, tokens, hidden)).squeeze(-1)))
        return results

    def _features(self, spans: list[Span], tokens: Tensor, hidden: Tensor) -> Tensor:
        real = tokens[:, 1] > tokens[:, 0]
        starts, ends = tokens[:, 0], tokens[:, 1]
        span_start = torch.tensor([s.start for s in spans])[:, None]
        span_end = torch.tensor([s.end for s in spans])[:, None]
        member = (starts[None, :] < span_end) & (ends[None, :] > span_start) & real[None, :]
        weights = member.float().to(hidden.device)
        weights = weights / weights.sum(dim=1, keepdim=True).clamp_min(1.0)
        span_states = weights @ hidden  # [S, H]
        doc_state = hidden[real.to(hidden.device)].mean(dim=0) if real.any() else hidden.mean(0)
        n_words = max(s.first_word + s.n_words for s in spans)
        extra = torch.tensor([[s.first_word / max(n_words, 1),
                               s.n_words / self.config.max_span_words,
                               self._span_idf(s.text)] for s in spans], device=hidden.device)
        return torch.cat([span_states, span_states * doc_state, extra], dim=1)

    def _span_idf(self, text: str) -> float:
        values = [self.idf.get(w, self._max_idf) for w in lowered_words(text)]
        return (sum(values) / len(values)) / self._max_idf if values else 0.0

    # ----------------------------------------------------------------------------- sampling
    def sample(self, documents: list[str], k: int,
               rng: torch.Generator | None = None) -> list[GeneratedQuery]:
        """``k`` queries per document: ``spans_per_query`` spans each (fewer when the document
        has fewer), drawn without replacement, joined in document order."""
        if k < 1:
            raise ValueError(f"sample: k must be >= 1, got {k}")
        queries: list[GeneratedQuery] = []
        for index, (spans, scores) in enumerate(self.span_scores(documents)):
            for _ in range(k):
                if not spans:
                    queries.append(GeneratedQuery(index, "", scores.sum() * 0.0))
                    continue
                chosen, log_prob = self._draw(scores / self.config.temperature, spans, rng)
                text = " ".join(spans[j].text for j in sorted(chosen, key=lambda j: spans[j].start))
                queries.append(GeneratedQuery(index, text, log_prob))
        return queries

    def _draw(self, logits: Tensor, spans: list[Span],
              rng: torch.Generator | None) -> tuple[list[int], Tensor]:
        """Plackett-Luce draw; a chosen span rules out the spans that overlap it (a query
        never repeats a word occurrence of the document)."""
        available = torch.ones_like(logits, dtype=torch.bool)
        starts = torch.tensor([s.start for s in spans], device=logits.device)
        ends = torch.tensor([s.end for s in spans], device=logits.device)
        chosen: list[int] = []
        log_prob = logits.sum() * 0.0
        for _ in range(self.config.spans_per_query):
            if not available.any():
                break
            log_p = torch.log_softmax(logits.masked_fill(~available, float("-inf")), dim=0)
            probs = log_p.detach().exp().cpu()
            j = int(torch.multinomial(probs, 1, generator=rng))
            chosen.append(j)
            log_prob = log_prob + log_p[j]
            available &= (ends <= spans[j].start) | (starts >= spans[j].end)
        return chosen, log_prob

    # ------------------------------------------------------------------------------- saving
    def save(self, directory: Path) -> None:
        """The head's weights and the policy's settings and idf table (atomic per file)."""
        directory = Path(directory)
        buffer = io.BytesIO()
        torch.save(self.head.state_dict(), buffer)
        atomic_write_bytes(directory / HEAD_FILE, buffer.getvalue())
        atomic_write_json(directory / POLICY_FILE, {"config": asdict(self.config),
                                                    "idf": self.idf}, indent=None)

    @classmethod
    def load(cls, directory: Path) -> ExtractiveSpanPolicy:
        directory = Path(directory)
        try:
            saved = json.loads((directory / POLICY_FILE).read_text(encoding="utf-8"))
            config = SpanPolicyConfig(**saved["config"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{directory / POLICY_FILE}: not a saved span policy ({err})") from err
        policy = cls.from_pretrained(config, saved.get("idf"))
        policy.head.load_state_dict(torch.load(directory / HEAD_FILE, weights_only=True))
        return policy
