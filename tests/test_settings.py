"""User settings over presets: parsing, validation, and their effect on code versions."""

from __future__ import annotations

from pathlib import Path

import pytest
from dagster import AssetKey

from jrr_pipeline.pipeline import build_definitions
from jrr_pipeline.presets import load_settings, merge_settings, parse_assignments


def code_versions(settings: dict) -> dict[str, str]:
    graph = build_definitions("ci", "", settings).resolve_asset_graph()
    return {k.to_user_string(): graph.get(k).code_version for k in graph.materializable_asset_keys}


def test_assignments_parse_json_values():
    assert parse_assignments(["warmup_reranker.lr=3e-5", "dense_negatives.factory=HNSW32",
                              "warmup_retriever.normalize=false"]) == {
        "warmup_reranker": {"lr": 3e-5}, "dense_negatives": {"factory": "HNSW32"},
        "warmup_retriever": {"normalize": False}}
    with pytest.raises(ValueError, match="ASSET.FIELD=VALUE"):
        parse_assignments(["lr=3e-5"])


def test_settings_file_and_merge(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / "jrr.toml"
    path.write_text("[warmup_reranker]\nlr = 3e-5\nepochs = 2\n")
    monkeypatch.setenv("JRR_SETTINGS", str(path))
    assert merge_settings(load_settings(), {"warmup_reranker": {"lr": 1e-5}}) == {
        "warmup_reranker": {"lr": 1e-5, "epochs": 2}}
    path.write_text("[warmup_reranker\nlr = 3e-5\n")
    with pytest.raises(ValueError, match=str(path)):
        load_settings()


def test_one_reranker_setting_changes_only_the_reranker_code_version():
    base = code_versions({})
    changed = code_versions({"warmup_reranker": {"lr": 3e-4}})
    assert {k for k in base if base[k] != changed[k]} == {"warmup_reranker"}
    graph = build_definitions("ci", "", {"warmup_reranker": {"lr": 3e-4}}).resolve_asset_graph()
    assert graph.get(AssetKey("warmup_reranker")).code_version == changed["warmup_reranker"]


@pytest.mark.parametrize("settings, message", [
    ({"no_such_asset": {"lr": 1}}, "unknown asset no_such_asset"),
    ({"warmup_reranker": {"no_such_field": 1}}, "no_such_field"),
    ({"warmup_reranker": {"batch_size": "many"}}, "warmup_reranker.batch_size"),
])
def test_bad_settings_fail_loudly(settings: dict, message: str):
    with pytest.raises(ValueError, match=message):
        build_definitions("ci", "", settings)


def test_pools_on_assets_and_in_the_instance_config(jrr_env: Path):
    from jrr_pipeline.resources.home import dagster_home

    graph = build_definitions("ci", "").resolve_asset_graph()
    pools = {k.to_user_string(): graph.get(k).pools for k in graph.materializable_asset_keys}
    for name in ("warmup_retriever", "warmup_reranker", "dense_negatives", "joint_retriever",
                 "joint_reranker", "faiss_index", "evaluation_report"):
        assert pools[name] == {"jrr_device"}, name
    for name in ("corpus", "bm25_index", "bm25_negatives"):
        assert pools[name] == {"jrr_warehouse"}, name
    config = (dagster_home() / "dagster.yaml").read_text()
    assert "default_limit: 1" in config
