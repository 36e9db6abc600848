"""AR2 on a tiny BERT: phases alternate, the index refresh re-mines lists, a run killed mid-phase
resumes to the same weights as an uninterrupted one, and the joint_run CLI drives both methods."""

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
from jrr_pipeline.ml.training import TrainConfig
from jrr_pipeline.ml.training.adversarial import (
    RUN_FILE,
    AR2Config,
    RefreshData,
    _claim_work_dir,
    train_ar2,
)
from jrr_pipeline.ml.training.joint import AR2RetrieverTask, CandidateList, retriever_list_scores
from jrr_pipeline.ml.training.joint_run import load_joint_config, run_joint

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


def phase_config() -> TrainConfig:
    return TrainConfig(batch_size=4, lr=2e-3, warmup_ratio=0.0, seed=0, log_every=1,
                       checkpoint_every=1, head_lr_multiplier=3.0)


def run(tiny_model_dir, tmp_path, name, stop_after=None, refresh_every=1):
    retriever, reranker = models(tiny_model_dir)
    logs, iterations = [], []
    config = AR2Config(iterations=2, ranker_steps=2, retriever_steps=2, refresh_every=refresh_every,
                       refresh_top_k=8, lam=0.5, encode_batch_size=8)
    summary = train_ar2(retriever, reranker, initial_lists(), config, phase_config(),
                        phase_config(), tmp_path / name / "work", tmp_path / name / "out",
                        refresh_data=refresh_data(), progress=False, stop_after=stop_after,
                        on_log=lambda it, ph, step, m: logs.append((it, ph, step, m)),
                        on_iteration=lambda it, info: iterations.append((it, info)))
    return summary, logs, iterations, retriever, reranker


def test_phases_alternate_and_the_refresh_re_mines_lists(tiny_model_dir, tmp_path):
    summary, logs, iterations, retriever, _ = run(tiny_model_dir, tmp_path, "a")
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
    full, _, _, retriever_full, reranker_full = run(tiny_model_dir, tmp_path, "full")
    killed, _, _, _, _ = run(tiny_model_dir, tmp_path, "killed", stop_after=(1, "retriever", 1))
    assert full["completed"] and not killed["completed"]
    assert (tmp_path / "killed/work/iteration-001/retriever-state").is_dir()
    assert not (tmp_path / "killed/out").exists()
    resumed, logs, _, retriever_resumed, reranker_resumed = run(tiny_model_dir, tmp_path, "killed")
    assert resumed["completed"]
    assert [(it, ph, step) for it, ph, step, _ in logs] == [(1, "retriever", 2)]  # only what was left
    for a, b in ((retriever_full, retriever_resumed), (reranker_full, reranker_resumed)):
        for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
            assert torch.equal(x, y), name


def test_without_refresh_every_iteration_uses_the_given_lists(tiny_model_dir, tmp_path):
    summary, _, iterations, _, _ = run(tiny_model_dir, tmp_path, "static", refresh_every=0)
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
    with pytest.raises(ValueError, match="retriever_ce_weight"):
        AR2Config(retriever_ce_weight=-0.1)


def test_a_work_dir_of_another_configuration_is_refused_not_resumed(tmp_path):
    config = AR2Config(iterations=2, ranker_steps=2, retriever_steps=2)
    _claim_work_dir(tmp_path, config, phase_config(), phase_config())
    assert json.loads((tmp_path / RUN_FILE).read_text())["ar2"]["lam"] == 0.5
    _claim_work_dir(tmp_path, config, phase_config(), phase_config())  # the same run resumes
    changed = AR2Config(iterations=2, ranker_steps=2, retriever_steps=2, retriever_ce_weight=1.0)
    with pytest.raises(ValueError, match=r"ar2_run\.json: .*different configuration "
                                         r"\(changed: ar2\.retriever_ce_weight\)"):
        _claim_work_dir(tmp_path, changed, phase_config(), phase_config())


def write_tables(tmp_path):
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
    data = {}
    for name, frame in (("queries", queries), ("corpus", corpus), ("qrels", qrels),
                        ("candidates", candidates)):
        frame.write_parquet(tmp_path / f"{name}.parquet")
        data[name] = f"{name}.parquet"
    return data


