"""AR2 on a tiny BERT: phases alternate, the index refresh re-mines lists, a run killed mid-phase
resumes to the same weights as an uninterrupted one, and the training launcher drives both methods."""

from __future__ import annotations

import json

import polars as pl
import pytest
import torch

from jrr_pipeline.ml.modeling import (
    CrossEncoderReranker,
    DenseRetriever,
    RerankerConfig,
    RetrieverConfig,
)
from jrr_pipeline.ml.settings import JointSettings
from jrr_pipeline.ml.training.ar2 import (
    RUN_FILE,
    AR2RetrieverTask,
    RefreshData,
    _claim_work_dir,
    train_ar2,
)
from jrr_pipeline.ml.training.launch import main, read_run_file, run, write_run_file
from jrr_pipeline.ml.training.lists import CandidateList, retriever_list_scores

TOPICS = ["apple", "river", "music", "window", "garden", "doctor", "planet", "winter"]
FILLER = ["stone", "cloud", "paper", "glass", "metal", "sugar", "chair", "light"]
DOC_IDS = [f"d{i}" for i in range(16)]
PASSAGES = [f"{t} {t} about {t}" for t in TOPICS] + [f"{f} and {f}" for f in FILLER]


def models(tiny_model_dir):
    torch.manual_seed(0)
    retriever = DenseRetriever.from_pretrained(
        str(tiny_model_dir), RetrieverConfig(query_max_length=8, passage_max_length=12))
    reranker = CrossEncoderReranker.from_pretrained(str(tiny_model_dir), RerankerConfig(max_length=20))
    return retriever, reranker


def initial_lists() -> list[CandidateList]:
    out = []
    for i, topic in enumerate(TOPICS):
        ids = (f"d{i}", f"d{8 + i}", f"d{8 + (i + 1) % 8}")
        out.append(CandidateList(topic, tuple(PASSAGES[int(d[1:])] for d in ids), f"q{i}", ids))
    return out


def refresh_data(with_eval: bool = True) -> RefreshData:
    qtext = {f"q{i}": t for i, t in enumerate(TOPICS)}
    qrels = pl.DataFrame({"query_id": list(qtext), "doc_id": [f"d{i}" for i in range(8)],
                          "relevance": [1] * 8, "split": ["test"] * 8})
    return RefreshData(DOC_IDS, PASSAGES, qtext, {q: [f"d{i}"] for i, q in enumerate(qtext)},
                       flagged={"q0": {"d15"}}, eval_query_text=qtext if with_eval else {},
                       eval_qrels=qrels if with_eval else None)


def ar2_settings(**changes) -> JointSettings:
    return JointSettings(**{
        "method": "ar2", "batch_size": 4, "retriever_lr": 2e-3, "reranker_lr": 6e-3,
        "warmup_ratio": 0.0, "seed": 0, "log_every": 1, "checkpoint_every": 1,
        "ar2_iterations": 2, "ar2_ranker_steps": 2, "ar2_retriever_steps": 2,
        "ar2_refresh_top_k": 8, "ar2_lambda": 0.5, "encode_batch_size": 8,
        # the tiny random ranker finds every passage about as good as the positive: keep all
        "ar2_refresh_tau_neg": 1.0, **changes})


def run_game(tiny_model_dir, tmp_path, name, stop_after=None, refresh_every=1):
    retriever, reranker = models(tiny_model_dir)
    logs, iterations = [], []
    summary = train_ar2(retriever, reranker, initial_lists(),
                        ar2_settings(ar2_refresh_every=refresh_every),
                        tmp_path / name / "work", tmp_path / name / "out",
                        refresh_data=refresh_data(), progress=False, stop_after=stop_after,
                        on_log=lambda it, ph, step, m: logs.append((it, ph, step, m)),
                        on_iteration=lambda it, info: iterations.append((it, info)))
    return summary, logs, iterations, retriever, reranker


