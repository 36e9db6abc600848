import math

import pytest
import torch

from jrr_pipeline.ml.generation.reward import reinforce_loss
from jrr_pipeline.ml.generation.span_policy import (
    ExtractiveSpanPolicy,
    SpanPolicyConfig,
    inverse_document_frequencies,
)
from jrr_pipeline.ml.generation.spans import candidate_spans

DOCS = ["Insulin resistance in obese patients raises glucose and damages the pancreas.",
        "Malaria parasites invade red blood cells after a mosquito bite in the tropics."]


@pytest.fixture(scope="module")
def policy_config(tiny_model_dir):
    return SpanPolicyConfig(base_model=str(tiny_model_dir), spans_per_query=2, max_span_words=2)


def test_an_untrained_policy_is_the_uniform_span_sampler(policy_config):
    import dataclasses

    # one-word spans: distinct texts never overlap, so the second draw has n - 1 choices
    policy = ExtractiveSpanPolicy.from_pretrained(dataclasses.replace(policy_config,
                                                                      max_span_words=1))
    queries = policy.sample(DOCS, k=3, rng=torch.Generator().manual_seed(0))
    assert [q.doc_index for q in queries] == [0, 0, 0, 1, 1, 1]
    for query in queries:
        n = len(candidate_spans(DOCS[query.doc_index], max_words=1))
        # Plackett-Luce over equal scores: 1/n for the first span, 1/(n-1) for the second
        assert float(query.log_prob.detach()) == pytest.approx(-math.log(n) - math.log(n - 1), abs=1e-5)
        assert query.log_prob.requires_grad
        # spans of the document, in document order
        doc = DOCS[query.doc_index]
        assert query.text and all(word in doc for word in query.text.split())
        first, second = query.text.split(" ")
        assert doc.index(first) < doc.index(second)


def test_sampling_is_reproducible_from_the_generator_seed(policy_config):
    policy = ExtractiveSpanPolicy.from_pretrained(policy_config)
    first = [q.text for q in policy.sample(DOCS, 4, torch.Generator().manual_seed(1))]
    again = [q.text for q in policy.sample(DOCS, 4, torch.Generator().manual_seed(1))]
    other = [q.text for q in policy.sample(DOCS, 4, torch.Generator().manual_seed(2))]
    assert first == again and first != other


def test_reinforce_teaches_the_policy_what_is_rewarded(policy_config):
    """Reward 1 for queries that contain 'glucose' or 'mosquito': REINFORCE raises that rate
    well above the uniform sampler's."""
    torch.manual_seed(0)
    policy = ExtractiveSpanPolicy.from_pretrained(policy_config)
    optimizer = torch.optim.Adam(policy.trainable_parameters(), lr=0.05)

    def hit_rate(rng_seed: int) -> float:
        with torch.no_grad():
            queries = policy.sample(DOCS, 64, torch.Generator().manual_seed(rng_seed))
        return sum(("glucose" in q.text) or ("mosquito" in q.text) for q in queries) / len(queries)

    before = hit_rate(100)
    rng = torch.Generator().manual_seed(3)
    for _ in range(30):
        queries = policy.sample(DOCS, 8, rng)
        rewards = torch.tensor([float(("glucose" in q.text) or ("mosquito" in q.text))
                                for q in queries])
        loss = reinforce_loss(torch.stack([q.log_prob for q in queries]), rewards,
                              torch.tensor([q.doc_index for q in queries]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = hit_rate(100)
    assert before < 0.35 and after > before + 0.3, (before, after)


def test_the_uniform_policy_has_nothing_to_train(policy_config):
    import dataclasses

    policy = ExtractiveSpanPolicy.from_pretrained(dataclasses.replace(policy_config, uniform=True))
    assert policy.trainable_parameters() == []
    assert all(not q.log_prob.requires_grad for q in policy.sample(DOCS, 2))


def test_save_and_load_give_the_same_policy(policy_config, tmp_path):
    policy = ExtractiveSpanPolicy.from_pretrained(policy_config,
                                                  inverse_document_frequencies(DOCS))
    torch.nn.init.normal_(policy.head[2].weight)
    policy.save(tmp_path / "policy")
    loaded = ExtractiveSpanPolicy.load(tmp_path / "policy")
    assert loaded.config == policy.config and loaded.idf == policy.idf
    a = policy.sample(DOCS, 3, torch.Generator().manual_seed(5))
    b = loaded.sample(DOCS, 3, torch.Generator().manual_seed(5))
    assert [q.text for q in a] == [q.text for q in b]
    assert torch.allclose(torch.stack([q.log_prob for q in a]),
                          torch.stack([q.log_prob for q in b]), atol=1e-6)
    with pytest.raises(ValueError, match="span_policy.json"):
        ExtractiveSpanPolicy.load(tmp_path)


def test_a_query_never_repeats_a_word_occurrence(policy_config):
    import dataclasses

    policy = ExtractiveSpanPolicy.from_pretrained(dataclasses.replace(policy_config,
                                                                      spans_per_query=3,
                                                                      max_span_words=3))
    doc = "alpha beta gamma delta"
    for query in policy.sample([doc], 40, torch.Generator().manual_seed(0)):
        words = query.text.split()
        assert len(words) == len(set(words)) and " ".join(words) in doc or all(
            w in doc.split() for w in words)
        positions = [doc.split().index(w) for w in words]
        assert positions == sorted(positions) and len(set(positions)) == len(positions)
