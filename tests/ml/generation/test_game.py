
import pytest
import torch

from jrr_pipeline.ml.generation.game import GameConfig, GenerationGame, write_queries
from jrr_pipeline.ml.generation.reward import RewardWeights
from jrr_pipeline.ml.generation.span_policy import ExtractiveSpanPolicy, SpanPolicyConfig
from jrr_pipeline.ml.modeling import (
    CrossEncoderReranker,
    DenseRetriever,
    RerankerConfig,
    RetrieverConfig,
)
from jrr_pipeline.ml.training.examples import RetrievalExample

CONFIG = GameConfig(rounds=3, documents_per_round=6, queries_per_document=2, n_negatives=2,
                    negative_depth=10, batch_size=4, seed=7,
                    weights=RewardWeights(loss=1.0, relevance=1.0, penalty=1.0))


def new_game(tiny_model_dir, corpus, bm25, config=CONFIG, labelled=None):
    torch.manual_seed(0)
    policy = ExtractiveSpanPolicy.from_pretrained(SpanPolicyConfig(
        base_model=str(tiny_model_dir), max_length=48, spans_per_query=2))
    retriever = DenseRetriever.from_pretrained(str(tiny_model_dir), RetrieverConfig(
        query_max_length=16, passage_max_length=32))
    reranker = CrossEncoderReranker.from_pretrained(str(tiny_model_dir),
                                                    RerankerConfig(max_length=48))
    return GenerationGame(policy, retriever, reranker, bm25, *corpus, config, labelled=labelled)


def test_a_round_rewards_every_query_and_trains_all_three_players(tiny_model_dir, corpus, bm25):
    game = new_game(tiny_model_dir, corpus, bm25)
    before = {name: [p.detach().clone() for p in module.parameters()]
              for name, module in [("policy", game.generator.head),
                                   ("retriever", game.retriever), ("reranker", game.reranker)]}
    result = game.play_round(0)
    assert len(result.rows) == 6 * 2
    docs = {row["doc_id"] for row in result.rows}
    assert len(docs) == 6 and all(row["round"] == 0 for row in result.rows)
    doc_text = dict(zip(*corpus, strict=True))
    for row in result.rows:
        assert row["text"] and all(w in doc_text[row["doc_id"]] for w in row["text"].split())
        assert 0.0 <= row["relevance"] <= 1.0 and row["retriever_loss"] > 0
        assert row["reward"] == pytest.approx(row["retriever_loss"] + row["relevance"]
                                              - row["penalty"], abs=1e-5)
    assert len({row["query_id"] for row in result.rows}) == 12
    for key in ("reward", "reward_relevance", "policy_loss", "retriever_train_loss",
                "reranker_train_loss", "distinct_1", "duplicate_rate"):
        assert key in result.metrics
    for name, module in [("policy", game.generator.head), ("retriever", game.retriever),
                         ("reranker", game.reranker)]:
        changed = any(not torch.equal(a, b) for a, b in zip(before[name], module.parameters(),
                                                            strict=True))
        assert changed, f"{name} did not train"


def test_hard_negatives_never_hold_the_source(tiny_model_dir, corpus, bm25):
    import numpy as np

    game = new_game(tiny_model_dir, corpus, bm25)
    source = corpus[0].index("d3_0")
    rows = game.hard_negatives(["insulin glucose diabetes"] * 5, [source] * 5,
                               np.random.default_rng(0))
    assert all(len(row) == 2 and "d3_0" not in row and len(set(row)) == 2 for row in rows)


def test_a_killed_game_resumes_to_the_same_end(tiny_model_dir, corpus, bm25, tmp_path):
    whole = new_game(tiny_model_dir, corpus, bm25).play()
    first = new_game(tiny_model_dir, corpus, bm25)
    assert len(first.play(tmp_path / "state", stop_after=1)) == 1
    resumed_game = new_game(tiny_model_dir, corpus, bm25)
    resumed = resumed_game.play(tmp_path / "state")
    assert [r.round for r in resumed] == [0, 1, 2]
    assert [r.rows for r in resumed] == [r.rows for r in whole]
    with pytest.raises(ValueError, match="other settings"):
        new_game(tiny_model_dir, corpus, bm25,
                 GameConfig(**{**CONFIG.__dict__, "rounds": 4})).play(tmp_path / "state")


def test_a_game_killed_in_the_middle_of_a_round_replays_that_round(tiny_model_dir, corpus, bm25,
                                                                    tmp_path):
    whole = new_game(tiny_model_dir, corpus, bm25).play()
    crashing = new_game(tiny_model_dir, corpus, bm25)
    real_train = crashing._train_models

    def crash_in_round_1(examples, rng):
        if len(crashing.results) == 1:  # round 0 is done and saved: this is round 1
            raise RuntimeError("killed mid-round")
        return real_train(examples, rng)

    crashing._train_models = crash_in_round_1
    with pytest.raises(RuntimeError, match="killed mid-round"):
        crashing.play(tmp_path / "state")
    # the policy of round 1 was already updated in memory when the "kill" came; nothing of it
    # reached the state file, so the resumed game replays round 1 from the end of round 0
    assert len(crashing.results) == 1
    resumed = new_game(tiny_model_dir, corpus, bm25).play(tmp_path / "state")
    assert [r.round for r in resumed] == [0, 1, 2]
    assert [r.rows for r in resumed] == [r.rows for r in whole]