def test_phases_alternate_and_the_refresh_re_mines_lists(tiny_model_dir, tmp_path):
    summary, logs, iterations, retriever, _ = run_game(tiny_model_dir, tmp_path, "a")
    assert summary["completed"]
    assert [(it, ph) for it, ph, step, _ in logs if step == 2] == [
        (0, "ranker"), (0, "retriever"), (1, "ranker"), (1, "retriever")]
    assert {"adversarial", "kl", "retriever_acc"} <= set(logs[-1][3])
    assert iterations[0][1]["refreshed"] == 0.0 and iterations[1][1]["refreshed"] == 1.0
    # the refresh evaluated the retriever of iteration 0 on the eval queries with ir-measures
    assert 0.0 < iterations[1][1]["eval_nDCG@10"] <= 1.0
    payload = json.loads((tmp_path / "a/work/iteration-001/lists.json").read_text())
    assert len(payload["lists"]) == 8
    for item in payload["lists"]:
        qid, ids = item["query_id"], item["doc_ids"]
        assert ids[0] == f"d{qid[1:]}" and len(ids) == 3
        assert ids[0] not in ids[1:] and len(set(ids)) == 3
        assert not (qid == "q0" and "d15" in ids)  # flagged false negatives are never negatives
    assert (tmp_path / "a/out/retriever/config.json").exists()
    assert (tmp_path / "a/out/reranker/config.json").exists()


def test_a_killed_run_resumes_mid_phase_to_the_same_weights(tiny_model_dir, tmp_path):
    full, _, _, retriever_full, reranker_full = run_game(tiny_model_dir, tmp_path, "full")
    killed, _, _, _, _ = run_game(tiny_model_dir, tmp_path, "killed", stop_after=(1, "retriever", 1))
    assert full["completed"] and not killed["completed"]
    assert (tmp_path / "killed/work/iteration-001/retriever-state").is_dir()
    assert not (tmp_path / "killed/out").exists()
    resumed, logs, _, retriever_resumed, reranker_resumed = run_game(tiny_model_dir, tmp_path, "killed")
    assert resumed["completed"]
    assert [(it, ph, step) for it, ph, step, _ in logs] == [(1, "retriever", 2)]  # only what was left
    for a, b in ((retriever_full, retriever_resumed), (reranker_full, reranker_resumed)):
        for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
            assert torch.equal(x, y), name


def test_without_refresh_every_iteration_uses_the_given_lists(tiny_model_dir, tmp_path):
    summary, _, iterations, _, _ = run_game(tiny_model_dir, tmp_path, "static", refresh_every=0)
    assert summary["completed"]
    assert [info["refreshed"] for _, info in iterations] == [0.0, 0.0]
    assert not (tmp_path / "static/work/iteration-001/lists.json").exists()


def test_retriever_ce_weight_adds_the_retrievers_own_listwise_ce(tiny_model_dir):
    retriever, reranker = models(tiny_model_dir)
    retriever.eval()  # no dropout: the three forwards below must see the same scores
    batch = initial_lists()[:4]
    plain, plain_metrics = AR2RetrieverTask(retriever, reranker).loss(batch)
    with_ce, metrics = AR2RetrieverTask(retriever, reranker, retriever_ce_weight=0.5).loss(batch)
    with torch.no_grad():
        s_de = retriever_list_scores(retriever, batch)
    own_ce = float(-torch.log_softmax(s_de.float(), dim=-1)[:, 0].mean())
    assert "retriever_ce_loss" not in plain_metrics
    assert metrics["retriever_ce_loss"] == pytest.approx(own_ce, rel=1e-5)
    assert float((with_ce - plain).detach()) == pytest.approx(0.5 * own_ce, rel=1e-4)
    with pytest.raises(ValueError, match="retriever_ce_weight"):
        AR2RetrieverTask(retriever, reranker, retriever_ce_weight=-1.0)
    with pytest.raises(ValueError, match=r"joint_models.retriever_ce_weight = -0.1: must be >= 0"):
        ar2_settings(retriever_ce_weight=-0.1)


def test_a_work_dir_of_another_configuration_is_refused_not_resumed(tmp_path):
    settings = ar2_settings()
    _claim_work_dir(tmp_path, settings)
    assert json.loads((tmp_path / RUN_FILE).read_text())["ar2_lambda"] == 0.5
    _claim_work_dir(tmp_path, settings)  # the same run resumes
    with pytest.raises(ValueError, match=r"ar2_run\.json: .*different settings "
                                         r"\(changed: retriever_ce_weight\)"):
        _claim_work_dir(tmp_path, ar2_settings(retriever_ce_weight=0.5))