@pytest.mark.parametrize("method", ["rocketqav2", "ar2"])
def test_joint_run_cli_trains_and_logs(tiny_model_dir, tmp_path, method):
    retriever, reranker = models(tiny_model_dir)
    retriever.save_pretrained(tmp_path / "r0")
    reranker.save_pretrained(tmp_path / "c0")
    config = {"method": method, "retriever": "r0", "reranker": "c0", "data": write_tables(tmp_path),
              "list_length": 3, "train": {"max_steps": 2, "batch_size": 2, "lr": 1e-3, "log_every": 1},
              "reranker_lr": 2e-3, "ar2": {"iterations": 2, "ranker_steps": 1, "retriever_steps": 1,
                                           "refresh_top_k": 8},
              "eval_split": "test", "serving": {"passage_max_length": 24},
              "output_dir": "out", "work_dir": "work", "metrics_file": "metrics.jsonl",
              "result_file": "result.json", "progress": False}
    (tmp_path / "joint.json").write_text(json.dumps(config))
    result = run_joint(tmp_path / "joint.json")
    assert result["lists"] == 6
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    phases = {r["phase"] for r in records}
    assert phases == ({"joint"} if method == "rocketqav2" else {"ranker", "retriever", "iteration"})
    saved = json.loads((tmp_path / "out/retriever/jrr_retriever.json").read_text()) \
        if (tmp_path / "out/retriever/jrr_retriever.json").exists() else None
    assert DenseRetriever.from_pretrained(str(tmp_path / "out/retriever")).config.passage_max_length == 24, saved
    # the saved reranker is the trained one (not a copy of c0), with c0's settings
    trained = CrossEncoderReranker.from_pretrained(str(tmp_path / "out/reranker"))
    assert trained.config == reranker.config
    pairs = list(zip(TOPICS, PASSAGES[:len(TOPICS)], strict=True))
    assert not torch.allclose(torch.from_numpy(trained.predict(pairs)),
                              torch.from_numpy(reranker.predict(pairs)))
    assert json.loads((tmp_path / "result.json").read_text())["method"] == method


def test_joint_config_errors_name_the_field(tmp_path):
    base = {"method": "rocketqav2", "retriever": "r", "reranker": "c", "output_dir": "o",
            "work_dir": "w", "data": {t: f"{t}.parquet" for t in
                                      ("queries", "corpus", "qrels", "candidates")}}
    for change, message in (({"method": "ance"}, "field 'method'"),
                            ({"lr": 1}, "field 'lr': unknown key"),
                            ({"ar2": {"lam": 2.0}}, "lam must be in"),
                            ({"list_length": 1}, "field 'list_length'"),
                            ({"rocketqav2": {"mood": "x"}}, "field 'rocketqav2.mood'")):
        path = tmp_path / "bad.json"
        path.write_text(json.dumps({**base, **change}))
        with pytest.raises(ValueError, match=message) as err:
            load_joint_config(path)
        assert str(path) in str(err.value)


def test_ar2_under_two_gloo_ranks(tiny_model_dir, tmp_path):
    """torchrun with 2 ranks: rank 0 refreshes the index, both ranks train every phase on the
    same lists and the run writes one pair of checkpoints."""
    from pathlib import Path

    from jrr_pipeline.ml.training import launch_torchrun

    repo = Path(__file__).resolve().parents[3]
    retriever, reranker = models(tiny_model_dir)
    retriever.save_pretrained(tmp_path / "r0")
    reranker.save_pretrained(tmp_path / "c0")
    config = {"method": "ar2", "retriever": "r0", "reranker": "c0", "data": write_tables(tmp_path),
              "list_length": 3, "train": {"batch_size": 2, "lr": 1e-3, "log_every": 1},
              "ar2": {"iterations": 2, "ranker_steps": 1, "retriever_steps": 1, "refresh_top_k": 8},
              "eval_split": "test", "output_dir": "out", "work_dir": "work",
              "metrics_file": "metrics.jsonl", "result_file": "result.json", "progress": False}
    (tmp_path / "joint.json").write_text(json.dumps(config))
    env = {"PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "CUDA_VISIBLE_DEVICES": ""}
    launch_torchrun(2, "jrr_pipeline.ml.training.joint_run", ["--config", str(tmp_path / "joint.json")],
                    env=env, cwd=repo, timeout=300)
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["method"] == "ar2" and len(result["iterations"]) == 2
    assert result["iterations"][1]["refreshed"] == 1.0
    assert len(json.loads((tmp_path / "work/iteration-001/lists.json").read_text())["lists"]) == 6
    assert (tmp_path / "out/retriever/config.json").exists()
    assert (tmp_path / "out/reranker/config.json").exists()
