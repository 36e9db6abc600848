"""The fully materialized home the kill and state faults work on, made once per session by an
uninterrupted ``jrr run`` process: the ci preset with the tiny random BERT as the warm-up base
model (so a whole run takes seconds) and checkpoints every few warm-up steps (so a killed
warm-up resumes)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.faults.jrr import copy_dataset, jrr_process


@dataclass
class FullRun:
    home: Path
    data: Path
    settings: Path  # the JRR_SETTINGS file every run on this home uses
    systems: dict  # the uninterrupted run's report: system -> measure -> value

    @property
    def env(self) -> dict[str, str]:
        return {"JRR_SETTINGS": str(self.settings)}


def tiny_settings(path: Path, model: Path) -> Path:
    path.write_text(f'[warmup_retriever]\nbase_model = "{model}"\nmax_steps = 12\n'
                    f'checkpoint_every = 3\n[warmup_reranker]\nbase_model = "{model}"\n')
    return path


def report_systems(home: Path) -> dict:
    return json.loads((home / "reports" / "toyset" / "evaluation.json").read_text())["systems"]


@pytest.fixture(scope="session")
def full_run(beir_dir: Path, tiny_model_dir: Path, tmp_path_factory) -> FullRun:
    root = tmp_path_factory.mktemp("full")
    settings = tiny_settings(root / "tiny.toml", tiny_model_dir)
    data = copy_dataset(beir_dir, root / "toyset")
    home = root / "home"
    with open(root / "run.log", "w") as log:
        proc = jrr_process(home, "run", str(data), "--preset", "ci", "--quiet",
                           env_extra={"JRR_SETTINGS": str(settings)}, stdout=log)
        assert proc.wait(timeout=900) == 0, (root / "run.log").read_text()[-3000:]
    return FullRun(home, data, settings, report_systems(home))
