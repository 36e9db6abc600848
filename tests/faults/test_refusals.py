"""What ``jrr`` refuses before any work: bad settings (``--set``, ``JRR_SETTINGS``), a bad
selection or dataset directory, an unusable ``JRR_HOME``. Each case: exit 2, the exact last line
naming STAGE.FIELD, the value and what is allowed (or the file, or the variable), no traceback,
no Dagster run and no warehouse."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.faults.jrr import copy_dataset, home_for, jrr


@dataclass(frozen=True)
class Refusal:
    name: str
    args: tuple[str, ...]  # after `jrr run DATA --preset ci`, unless `command` is set
    problem: str  # {d}: the dataset directory, {t}: this case's temporary directory
    settings: str | None = None  # JRR_SETTINGS file content
    env: dict[str, str] = field(default_factory=dict)  # variables set ({t} expanded)
    command: tuple[str, ...] = ()  # instead of `run DATA --preset ci`


def sets(*items: str) -> tuple[str, ...]:
    return tuple(a for item in items for a in ("--set", item))


REFUSALS = [
    Refusal("negative_lr", sets("warmup_retriever.lr=-1"),
            "--set: warmup_retriever.lr = -1: must be > 0"),
    Refusal("zero_batch_size", sets("warmup_retriever.batch_size=0"),
            "--set: warmup_retriever.batch_size = 0: must be >= 1"),
    Refusal("negative_max_steps", sets("warmup_retriever.max_steps=-5"),
            "--set: warmup_retriever.max_steps = -5: must be >= 0"),
    Refusal("unknown_method", sets("joint_models.method=foo"),
            "--set: joint_models.method = 'foo': expected one of 'rocketqav2', 'ar2'"),
    Refusal("fraction_above_one", sets("denoised_candidates.denoised_ratio=1.5"),
            "--set: denoised_candidates.denoised_ratio = 1.5: must be <= 1"),
    Refusal("zero_threshold", sets("denoised_candidates.tau_neg=0"),
            "--set: denoised_candidates.tau_neg = 0: must be > 0"),
    Refusal("fusion_weight", sets("evaluation_report.rerank_fusion_weight=2"),
            "--set: evaluation_report.rerank_fusion_weight = 2: must be <= 1"),
    Refusal("nan_lr", sets("warmup_reranker.lr=nan"),
            "--set: warmup_reranker.lr = nan: must be a finite number"),
    Refusal("faiss_factory", sets("faiss_index.factory=HNSWx"),
            "--set: faiss_index.factory = 'HNSWx': not a FAISS index_factory string (e.g. Flat, "
            "HNSW32, IVF64,Flat, IVF256,PQ16)"),
    Refusal("unknown_split", sets("dense_negatives.split=tset"),
            "--set: dense_negatives.split = 'tset': expected one of 'train', 'dev', 'test'"),
    Refusal("no_sources", sets("denoised_candidates.sources=[]"),
            "--set: denoised_candidates.sources = []: name at least one of 'bm25', 'dense'"),
    Refusal("unknown_pooling", sets("warmup_retriever.pooling=max"),
            "--set: warmup_retriever.pooling = 'max': expected one of 'mean', 'cls'"),
    Refusal("window_upside_down", sets("warmup_retriever.rank_window_start=50"),
            "--set: warmup_retriever.rank_window_start = 50: must be <= rank_window_end (20)"),
    Refusal("misspelt_field", sets("warmup_retriever.lrr=1"),
            "--set: warmup_retriever.lrr: unknown setting (did you mean 'lr'?)"),
    Refusal("misspelt_stage", sets("joint.method=ar2"),
            "--set: unknown stage 'joint' (did you mean 'joint_models'?)"),
    Refusal("no_field", sets("lr=1"),
            "--set 'lr=1': expected STAGE.FIELD=VALUE, e.g. warmup_reranker.lr=3e-5 or "
            "dataset.columns.doc_id=id"),
    Refusal("not_a_table", sets("warmup_retriever.lr.x=1"),
            "--set 'warmup_retriever.lr.x=1': warmup_retriever.lr is not a table; "
            "STAGE.FIELD.KEY=VALUE sets an entry of a table setting"),
    Refusal("unknown_column_role", sets("dataset.columns.docid=id"),
            "--set: dataset.columns.docid: not a field of the column mapping (did you mean "
            "'doc_id'?)"),
    Refusal("unknown_format", sets("dataset.format=xml"),
            "--set: dataset.format = 'xml': expected one of 'auto', 'beir', 'msmarco', 'tabular'"),
    Refusal("settings_file_missing", (), "{t}/nowhere.toml: settings file not found "
            "(JRR_SETTINGS)", env={"JRR_SETTINGS": "{t}/nowhere.toml"}),
    Refusal("settings_file_not_toml", (), "{t}/jrr.toml: not valid TOML (JRR_SETTINGS): "
            "Expected ']' at the end of a table declaration (at line 1, column 17)",
            settings="[warmup_reranker\nlr = 3e-5\n"),
    Refusal("settings_file_bad_value", (), "{t}/jrr.toml (JRR_SETTINGS): warmup_reranker.lr = "
            "-0.1: must be > 0", settings="[warmup_reranker]\nlr = -0.1\n"),
    Refusal("settings_file_stage_not_a_table", (), "{t}/jrr.toml: 'warmup_reranker' must be a "
            "table [warmup_reranker] of field = value (JRR_SETTINGS)",
            settings="warmup_reranker = 3\n"),
    Refusal("settings_shows_it_too", (), "--set: joint_models.method = 'foo': expected one of "
            "'rocketqav2', 'ar2'", command=("settings", *sets("joint_models.method=foo"))),
    Refusal("unknown_selection", ("--select", "no_such_asset"),
            "--select 'no_such_asset': not a selection of these assets: bm25_index, "
            "bm25_negatives, corpus, denoised_candidates, dense_negatives, evaluation_report, "
            "faiss_index, joint_reranker, joint_retriever, qrels, queries, warmup_reranker, "
            "warmup_retriever (e.g. 'joint_retriever*': it and everything below it)"),
    Refusal("missing_dataset_dir", (), "{t}/nowhere: no such dataset directory",
            command=("run", "{t}/nowhere", "--preset", "ci")),
    Refusal("dataset_dir_is_a_file", (), "{t}/jrr.toml: no such dataset directory",
            settings="", command=("run", "{t}/jrr.toml", "--preset", "ci")),
    Refusal("jrr_home_is_a_file", (), "JRR_HOME={t}/jrr.toml: {t}/jrr.toml: exists and is not "
            "a directory; point JRR_HOME at a directory jrr may create and write",
            settings="", env={"JRR_HOME": "{t}/jrr.toml"}),
    Refusal("jrr_home_below_a_file", (), "JRR_HOME={t}/jrr.toml/home: {t}/jrr.toml/home: Not a "
            "directory; point JRR_HOME at a directory jrr may create and write",
            settings="", env={"JRR_HOME": "{t}/jrr.toml/home"}),
]


@pytest.fixture(scope="module")
def fresh(beir_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """A home nothing has run in, and the toy dataset."""
    root = tmp_path_factory.mktemp("refusals")
    with home_for(root) as (home, _monkeypatch):
        yield home, copy_dataset(beir_dir, root / "toyset")


@pytest.mark.parametrize("case", REFUSALS, ids=lambda c: c.name)
def test_refused_at_once_with_one_line(fresh, case, tmp_path, monkeypatch):
    home, data = fresh
    expand = {"d": data, "t": tmp_path}
    if case.settings is not None:
        (tmp_path / "jrr.toml").write_text(case.settings)
        monkeypatch.setenv("JRR_SETTINGS", str(tmp_path / "jrr.toml"))
    for name, value in case.env.items():
        monkeypatch.setenv(name, value.format(**expand))
    if "JRR_HOME" in case.env:
        monkeypatch.delenv("DAGSTER_HOME")
    command = [a.format(**expand) for a in case.command] or ["run", str(data), "--preset", "ci"]
    result = jrr(*command, *case.args)
    result.assert_clean_error(2, case.problem.format(**expand), during_run=False)
    assert not (home / "warehouse.duckdb").exists()
    assert _runs(home) == 0


def _runs(home: Path) -> int:
    from dagster import DagsterInstance

    with DagsterInstance.from_config(str(home / "dagster")) as instance:
        return instance.get_runs_count()