def write_tables(tmp_path) -> dict[str, pl.DataFrame]:
    queries = pl.DataFrame({"query_id": [f"q{i}" for i in range(8)], "text": TOPICS})
    corpus = pl.DataFrame({"doc_id": DOC_IDS, "title": [""] * 16, "text": PASSAGES})
    qrels = pl.DataFrame({"query_id": [f"q{i}" for i in range(8)], "doc_id": DOC_IDS[:8],
                          "relevance": [1] * 8, "split": ["train"] * 6 + ["test"] * 2})
    rows = []
    for lst in initial_lists()[:6]:
        for j, d in enumerate(lst.doc_ids):
            rows.append((lst.query_id, d, int(j == 0), "qrels" if j == 0 else "raw:bm25", 0.0))
    candidates = pl.DataFrame(rows, schema=["query_id", "doc_id", "label", "source", "ce_score"],
                              orient="row")
    return {"queries": queries, "corpus": corpus, "qrels": qrels, "candidates": candidates}


def joint_run_file(tiny_model_dir, tmp_path, method: str, **changes):
    retriever, reranker = models(tiny_model_dir)
    retriever.save_pretrained(tmp_path / "r0")
    reranker.save_pretrained(tmp_path / "c0")
    settings = JointSettings(**{
        "method": method, "list_length": 3, "max_steps": 2, "batch_size": 2,
        "retriever_lr": 1e-3, "reranker_lr": 2e-3, "log_every": 1, "ar2_iterations": 2,
        "ar2_ranker_steps": 1, "ar2_retriever_steps": 1, "ar2_refresh_top_k": 8,
        "passage_max_length": 12, "reranker_max_length": 20, "index_passage_max_length": 24,
        "ar2_refresh_tau_neg": 1.0, **changes})
    return write_run_file(tmp_path / "run", "joint_models", settings, write_tables(tmp_path),
                          tmp_path / "out", tmp_path / "work",
                          models={"retriever": str(tmp_path / "r0"),
                                  "reranker": str(tmp_path / "c0")},
                          eval_split="test", progress=False)


@pytest.mark.parametrize("method", ["rocketqav2", "ar2"])
def test_the_launcher_trains_either_method_and_logs(tiny_model_dir, tmp_path, method):
    result = run(joint_run_file(tiny_model_dir, tmp_path, method))
    assert result["lists"] == 6
    records = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    phases = {r["phase"] for r in records}
    assert phases == ({"joint"} if method == "rocketqav2" else {"ranker", "retriever", "iteration"})
    saved = DenseRetriever.from_pretrained(str(tmp_path / "out/retriever"))
    assert saved.config.passage_max_length == 24  # the serving length, not the training one
    # the saved reranker is the trained one (not a copy of c0), at the training length
    trained = CrossEncoderReranker.from_pretrained(str(tmp_path / "out/reranker"))
    start = CrossEncoderReranker.from_pretrained(str(tmp_path / "c0"))
    assert trained.config.max_length == 20
    pairs = list(zip(TOPICS, PASSAGES[:len(TOPICS)], strict=True))
    assert not torch.allclose(torch.from_numpy(trained.predict(pairs)),
                              torch.from_numpy(start.predict(pairs)))
    assert json.loads((tmp_path / "run/result.json").read_text())["method"] == method


def test_run_file_errors_name_the_file_and_field(tiny_model_dir, tmp_path, capsys):
    path = joint_run_file(tiny_model_dir, tmp_path, "rocketqav2")
    good = json.loads(path.read_text())
    for change, message in (({"stage": "ance"}, "field 'stage'"),
                            ({"lr": 1}, "field 'lr': unknown key"),
                            ({"settings": {**good["settings"], "ar2_lambda": -2.0}},
                             r"joint_models.ar2_lambda = -2.0: must be >= 0"),
                            ({"settings": {**good["settings"], "list_length": 1}},
                             r"joint_models.list_length = 1: must be >= 2"),
                            ({"settings": {**good["settings"], "mood": "x"}},
                             r"joint_models.mood: unknown setting"),
                            ({"models": {"retriever": "r0"}}, r"field 'models.reranker': missing"),
                            ({"data": {**good["data"], "qrels": "gone.parquet"}},
                             r"field 'data.qrels': file not found")):
        bad = path.parent / "bad.json"
        bad.write_text(json.dumps({**good, **change}))
        with pytest.raises((ValueError, FileNotFoundError), match=message) as err:
            read_run_file(bad).tables()
        assert str(bad) in str(err.value)
        assert main(["--config", str(bad)]) == 2
        assert str(bad) in capsys.readouterr().err
    bad.write_text('{"stage": "joint_models",\n "data": }')
    with pytest.raises(ValueError, match=r"bad.json:2: invalid JSON"):
        read_run_file(bad)


