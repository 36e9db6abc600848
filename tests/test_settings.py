"""Settings: presets and user settings over the typed stages, their round trips, validation, and
code versions that follow results (not help texts, comments or docstrings)."""

from __future__ import annotations

import dataclasses
import json
import tomllib
import typing
from pathlib import Path

import pytest
from dagster import AssetKey

from jrr_pipeline import settings as settings_module
from jrr_pipeline.assets.common import stage_config
from jrr_pipeline.ml.settings import STAGES, Settings
from jrr_pipeline.pipeline import build_definitions
from jrr_pipeline.settings import (
    PRESETS,
    code_version,
    load_settings,
    merge_settings,
    normalized_code,
    parse_assignments,
    resolve_settings,
    to_toml,
)


def code_versions(settings: dict, preset: str = "ci") -> dict[str, str]:
    graph = build_definitions(preset, "", settings).resolve_asset_graph()
    return {k.to_user_string(): graph.get(k).code_version for k in graph.materializable_asset_keys}


def changed_everywhere(settings: Settings) -> Settings:
    """``settings`` with every knob set to another valid value."""
    hints = typing.get_type_hints(type(settings))
    values = {}
    for f in dataclasses.fields(settings):
        value, kind = getattr(settings, f.name), hints[f.name]
        if typing.get_origin(kind) is typing.Literal:
            value = next(c for c in typing.get_args(kind) if c != value)
        elif kind is bool:
            value = not value
        elif kind is int:
            value = value + 1
        elif kind is float:
            bounds = f.metadata["bounds"]
            value = value / 2 if value > bounds.get("ge", bounds.get("gt", -1e9)) + 1e-9 else 0.5
        elif kind is str:
            value = {"stemmer": "german", "stopwords": "", "factory": "HNSW32"}.get(
                f.name, value + "_x")
        elif typing.get_origin(kind) is list:
            value = value[:1]
        elif typing.get_origin(kind) is dict:
            value = {"doc_id": "id"}
        values[f.name] = value
    if "retriever_in_batch" in values:  # needs a retriever CE term to widen
        values["retriever_ce_weight"] = 0.5
    if "tau_pos" in values:
        values["tau_pos"] = 0.95
    if "columns" in values:  # a column mapping applies to the tabular layout
        values["format"] = "tabular"
    return type(settings)(**values)


def test_assignments_parse_json_values():
    assert parse_assignments(["warmup_reranker.lr=3e-5", "dense_negatives.factory=HNSW32",
                              "warmup_retriever.normalize=false"]) == {
        "warmup_reranker": {"lr": 3e-5}, "dense_negatives": {"factory": "HNSW32"},
        "warmup_retriever": {"normalize": False}}
    with pytest.raises(ValueError, match="STAGE.FIELD=VALUE"):
        parse_assignments(["lr=3e-5"])


def test_assignments_for_table_knobs_and_text_knobs():
    """``STAGE.FIELD.KEY=V`` sets one entry of a table knob; text knobs keep their text."""
    assert parse_assignments(["dataset.columns.doc_id=id", "dataset.columns.text=123",
                              "bm25_index.stemmer=\"german\"", "warmup_retriever.lr=nan"]) == {
        "dataset": {"columns": {"doc_id": "id", "text": "123"}},
        "bm25_index": {"stemmer": "german"}, "warmup_retriever": {"lr": pytest.approx(float("nan"),
                                                                                   nan_ok=True)}}
    with pytest.raises(ValueError, match="warmup_retriever.lr is not a table"):
        parse_assignments(["warmup_retriever.lr.x=1"])


def test_column_mapping_merges_entry_by_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / "jrr.toml"
    path.write_text('[dataset]\nformat = "tabular"\n[dataset.columns]\ndoc_id = "id"\n'
                    'text = "body"\n')
    monkeypatch.setenv("JRR_SETTINGS", str(path))
    user = settings_module.user_settings(["dataset.columns.text=abstract"], "ci")
    assert user["dataset"] == {"format": "tabular",
                               "columns": {"doc_id": "id", "text": "abstract"}}
    resolved = resolve_settings("ci", user)
    assert resolve_settings("ci", tomllib.loads(to_toml(resolved, "ci", user))) == resolved


