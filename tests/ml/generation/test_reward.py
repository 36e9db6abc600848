import math

import pytest
import torch
import torch.nn.functional as F

from jrr_pipeline.ml.generation.reward import (
    RewardWeights,
    penalties,
    reinforce_loss,
    relevance,
    retriever_losses,
    total_reward,
)
from jrr_pipeline.ml.modeling import (
    CrossEncoderReranker,
    DenseRetriever,
    RerankerConfig,
    RetrieverConfig,
)

QUERIES = ["insulin glucose", "insulin pancreas", "malaria mosquito"]
DOCS = {"d1": "insulin glucose pancreas beta cells", "d2": "malaria parasite mosquito bite",
        "n1": "kidney renal filtration", "n2": "bone calcium fracture"}
SOURCE = ["d1", "d1", "d2"]
NEGATIVES = [["n1"], ["n2"], ["d1"]]


@pytest.fixture(scope="module")
def retriever(tiny_model_dir):
    torch.manual_seed(0)
    return DenseRetriever.from_pretrained(str(tiny_model_dir), RetrieverConfig(
        temperature=0.1, query_max_length=16, passage_max_length=16)).eval()


def test_retriever_loss_by_hand(retriever):
    positives = [DOCS[d] for d in SOURCE]
    negatives = [[DOCS[d] for d in row] for row in NEGATIVES]
    got = retriever_losses(retriever, QUERIES, positives, negatives, SOURCE)
    texts = [DOCS[d] for d in ["d1", "n1", "d1", "n2", "d2", "d1"]]
    with torch.no_grad():
        q = retriever.encode_queries(retriever.tokenize_queries(QUERIES))
        p = retriever.encode_passages(retriever.tokenize_passages(texts))
    logits = (q @ p.T) / 0.1
    # query 0's positive is column 0; column 2 is the same document (query 1's positive): masked.
    # query 2's hard negative d1 (column 5) is a real negative, so it stays.
    expected = []
    for i, (target, hidden) in enumerate([(0, [2]), (2, [0]), (4, [])]):
        row = logits[i].clone()
        row[hidden] = -math.inf
        expected.append(float(-F.log_softmax(row, dim=0)[target]))
    assert got.tolist() == pytest.approx(expected, abs=1e-4)


def test_relevance_is_the_softmax_of_the_reranker_over_the_list(tiny_model_dir):
    torch.manual_seed(0)
    reranker = CrossEncoderReranker.from_pretrained(str(tiny_model_dir),
                                                    RerankerConfig(max_length=32)).eval()
    positives = [DOCS[d] for d in SOURCE]
    negatives = [[DOCS[d] for d in row] for row in NEGATIVES]
    got = relevance(reranker, QUERIES, positives, negatives)
    with torch.no_grad():
        for i, query in enumerate(QUERIES):
            scores = reranker(reranker.tokenize([query, query], [positives[i], negatives[i][0]]))
            assert float(got[i]) == pytest.approx(float(torch.softmax(scores, 0)[0]), abs=1e-5)


def test_penalties_by_hand():
    doc = "one two three four five six seven eight"
    got = penalties(["one two three four five", "two four", "", "a b c d e f"], [doc] * 4,
                    max_query_words=4, max_copy_words=2)
    # 5 words (1 over 4) with a 5-word copy (3 over 2); no excess; empty; 6 words (2 over 4)
    assert got.tolist() == pytest.approx([1 / 4 + 3 / 2, 0.0, 1.0, 2 / 4])


def test_total_reward_weights_its_parts():
    w = RewardWeights(loss=2.0, relevance=0.5, penalty=3.0)
    got = total_reward(torch.tensor([1.0]), torch.tensor([0.4]), torch.tensor([0.1]), w)
    assert float(got) == pytest.approx(2.0 + 0.2 - 0.3)


def test_reinforce_loss_with_a_per_document_baseline_by_hand():
    log_probs = torch.tensor([-1.0, -2.0, -3.0], requires_grad=True)
    rewards = torch.tensor([1.0, 3.0, 5.0])
    groups = torch.tensor([0, 0, 1])
    loss = reinforce_loss(log_probs, rewards, groups)
    # advantages: 1 - 2 = -1, 3 - 2 = 1, 5 - 5 = 0
    assert float(loss.detach()) == pytest.approx(-((-1) * -1.0 + 1 * -2.0 + 0) / 3)
    loss.backward()
    assert log_probs.grad.tolist() == pytest.approx([1 / 3, -1 / 3, 0.0])
    moving = reinforce_loss(log_probs.detach(), rewards, groups, "moving_average", 2.0)
    assert float(moving) == pytest.approx(-((-1) * -1.0 + 1 * -2.0 + 3 * -3.0) / 3)
    with pytest.raises(ValueError, match="baseline"):
        reinforce_loss(log_probs, rewards, groups, "median")