def test_ar2_under_two_gloo_ranks(tiny_model_dir, tmp_path):
    """torchrun with 2 ranks: rank 0 refreshes the index, both ranks train every phase on the
    same lists and the run writes one pair of checkpoints."""
    import shutil

    from .launching import launch, retry_a_hang

    path = joint_run_file(tiny_model_dir, tmp_path, "ar2")

    def attempt() -> None:
        for written in ("work", "out"):  # a hung first try leaves nothing behind
            shutil.rmtree(tmp_path / written, ignore_errors=True)
        for written in ("metrics.jsonl", "result.json"):
            (tmp_path / "run" / written).unlink(missing_ok=True)
        launch(2, "jrr_pipeline.ml.training.launch", ["--config", str(path)])

    retry_a_hang(attempt)
    result = json.loads((tmp_path / "run/result.json").read_text())
    assert result["method"] == "ar2" and len(result["iterations"]) == 2
    assert result["iterations"][1]["refreshed"] == 1.0
    assert len(json.loads((tmp_path / "work/iteration-001/lists.json").read_text())["lists"]) == 6
    assert (tmp_path / "out/retriever/config.json").exists()
    assert (tmp_path / "out/reranker/config.json").exists()


def test_a_refresh_keeps_only_what_the_current_ranker_calls_negative(tiny_model_dir):
    """RocketQA's rule with the current ranker: a retrieved passage stays a negative only if
    sigmoid(s - s_positive) < tau_neg; the removals are counted."""
    import math

    from jrr_pipeline.ml.training.ar2 import refreshed_lists

    retriever, reranker = models(tiny_model_dir)
    data = refresh_data(with_eval=False)
    lists, info = refreshed_lists(retriever, reranker, data, list_length=3, top_k=8, seed=0,
                                  tau_neg=0.5, batch_size=8, progress=False)
    retriever_hits = {}
    from jrr_pipeline.ml.index import build_index, search

    index = build_index(retriever.embed(data.passages, kind="passage", batch_size=8))
    qids = sorted(data.positives)
    hits, _ = search(index, data.doc_ids,
                     retriever.embed([data.query_text[q] for q in qids], kind="query"), 8)
    text_of = dict(zip(data.doc_ids, data.passages, strict=True))
    removed = scored = 0
    for qid, docs in zip(qids, hits, strict=True):
        docs = [d for d in docs if d not in data.positives[qid] and d not in data.flagged.get(qid, ())]
        scores = reranker.predict([(data.query_text[qid], text_of[d])
                                   for d in [*data.positives[qid], *docs]])
        best = max(scores[: len(data.positives[qid])])
        keep = {d for d, s in zip(docs, scores[len(data.positives[qid]):], strict=True)
                if 1 / (1 + math.exp(best - s)) < 0.5}
        retriever_hits[qid] = keep
        removed += len(docs) - len(keep)
        scored += len(docs)
    assert info["refresh_removed"] == removed and info["refresh_scored"] == scored
    assert 0 < removed < scored  # the tiny random ranker splits them: the rule is exercised
    for item in lists:
        kept = retriever_hits[item.query_id]
        if len(kept) >= 2:  # enough kept negatives: nothing the ranker doubts is drawn
            assert set(item.doc_ids[1:]) <= kept
        assert item.positive_ids >= frozenset(data.positives[item.query_id])
    short = sum(max(2 - len(k), 0) for k in retriever_hits.values())
    assert info["refresh_topped_up"] <= short
