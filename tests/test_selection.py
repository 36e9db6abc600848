"""Model selection reads dev only: a dev split carved from train, and test qrels that cannot reach
training (shuffling them leaves every trained weight bit-identical)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import duckdb
import pytest
from dagster import AssetKey, instance_for_test

from jrr_pipeline.ops.runner import run_pipeline
from tests.conftest import isolate_home

TRAINED = ("warmup_retriever", "warmup_reranker", "joint_retriever", "joint_reranker")


def weights(home: Path) -> dict[str, str]:
    root = home / "artifacts" / "toyset"
    return {name: hashlib.sha256((root / name / "model.safetensors").read_bytes()).hexdigest()
            for name in TRAINED}


def materialize(root: Path, data: Path, monkeypatch) -> tuple[Path, object]:
    home = isolate_home(root, monkeypatch)
    (home / "dagster").mkdir(parents=True)
    with instance_for_test(temp_dir=str(home / "dagster")) as instance:
        outcome = run_pipeline(str(data), preset="ci", echo=None, instance=instance,
                               select="*joint_reranker")
        assert outcome.success, outcome.failure
        event = instance.get_latest_materialization_event(AssetKey("qrels"))
        origin = event.asset_materialization.metadata["dev_origin"].value
    return home, origin


def shuffle_test_qrels(data: Path) -> None:
    """Every test query now points at another test query's document."""
    path = data / "qrels" / "test.tsv"
    header, *rows = path.read_text().splitlines()
    cells = [r.split("\t") for r in rows]
    docs = [c[1] for c in cells]
    docs = docs[1:] + docs[:1]
    path.write_text("\n".join([header] + [f"{c[0]}\t{d}\t{c[2]}"
                                          for c, d in zip(cells, docs, strict=True)]) + "\n")


def test_test_qrels_cannot_reach_training(beir_dir, tmp_path, monkeypatch):
    a, b = tmp_path / "a" / "toyset", tmp_path / "b" / "toyset"
    shutil.copytree(beir_dir, a)
    shutil.copytree(beir_dir, b)
    shuffle_test_qrels(b)
    assert (a / "qrels/test.tsv").read_text() != (b / "qrels/test.tsv").read_text()
    home_a, origin = materialize(tmp_path / "a", a, monkeypatch)
    home_b, _ = materialize(tmp_path / "b", b, monkeypatch)
    assert weights(home_a) == weights(home_b)

    assert origin == "carved from train"
    con = duckdb.connect(str(home_a / "warehouse.duckdb"), read_only=True)
    per_split = dict(con.execute("select split, count(distinct query_id) from qrels "
                                 "group by split").fetchall())
    trained_on = {q for (q,) in con.execute("select distinct query_id from negatives").fetchall()}
    dev = {q for (q,) in con.execute("select distinct query_id from qrels "
                                     "where split = 'dev'").fetchall()}
    con.close()
    assert per_split == {"train": 36, "dev": 4, "test": 20}  # ci preset: 4 dev queries
    assert trained_on and not trained_on & dev


@pytest.fixture(autouse=True)
def _cwd(tmp_path, monkeypatch):
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