def test_a_bad_value_names_where_it_came_from(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / "jrr.toml"
    path.write_text("[faiss_index]\nfactory = \"IVF\"\n")
    monkeypatch.setenv("JRR_SETTINGS", str(path))
    with pytest.raises(ValueError, match=rf"^{path} \(JRR_SETTINGS\): faiss_index.factory = "
                                         r"'IVF': not a FAISS index_factory string"):
        settings_module.user_settings([], "ci")
    monkeypatch.delenv("JRR_SETTINGS")
    with pytest.raises(ValueError, match=r"^--set: dataset.columns.docid: not a field of the "
                                         r"column mapping \(did you mean 'doc_id'\?\)"):
        settings_module.user_settings(["dataset.columns.docid=id"], "ci")


def test_settings_file_and_merge(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / "jrr.toml"
    path.write_text("[warmup_reranker]\nlr = 3e-5\nepochs = 2\n")
    monkeypatch.setenv("JRR_SETTINGS", str(path))
    assert merge_settings(load_settings(), {"warmup_reranker": {"lr": 1e-5}}) == {
        "warmup_reranker": {"lr": 1e-5, "epochs": 2}}
    path.write_text("[warmup_reranker\nlr = 3e-5\n")
    with pytest.raises(ValueError, match=str(path)):
        load_settings()


@pytest.mark.parametrize("preset", list(PRESETS))
def test_presets_only_name_real_knobs_that_differ_from_the_defaults(preset):
    for stage, values in PRESETS[preset].items():
        defaults = STAGES[stage].defaults()
        for name, value in values.items():
            assert name in defaults, f"{preset}: {stage}.{name}"
            assert defaults[name] != value, f"{preset}: {stage}.{name} repeats the default"
    resolved = resolve_settings(preset)
    assert resolved["joint_models"].method == "rocketqav2"


@pytest.mark.parametrize("stage", list(STAGES))
def test_every_knob_round_trips_config_json_and_back(stage):
    """Dagster Config -> settings -> run-file JSON -> settings, with every knob changed."""
    settings = changed_everywhere(resolve_settings("cpu")[stage])
    for f in dataclasses.fields(settings):
        assert f.metadata.get("help"), f"{stage}.{f.name} has no help text"
    config = stage_config(settings)()
    assert set(config.model_dump()) == {f.name for f in dataclasses.fields(settings)}
    assert config.settings() == settings
    assert STAGES[stage].from_dict(json.loads(json.dumps(settings.to_dict()))) == settings


@pytest.mark.parametrize("preset", list(PRESETS))
def test_the_printed_toml_reads_back_to_the_same_settings(preset):
    resolved = resolve_settings(preset, {"joint_models": {"method": "ar2"}})
    text = to_toml(resolved, preset, {"joint_models": {"method": "ar2"}})
    assert 'method = "ar2"  # joint training method [set]' in text
    assert resolve_settings(preset, tomllib.loads(text)) == resolved


def test_jrr_settings_prints_what_a_preset_means(capsys, tmp_path, monkeypatch):
    from jrr_pipeline.cli import main

    monkeypatch.setenv("JRR_HOME", str(tmp_path / "home"))
    assert main(["settings", "--preset", "cpu", "--set", "evaluation_report.depth=50"]) == 0
    out = capsys.readouterr().out
    parsed = tomllib.loads(out)
    assert parsed["joint_models"]["reranker_lr"] == PRESETS["cpu"]["joint_models"]["reranker_lr"]
    assert parsed["evaluation_report"]["depth"] == 50
    assert "rerank_depth = 20  # " in out and "[cpu]" in out
    assert main(["settings", "--set", "warmup_retriever.lr=-1"]) == 2
    assert "warmup_retriever.lr = -1: must be > 0" in capsys.readouterr().err


def test_one_reranker_setting_changes_only_the_reranker_code_version():
    base = code_versions({})
    changed = code_versions({"warmup_reranker": {"lr": 3e-4}})
    assert {k for k in base if base[k] != changed[k]} == {"warmup_reranker"}
    graph = build_definitions("ci", "", {"warmup_reranker": {"lr": 3e-4}}).resolve_asset_graph()
    assert graph.get(AssetKey("warmup_reranker")).code_version == changed["warmup_reranker"]


def test_augment_weight_re_runs_the_training_stages_not_the_game():
    base = code_versions({"generation": {"labels": "augment"}})
    changed = code_versions({"generation": {"labels": "augment", "augment_weight": 0.25}})
    differ = {k for k in base if base[k] != changed[k]}
    assert "query_generator" in base and "generated_queries" in base
    assert not differ & {"query_generator", "generated_queries", "corpus", "bm25_index"}
    assert {"warmup_retriever", "warmup_reranker", "joint_retriever"} <= differ
    seed = code_versions({"generation": {"labels": "augment", "seed": 7}})
    assert seed["query_generator"] != base["query_generator"]  # what the game reads still counts


@pytest.mark.parametrize("settings, message", [
    ({"no_such_asset": {"lr": 1}}, "unknown stage 'no_such_asset'"),
    ({"warmup_reranker": {"no_such_field": 1}}, "warmup_reranker.no_such_field: unknown setting"),
    ({"warmup_reranker": {"batch_size": "many"}}, "warmup_reranker.batch_size = 'many': expected int"),
    ({"warmup_retriever": {"lr": -1}}, "warmup_retriever.lr = -1: must be > 0"),
    ({"warmup_retriever": {"max_steps": -5}}, "warmup_retriever.max_steps = -5: must be >= 0"),
    ({"joint_models": {"method": "foo"}}, "joint_models.method = 'foo': expected one of"),
    ({"denoised_candidates": {"tau_neg": 1.5}}, "denoised_candidates.tau_neg = 1.5: must be <= 1"),
    ({"warmup_reranker": {"lr": float("inf")}}, "warmup_reranker.lr = inf: must be a finite"),
    ({"bm25_negatives": {"split": "tset"}}, "bm25_negatives.split = 'tset': expected one of"),
    ({"denoised_candidates": {"sources": ["bm25", "sparse"]}},
     r"denoised_candidates.sources = \['bm25', 'sparse'\]: expected a list of 'bm25', 'dense'"),
    ({"dense_negatives": {"factory": "HNSWx"}}, "not a FAISS index_factory string"),
    ({"dataset": {"format": "beir", "columns": {"doc_id": "id"}}},
     "dataset.columns: the beir layout has fixed field names"),
    ({"dataset": {"columns": {"text": ""}}}, r"dataset.columns.text = '': needs a column name"),
])
def test_bad_settings_fail_before_any_work(settings: dict, message: str):
    with pytest.raises(ValueError, match=message):
        build_definitions("ci", "", settings)


COSMETIC = '''
import os


def area(r):
    """Area of a circle."""  # a docstring
    # a comment
    return 3.14 * r * r  # another comment


class Cfg:
    """Settings."""

    x: int = knob(1, "what x does", ge=0)
    y: int = Field(default=2, description="what y does")
    z: int = field(default=3, metadata={"help": "what z does"})
'''


@pytest.mark.parametrize("edit, same", [
    (lambda s: s.replace("# a comment", "# another comment entirely"), True),
    (lambda s: s.replace('"""Area of a circle."""', '"""Area: pi r^2."""'), True),
    (lambda s: s.replace('"what x does"', '"what x does, measured on SciFact: 0.74"'), True),
    (lambda s: s.replace('"what y does"', '"y!"'), True),
    (lambda s: s.replace('"what z does"', '"z!"'), True),
    (lambda s: s.replace("\n\n\nclass", "\n\n\n\nclass"), True),
    (lambda s: s.replace("3.14 * r * r", "3.1416 * r * r"), False),
    (lambda s: s.replace("knob(1,", "knob(2,"), False),
    (lambda s: s.replace("ge=0", "ge=1"), False),
])
def test_normalized_code_ignores_cosmetics_only(edit, same):
    assert (normalized_code(edit(COSMETIC)) == normalized_code(COSMETIC)) is same


def test_cosmetic_edits_of_an_asset_module_stale_nothing(monkeypatch):
    module = "jrr_pipeline.assets.warmup"
    real = settings_module.module_source(module)
    base = code_versions({})

    def versions_with(source: str) -> dict[str, str]:
        monkeypatch.setattr(settings_module, "module_source",
                            lambda name: source if name == module else real_source(name))
        settings_module.module_code_hash.cache_clear()
        try:
            return code_versions({})
        finally:
            settings_module.module_code_hash.cache_clear()

    real_source = settings_module.module_source
    cosmetic = real.replace('"""[warmup]', '# edited\n"""[warmup] (edited docstring)').replace(
        "InfoNCE over 1 positive", "InfoNCE (edited help) over 1 positive")
    assert cosmetic != real and versions_with(cosmetic) == base
    reformatted = real.replace('tables["negatives"] = warehouse.query(',
                               'tables["negatives"] = warehouse.query(  # a comment\n        ')
    assert reformatted != real and versions_with(reformatted) == base
    edited = real.replace("source = 'bm25'", "source = 'bm25' AND rank > 0")
    changed = versions_with(edited)
    assert {k for k in base if base[k] != changed[k]} == {"warmup_retriever", "warmup_reranker"}


def test_a_changed_default_stales_that_stage_only(monkeypatch):
    base = code_versions({})
    table = {**PRESETS["ci"], "faiss_index": {**PRESETS["ci"]["faiss_index"], "nprobe": 8}}
    monkeypatch.setitem(PRESETS, "ci", table)
    changed = code_versions({})
    assert {k for k in base if base[k] != changed[k]} == {"faiss_index"}


def test_code_version_hashes_values_not_help():
    settings = resolve_settings("ci")["faiss_index"]
    assert code_version(settings, "jrr_pipeline.ml.index") == code_version(
        type(settings)(**settings.to_dict()), "jrr_pipeline.ml.index")
    assert code_version(settings, "jrr_pipeline.ml.index") != code_version(
        settings.replace(nprobe=settings.nprobe + 1), "jrr_pipeline.ml.index")


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


def test_group_names_are_the_asset_module_names():
    import importlib

    graph = build_definitions("ci", "").resolve_asset_graph()
    groups = {k.to_user_string(): graph.get(k).group_name for k in graph.materializable_asset_keys}
    assert groups == {
        "corpus": "data", "queries": "data", "qrels": "data", "bm25_index": "negatives",
        "bm25_negatives": "negatives", "dense_negatives": "negatives",
        "warmup_retriever": "warmup", "warmup_reranker": "warmup",
        "denoised_candidates": "candidates", "joint_retriever": "joint",
        "joint_reranker": "joint", "faiss_index": "serving", "evaluation_report": "evaluation"}
    for group in set(groups.values()):
        assert group == importlib.import_module(f"jrr_pipeline.assets.{group}").GROUP


def test_negative_strategies_are_knobs_of_jrr_settings(capsys, tmp_path, monkeypatch):
    from jrr_pipeline.cli import main

    monkeypatch.setenv("JRR_HOME", str(tmp_path / "home"))
    assert main(["settings", "--preset", "cpu", "--set", "warmup_retriever.negatives=cache",
                 "--set", "joint_models.sampler=simans"]) == 0
    parsed = tomllib.loads(capsys.readouterr().out)
    retriever, joint = parsed["warmup_retriever"], parsed["joint_models"]
    # the cpu preset's warm-up draws SimANS negatives (chosen on SciFact dev, docs/results.md)
    assert (retriever["sampler"], retriever["batching"], retriever["negatives"]) == (
        "simans", "random", "cache")
    assert {"simans_a", "simans_b", "denoised_tau_neg", "score_depth", "tas_clusters",
            "tas_bins", "cache_size", "cache_refresh"} <= set(retriever)
    assert joint["sampler"] == "simans" and {"simans_a", "denoised_tau_neg"} <= set(joint)
    assert main(["settings", "--set", "warmup_retriever.sampler=hardest"]) == 2
    assert "warmup_retriever.sampler = 'hardest': expected one of" in capsys.readouterr().err


@pytest.mark.parametrize("change, reads_reranker", [
    ({}, False), ({"sampler": "simans"}, False), ({"negatives": "cache"}, False),
    ({"sampler": "denoised"}, True), ({"batching": "tas_balanced"}, True)])
def test_the_warmup_reranker_is_an_input_only_where_a_strategy_reads_it(change, reads_reranker):
    graph = build_definitions("ci", "", {"warmup_retriever": change}).resolve_asset_graph()
    parents = {k.to_user_string() for k in graph.get(AssetKey("warmup_retriever")).parent_keys}
    assert ("warmup_reranker" in parents) is reads_reranker
    assert {"bm25_negatives", "corpus", "queries", "qrels"} <= parents
