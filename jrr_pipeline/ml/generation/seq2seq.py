"""The generative query generator: a sequence-to-sequence model (``AutoModelForSeq2SeqLM``) that
reads a document and writes a query token by token, trained by policy gradient in the game.

The policy is pi(q | d) = prod_t p(q_t | q_<t, d), sampled ancestrally (``temperature``,
nucleus ``top_p``). REINFORCE (Williams, 1992) needs only samples and their log-probabilities:

    grad J = E_{q ~ pi(.|d)} [ (R(q, d) - b) * grad log pi(q | d) ]

with ``b`` a baseline (``reward.reinforce_loss``) that lowers the variance without biasing the
gradient. Starting from a T5 / doc2query checkpoint (Nogueira et al., 2019: a T5 fine-tuned to
write the queries a passage answers) gives a policy that already writes plausible queries, which
the game then pushes towards queries the current retriever finds hard.

``sample`` draws with ``generate`` (no gradient), then scores the drawn tokens again by teacher
forcing, a second forward pass on (document, sampled decoder ids) that does keep the gradient.
The model's generation config is reset to plain ancestral sampling (no top-k, beams, repetition
penalties, forced or suppressed tokens from the checkpoint), so the distribution sampled from is
the one scored; dropout is off in both passes for the same reason.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, GenerationConfig
from transformers.modeling_outputs import BaseModelOutput

from jrr_pipeline.ml.generation.base import GeneratedQuery
from jrr_pipeline.ml.io import atomic_write_json
from jrr_pipeline.ml.modeling.base import module_device, read_saved_config, resolve_model_path
from jrr_pipeline.ml.precision import full_precision

CONFIG_FILE = "seq2seq_generator.json"
FORMAT_VERSION = 1
_TOKEN_IDS = ("decoder_start_token_id", "bos_token_id", "eos_token_id", "pad_token_id")


@dataclass(frozen=True)
class Seq2SeqGeneratorConfig:
    """Settings of a ``Seq2SeqQueryGenerator``; saved as ``seq2seq_generator.json``."""

    base_model: str = "default"
    max_source_length: int = 256  # document tokens the encoder reads
    max_query_length: int = 32  # new tokens a query may have (EOS included)
    temperature: float = 1.0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        name = type(self).__name__
        if self.max_source_length < 1:
            raise ValueError(f"{name}.max_source_length: must be >= 1, "
                             f"got {self.max_source_length}")
        if self.max_query_length < 1:
            raise ValueError(f"{name}.max_query_length: must be >= 1, "
                             f"got {self.max_query_length}")
        if not self.temperature > 0:
            raise ValueError(f"{name}.temperature: must be > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"{name}.top_p: must be in (0, 1], got {self.top_p}")


class Seq2SeqQueryGenerator(torch.nn.Module):
    """A ``QueryGenerator`` over an encoder-decoder language model (see the module docstring)."""

    def __init__(self, model: torch.nn.Module, tokenizer, config: Seq2SeqGeneratorConfig) -> None:
        super().__init__()
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.config = config
        self.model.generation_config = _plain_generation_config(model)
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            raise ValueError(f"{config.base_model}: the model has no eos_token_id; a query "
                             "generator needs one to know where a query ends")
        self._eos_ids = sorted({int(e) for e in (eos if isinstance(eos, list | tuple) else [eos])})

    @classmethod
    def from_pretrained(cls, path_or_name: str, *, max_source_length: int = 256,
                        max_query_length: int = 32, temperature: float = 1.0,
                        top_p: float = 1.0) -> Seq2SeqQueryGenerator:
        """Model and tokenizer from one local folder or hub id (e.g. a T5 or doc2query
        checkpoint)."""
        config = Seq2SeqGeneratorConfig(str(path_or_name), max_source_length, max_query_length,
                                        temperature, top_p)
        return cls._build(resolve_model_path(path_or_name), config)

    @classmethod
    def _build(cls, path: str, config: Seq2SeqGeneratorConfig) -> Seq2SeqQueryGenerator:
        model = AutoModelForSeq2SeqLM.from_pretrained(path)
        return cls(model, AutoTokenizer.from_pretrained(path), config)

    @property
    def device(self) -> torch.device:
        """Device of the model's parameters."""
        return module_device(self.model)

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """Every parameter of the model (tied embeddings counted once)."""
        return list(self.model.parameters())

    # ----------------------------------------------------------------------------- sampling
    def sample(self, documents: list[str], k: int,
               rng: torch.Generator | None = None) -> list[GeneratedQuery]:
        """``k`` queries per document, document by document, each with log pi(query | document)
        (with gradient unless called under ``torch.no_grad``).

        One seed per document is drawn from ``rng``, so the same ``rng`` state gives the same
        queries, and the global random state is left as it was; without ``rng`` the global
        random state is used (and advanced). Texts are decoded without special tokens and
        stripped (an immediate EOS gives "").
        """
        if k < 1:
            raise ValueError(f"sample: k must be >= 1, got {k}")
        if isinstance(documents, str):
            raise TypeError("sample: expected a list of documents, got a single string")
        queries: list[GeneratedQuery] = []
        for index, document in enumerate(documents):
            sequences = self.sample_ids(document, k, rng)
            log_probs = self.sequence_log_probs(document, sequences)
            texts = self.tokenizer.batch_decode(sequences, skip_special_tokens=True)
            queries += [GeneratedQuery(index, text.strip(), log_prob)
                        for text, log_prob in zip(texts, log_probs, strict=True)]
        return queries

    @torch.no_grad()
    def sample_ids(self, document: str, k: int,
                   rng: torch.Generator | None = None) -> Tensor:
        """[k, L] decoder ids sampled for ``document``, as ``generate`` returns them: the decoder
        start token, the query's tokens, its EOS (unless cut at ``max_query_length``), then
        padding up to the longest of the ``k``. Draws one seed from ``rng`` (see ``sample``)."""
        seed = None
        if rng is not None:
            seed = int(torch.randint(0, 2**62, (1,), generator=rng, device=rng.device))
        encoded = self._encode(document)
        generation = GenerationConfig(
            do_sample=True, temperature=self.config.temperature, top_p=self.config.top_p,
            top_k=0, num_beams=1, num_return_sequences=k,
            max_new_tokens=self.config.max_query_length)
        with self._eval_mode(), _seeded(seed, self.device):
            return self.model.generate(**encoded, generation_config=generation)

    def sequence_log_probs(self, document: str, sequences: Tensor) -> Tensor:
        """[n] log pi(query | document) of each row of ``sequences`` ([n, L] decoder ids laid
        out as ``sample_ids`` returns them), by teacher forcing, with gradient.

        Sums the log-probabilities of the tokens after the decoder start token up to and
        including the first EOS (padding after it is ignored; a row without EOS counts every
        token), from the logits divided by the temperature, in fp32 even under bf16 autocast.
        The top-p truncation is ignored here (the full tempered softmax is scored), a common
        approximation: it is exact for ``top_p=1``.
        """
        sequences = sequences.to(self.device)
        if sequences.dim() != 2 or sequences.shape[1] < 2:
            raise ValueError(f"sequence_log_probs: expected [n, L >= 2] decoder ids, got "
                             f"shape {tuple(sequences.shape)}")
        n = sequences.shape[0]
        encoded = self._encode(document)
        with self._eval_mode():
            states = self.model.get_encoder()(**encoded).last_hidden_state
            logits = self.model(
                encoder_outputs=BaseModelOutput(last_hidden_state=states.expand(n, -1, -1)),
                attention_mask=encoded["attention_mask"].expand(n, -1),
                decoder_input_ids=sequences[:, :-1]).logits
        targets = sequences[:, 1:]
        is_eos = torch.isin(targets, torch.tensor(self._eos_ids, device=targets.device))
        after_eos = (torch.cumsum(is_eos, dim=1) - is_eos.long()) > 0
        with full_precision(self.device):
            log_p = torch.log_softmax(logits.float() / self.config.temperature, dim=-1)
            token_log_p = log_p.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
            return token_log_p.masked_fill(after_eos, 0.0).sum(dim=1)

    def _encode(self, document: str) -> dict[str, Tensor]:
        encoded = self.tokenizer([document], truncation=True,
                                 max_length=self.config.max_source_length, return_tensors="pt")
        return {"input_ids": encoded["input_ids"].to(self.device),
                "attention_mask": encoded["attention_mask"].to(self.device)}

    @contextlib.contextmanager
    def _eval_mode(self) -> Iterator[None]:
        was_training = self.model.training
        self.model.eval()
        try:
            yield
        finally:
            self.model.train(was_training)

    # ------------------------------------------------------------------------------- saving
    def save(self, directory: Path) -> None:
        """The model and tokenizer (HF folder, loadable by ``AutoModelForSeq2SeqLM``) and this
        generator's settings into ``directory`` (other files in it are kept); the settings file
        is written last and atomically, so it only exists beside a complete model."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
        atomic_write_json(directory / CONFIG_FILE, {
            "format_version": FORMAT_VERSION, "config": dataclasses.asdict(self.config)})

    @classmethod
    def load(cls, directory: Path) -> Seq2SeqQueryGenerator:
        """A generator written by ``save``, with its saved settings."""
        directory = Path(directory)
        config = read_saved_config(directory / CONFIG_FILE, Seq2SeqGeneratorConfig,
                                   FORMAT_VERSION)
        return cls._build(str(directory), config)


def _plain_generation_config(model: torch.nn.Module) -> GenerationConfig:
    """Only the special token ids of the model's generation config (or, lacking one, of its
    config): ``generate`` fills unset fields from the model's generation config, so a
    checkpoint's top-k, beams or penalties would otherwise change the sampled distribution."""
    current = getattr(model, "generation_config", None)
    ids = {}
    for name in _TOKEN_IDS:
        value = getattr(current, name, None)
        if value is None:
            value = getattr(model.config, name, None)
        if value is not None:
            ids[name] = value
    return GenerationConfig(**ids)


@contextlib.contextmanager
def _seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """Seed the random state for the block and restore it afterwards (no-op for None)."""
    if seed is None:
        yield
        return
    if device.type == "cpu":
        forked = torch.random.fork_rng(devices=[])
    else:
        index = device.index
        if index is None:
            index = getattr(torch, device.type).current_device()
        forked = torch.random.fork_rng(devices=[index], device_type=device.type)
    with forked:
        torch.manual_seed(seed)
        yield
