"""The seq2seq query generator on a tiny random T5 with the MiniLM (BERT) tokenizer: nothing is
downloaded, so the queries are gibberish, but sampling, log-probabilities, the REINFORCE update
and saving are checked exactly."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from jrr_pipeline.ml.generation.base import QueryGenerator
from jrr_pipeline.ml.generation.seq2seq import (
    CONFIG_FILE,
    Seq2SeqGeneratorConfig,
    Seq2SeqQueryGenerator,
)

DOCS = ["Insulin resistance in obese patients raises glucose and damages the pancreas.",
        "Malaria parasites invade red blood cells after a mosquito bite in the tropics.",
        "The Treaty of Westphalia ended the Thirty Years' War in 1648."]
QUERY_LENGTH = 8


def load(t5_dir: Path, **settings) -> Seq2SeqQueryGenerator:
    return Seq2SeqQueryGenerator.from_pretrained(
        str(t5_dir), **{"max_query_length": QUERY_LENGTH, **settings})


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_sample_gives_k_queries_per_document_in_order(t5_dir):
    generator = load(t5_dir)
    assert isinstance(generator, QueryGenerator)
    assert generator.trainable_parameters() == list(generator.model.parameters())
    queries = generator.sample(DOCS, k=2, rng=seeded(0))
    assert [q.doc_index for q in queries] == [0, 0, 1, 1, 2, 2]
    for query in queries:
        assert isinstance(query.text, str) and query.text == query.text.strip()
        assert query.log_prob.shape == () and query.log_prob.dtype == torch.float32
        assert query.log_prob.requires_grad
        value = float(query.log_prob.detach())
        # an untrained model over ~30k tokens: about -log(30522) = -10.3 per token
        assert math.isfinite(value) and -15 * QUERY_LENGTH < value < 0
    with torch.no_grad():
        assert not generator.sample(DOCS[:1], k=1, rng=seeded(0))[0].log_prob.requires_grad
    with pytest.raises(ValueError, match="k must be >= 1"):
        generator.sample(DOCS, k=0)


def test_sampling_is_reproducible_from_the_rng_and_leaves_the_global_state(t5_dir):
    generator = load(t5_dir)
    state = torch.get_rng_state()
    first = generator.sample(DOCS, k=3, rng=seeded(7))
    assert torch.equal(torch.get_rng_state(), state)
    again = generator.sample(DOCS, k=3, rng=seeded(7))
    other = generator.sample(DOCS, k=3, rng=seeded(8))
    assert [q.text for q in again] == [q.text for q in first]
    assert torch.equal(torch.stack([q.log_prob for q in again]),
                       torch.stack([q.log_prob for q in first]))
    assert [q.text for q in other] != [q.text for q in first]
    # sample = sample_ids + sequence_log_probs, one seed per document drawn from the rng
    rng = seeded(7)
    for i, document in enumerate(DOCS):
        ids = generator.sample_ids(document, 3, rng)
        texts = [t.strip() for t in generator.tokenizer.batch_decode(ids, skip_special_tokens=True)]
        assert texts == [q.text for q in first[3 * i:3 * i + 3]]
        assert torch.equal(generator.sequence_log_probs(document, ids),
                           torch.stack([q.log_prob for q in first[3 * i:3 * i + 3]]))


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_teacher_forced_log_prob_matches_the_scores_of_generate(t5_dir, temperature):
    generator = load(t5_dir, temperature=temperature)
    eos = generator.tokenizer.sep_token_id
    document = DOCS[0]
    encoded = generator.tokenizer([document], return_tensors="pt")
    torch.manual_seed(3)
    with torch.no_grad():
        out = generator.model.generate(
            input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"], do_sample=True, top_k=0, top_p=1.0, temperature=temperature,
            num_return_sequences=3, max_new_tokens=QUERY_LENGTH, output_scores=True,
            return_dict_in_generate=True)
    # generate's scores are the processed (tempered) logits it sampled each token from
    step_log_p = torch.log_softmax(torch.stack(out.scores, dim=1).float(), dim=-1)
    expected = []
    for row, tokens in enumerate(out.sequences[:, 1:].tolist()):
        total = 0.0
        for t, token in enumerate(tokens):
            total += float(step_log_p[row, t, token])
            if token == eos:
                break
        expected.append(total)
    got = generator.sequence_log_probs(document, out.sequences)
    assert got.requires_grad
    assert got.detach().tolist() == pytest.approx(expected, abs=1e-4)


def test_log_prob_counts_tokens_up_to_the_first_eos_only(t5_dir):
    generator = load(t5_dir)
    start, eos, pad = 0, generator.tokenizer.sep_token_id, generator.tokenizer.pad_token_id
    a, b, c = generator.tokenizer.convert_tokens_to_ids(["insulin", "glucose", "malaria"])
    document = DOCS[0]
    with torch.no_grad():
        padded = generator.sequence_log_probs(
            document, torch.tensor([[start, a, b, eos, pad, pad], [start, a, b, eos, c, a]]))
        ended = generator.sequence_log_probs(document, torch.tensor([[start, a, b, eos]]))
        open_ = generator.sequence_log_probs(document, torch.tensor([[start, a, b]]))
        encoded = generator.tokenizer([document], return_tensors="pt")
        logits = generator.model(input_ids=encoded["input_ids"],
                                 attention_mask=encoded["attention_mask"], decoder_input_ids=torch.tensor([[start, a, b]])).logits
    assert padded.tolist() == pytest.approx([float(ended[0])] * 2, abs=1e-5)
    p_eos = float(torch.log_softmax(logits[0, -1].float(), dim=-1)[eos])
    assert float(ended[0] - open_[0]) == pytest.approx(p_eos, abs=1e-4)


def test_one_reinforce_step_moves_the_log_probs_with_the_advantages(t5_dir):
    generator = load(t5_dir)
    document = DOCS[1]
    ids = generator.sample_ids(document, 2, seeded(0))
    before = generator.sequence_log_probs(document, ids)
    assert before.requires_grad
    optimizer = torch.optim.Adam(generator.trainable_parameters(), lr=1e-2)
    loss = -(torch.tensor([1.0, -1.0]) * before).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        after = generator.sequence_log_probs(document, ids)
    before = before.detach()
    assert float(after[0]) > float(before[0])
    assert float(after[1]) < float(before[1])


def test_log_probs_are_fp32_under_bf16_autocast(t5_dir):
    generator = load(t5_dir)
    ids = generator.sample_ids(DOCS[0], 2, seeded(0))
    full = generator.sequence_log_probs(DOCS[0], ids).detach()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        queries = generator.sample(DOCS[:1], 2, rng=seeded(0))
        low = generator.sequence_log_probs(DOCS[0], ids).detach()
    assert all(q.log_prob.dtype == torch.float32 for q in queries)
    assert low.dtype == torch.float32
    assert low.tolist() == pytest.approx(full.tolist(), rel=0.05)


def test_save_and_load_keep_the_settings_and_the_log_probs(t5_dir, tmp_path):
    generator = load(t5_dir, max_source_length=64, max_query_length=6, temperature=1.5,
                     top_p=0.9)
    directory = tmp_path / "generator"
    directory.mkdir()
    (directory / "other.json").write_text("{}", encoding="utf-8")
    generator.save(directory)
    assert (directory / "other.json").is_file()
    assert not [p.name for p in directory.iterdir() if ".tmp" in p.name]
    loaded = Seq2SeqQueryGenerator.load(directory)
    assert loaded.config == generator.config == Seq2SeqGeneratorConfig(
        str(t5_dir), max_source_length=64, max_query_length=6, temperature=1.5, top_p=0.9)
    with torch.no_grad():
        for document in DOCS:
            ids = generator.sample_ids(document, 3, seeded(1))
            assert torch.equal(loaded.sample_ids(document, 3, seeded(1)), ids)
            assert torch.allclose(loaded.sequence_log_probs(document, ids),
                                  generator.sequence_log_probs(document, ids), rtol=0, atol=1e-6)


def test_the_pipeline_saves_and_loads_it_by_kind(t5_dir, tmp_path):
    from jrr_pipeline.ml.generation.setup import load_generator, save_generator

    generator = load(t5_dir, temperature=0.7)
    save_generator(generator, SimpleNamespace(generator="seq2seq"), tmp_path / "g")
    loaded = load_generator(tmp_path / "g")
    assert isinstance(loaded, Seq2SeqQueryGenerator)
    assert loaded.config == generator.config


def test_bad_settings_and_missing_files_are_reported(t5_dir, tmp_path):
    with pytest.raises(ValueError, match="temperature"):
        Seq2SeqQueryGenerator.from_pretrained(str(t5_dir), temperature=0.0)
    with pytest.raises(ValueError, match="top_p"):
        Seq2SeqQueryGenerator.from_pretrained(str(t5_dir), top_p=1.5)
    with pytest.raises(FileNotFoundError, match=CONFIG_FILE):
        Seq2SeqQueryGenerator.load(tmp_path)
