import numpy as np
import pytest
import torch

from jrr_pipeline.ml.generation.fusion_relevance import FusionRelevance
from jrr_pipeline.ml.modeling import DenseRetriever, RetrieverConfig


@pytest.fixture(scope="module")
def encoder(tiny_model_dir):
    torch.manual_seed(0)
    return DenseRetriever.from_pretrained(str(tiny_model_dir), RetrieverConfig(
        query_max_length=16, passage_max_length=32))


def test_scores_are_cosine_plus_weighted_normalised_bm25(encoder, bm25, corpus):
    ids, texts = corpus
    scorer = FusionRelevance(encoder, bm25, ids, texts, lexical_weight=0.7)
    query = " ".join(texts[3].split()[:5])
    rows = [[3, 10, 20]]
    got = scorer.scores([query], rows)
    q = encoder.embed([query], kind="query")
    d = encoder.embed([texts[i] for i in rows[0]], kind="passage")
    found, values = bm25.search([query], len(ids))
    bm = dict(zip(found[0], values[0].tolist(), strict=True))
    top = max(bm.values())
    want = [float(q[0] @ d[k]) + 0.7 * bm.get(ids[i], 0.0) / top for k, i in enumerate(rows[0])]
    np.testing.assert_allclose(got[0], want, rtol=1e-4, atol=1e-5)


def test_a_query_cut_from_its_source_finds_it_among_other_documents(encoder, bm25, corpus):
    ids, texts = corpus
    scorer = FusionRelevance(encoder, bm25, ids, texts, lexical_weight=5.0)
    sources = [0, 7, 15, 31]
    queries = [" ".join(texts[s].split()[2:8]) for s in sources]
    negatives = [[ids[(s + 40) % len(ids)], ids[(s + 41) % len(ids)]] for s in sources]
    s = scorer(queries, sources, negatives)
    assert s.shape == (4,) and bool(((s >= 0) & (s <= 1)).all())
    assert float(s.mean()) > 0.9  # chance is 1/3
    # the same lists with another query's source in the first place: that document wins less
    swapped = scorer(queries, sources[1:] + sources[:1], negatives)
    assert bool((swapped <= s + 1e-6).all()) and float(s.mean() - swapped.mean()) > 0.2


def test_without_bm25_it_is_the_softmax_of_cosines(encoder, bm25, corpus):
    ids, texts = corpus
    scorer = FusionRelevance(encoder, bm25, ids, texts, lexical_weight=0.0, temperature=0.5)
    s = scorer(["insulin glucose"], [2], [[ids[5], ids[9]]])
    q = encoder.embed(["insulin glucose"], kind="query")
    d = encoder.embed([texts[2], texts[5], texts[9]], kind="passage")
    want = torch.softmax(torch.tensor(q[0] @ d.T) / 0.5, dim=0)[0]
    assert float(s[0]) == pytest.approx(float(want), abs=1e-5)


def test_bad_settings_and_ragged_rows_are_refused(encoder, bm25, corpus):
    ids, texts = corpus
    with pytest.raises(ValueError, match="temperature > 0"):
        FusionRelevance(encoder, bm25, ids[:3], texts[:3], temperature=0.0)
    scorer = FusionRelevance(encoder, bm25, ids[:5], texts[:5])
    with pytest.raises(ValueError, match="one row of K documents"):
        scorer.scores(["a", "b"], [[0, 1], [2]])
