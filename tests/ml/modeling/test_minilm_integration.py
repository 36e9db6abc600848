"""The packaged all-MiniLM-L6-v2 through our retriever vs sentence-transformers."""

from __future__ import annotations

import numpy as np
import pytest

from jrr_pipeline.ml.modeling import DenseRetriever, RetrieverConfig

SENTENCES = [
    "Vitamin D deficiency is associated with an increased risk of hip fractures.",
    "How do cells repair double-strand DNA breaks?",
    "The quick brown fox jumps over the lazy dog.",
    "Aspirin",
]


@pytest.mark.integration
def test_embed_matches_sentence_transformers(minilm_path: str) -> None:
    from sentence_transformers import SentenceTransformer

    ours_model = DenseRetriever.from_pretrained("default", RetrieverConfig())
    ours = ours_model.embed(SENTENCES, "passage", batch_size=2)
    st = SentenceTransformer(minilm_path, device="cpu")
    theirs = st.encode(SENTENCES, convert_to_numpy=True)
    assert ours.shape == (4, 384)
    cosines = (ours * theirs).sum(axis=1)  # both are L2-normalised
    assert cosines.min() > 0.999
    # and the default query/passage embeddings agree for short texts
    np.testing.assert_allclose(ours_model.embed(SENTENCES, "query"), ours, atol=1e-5)


@pytest.mark.integration
def test_bf16_embeddings_stay_within_cosine_0999_of_fp32(minilm_path: str) -> None:
    """The bf16-autocast encoding path (auto on CUDA and on CPUs with AVX512-BF16 / AMX) keeps
    the embeddings the index is built from within cosine 0.999 of sentence-transformers' fp32."""
    import torch
    from sentence_transformers import SentenceTransformer

    model = DenseRetriever.from_pretrained("default", RetrieverConfig())
    bf16 = model.embed(SENTENCES, "passage", batch_size=2, autocast_dtype=torch.bfloat16)
    fp32 = SentenceTransformer(minilm_path, device="cpu").encode(SENTENCES, convert_to_numpy=True)
    assert bf16.dtype == np.float32 and bf16.shape == (4, 384)
    cosines = (bf16 * fp32).sum(axis=1)
    assert cosines.min() > 0.999
    assert not np.array_equal(bf16, model.embed(SENTENCES, "passage", batch_size=2))  # bf16 ran