def test_labelled_pairs_join_the_training_in_augment_mode(tiny_model_dir, corpus, bm25):
    ids, texts = corpus
    labelled = [RetrievalExample(query="insulin glucose", positive=texts[0],
                                 negatives=[texts[1], texts[2]], query_id="q1",
                                 positive_id=ids[0], negative_ids=[ids[1], ids[2]],
                                 positive_ids=frozenset({ids[0]}))] * 3
    game = new_game(tiny_model_dir, corpus, bm25, labelled=labelled)
    plain = new_game(tiny_model_dir, corpus, bm25)
    a, b = game.play_round(0), plain.play_round(0)
    assert [r["text"] for r in a.rows] == [r["text"] for r in b.rows]  # same round
    assert a.metrics["retriever_train_loss"] != b.metrics["retriever_train_loss"]


def test_write_queries_covers_every_document(tiny_model_dir, corpus, bm25):
    game = new_game(tiny_model_dir, corpus, bm25)
    ids, texts = corpus
    rows = write_queries(game.generator, ids[:10], texts[:10], k=2, seed=1, batch=4)
    assert len(rows) == 20 and {r["doc_id"] for r in rows} == set(ids[:10])
    assert len({r["query_id"] for r in rows}) == 20 and all(r["text"] for r in rows)


def test_the_seq2seq_generator_plays_a_round(t5_dir, tiny_model_dir, corpus, bm25):
    from jrr_pipeline.ml.generation.seq2seq import Seq2SeqQueryGenerator

    game = new_game(tiny_model_dir, corpus, bm25)
    game.generator = Seq2SeqQueryGenerator.from_pretrained(str(t5_dir), max_query_length=6)
    game.policy_opt = torch.optim.Adam(game.generator.trainable_parameters(), lr=1e-3)
    before = [p.detach().clone() for p in game.generator.parameters()]
    result = game.play_round(0)
    assert len(result.rows) == 12 and all(r["doc_id"] for r in result.rows)
    assert any(not torch.equal(a, b) for a, b in zip(before, game.generator.parameters(),
                                                     strict=True))


def test_the_game_reranker_head_learns_faster(tiny_model_dir, corpus, bm25):
    game = new_game(tiny_model_dir, corpus, bm25)
    head = {id(p) for n, p in game.reranker.named_parameters() if "classifier." in n}
    rates = {id(p): group["lr"] for group in game.reranker_opt.param_groups
             for p in group["params"]}
    assert head and {rates[i] for i in head} == {CONFIG.reranker_lr * 50}
    assert {r for i, r in rates.items() if i not in head} == {CONFIG.reranker_lr}


def fusion_game(tiny_model_dir, corpus, bm25, config=None):
    from jrr_pipeline.ml.generation.fusion_relevance import FusionRelevance

    config = config or GameConfig(**{**CONFIG.__dict__, "rounds": 2, "relevance": "fusion"})
    torch.manual_seed(0)
    policy = ExtractiveSpanPolicy.from_pretrained(SpanPolicyConfig(
        base_model=str(tiny_model_dir), max_length=48, spans_per_query=2))
    retriever_config = RetrieverConfig(query_max_length=16, passage_max_length=32)
    retriever = DenseRetriever.from_pretrained(str(tiny_model_dir), retriever_config)
    encoder = DenseRetriever.from_pretrained(str(tiny_model_dir), retriever_config)
    scorer = FusionRelevance(encoder, bm25, *corpus, lexical_weight=2.0)
    return GenerationGame(policy, retriever, None, bm25, *corpus, config,
                          relevance_scorer=scorer)


def test_the_fusion_relevance_scores_the_reward_and_no_reranker_plays(tiny_model_dir, corpus,
                                                                       bm25, tmp_path):
    game = fusion_game(tiny_model_dir, corpus, bm25)
    frozen = [p.detach().clone() for p in game.relevance_scorer.encoder.parameters()]
    result = game.play_round(0)
    assert "reranker_train_loss" not in result.metrics
    ids = corpus[0]
    rows = result.rows
    # S(q, d) is the scorer's: a query cut from its document finds it far above chance (1/3)
    assert 1 / 3 < result.metrics["reward_relevance"] <= 1.0
    again = game.relevance_scorer([r["text"] for r in rows[:4]],
                                  [ids.index(r["doc_id"]) for r in rows[:4]],
                                  [[ids[0], ids[1]]] * 4)
    assert again.shape == (4,)
    assert all(torch.equal(a, b) for a, b in zip(frozen, game.relevance_scorer.encoder.parameters(),
                                                 strict=True))
    # the state has no reranker and a killed fusion game resumes to the same end
    whole = fusion_game(tiny_model_dir, corpus, bm25).play()
    fusion_game(tiny_model_dir, corpus, bm25).play(tmp_path / "state", stop_after=1)
    resumed = fusion_game(tiny_model_dir, corpus, bm25).play(tmp_path / "state")
    assert [r.rows for r in resumed] == [r.rows for r in whole]


def test_the_relevance_source_and_its_players_must_agree(tiny_model_dir, corpus, bm25):
    game = new_game(tiny_model_dir, corpus, bm25)
    fusion = GameConfig(**{**CONFIG.__dict__, "relevance": "fusion"})
    with pytest.raises(ValueError, match="needs a relevance_scorer"):
        GenerationGame(game.generator, game.retriever, None, bm25, *corpus, fusion)
    with pytest.raises(ValueError, match="a reranker plays only"):
        GenerationGame(game.generator, game.retriever, game.reranker, bm25, *corpus, fusion,
                       relevance_scorer=lambda q, s, n: torch.zeros(len(q)))
    with pytest.raises(ValueError, match="'reranker' or 'fusion'"):
        GenerationGame(game.generator, game.retriever, game.reranker, bm25, *corpus,
                       GameConfig(**{**CONFIG.__dict__, "relevance": "oracle"}))
