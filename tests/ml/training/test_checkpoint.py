"""Full training-state checkpoints: roundtrip, keep-latest, crash safety, clear errors."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from jrr_pipeline.ml.training import checkpoint as ckpt
from jrr_pipeline.ml.training.checkpoint import (
    TrainState,
    capture_rng_state,
    latest_state_path,
    load_training_state,
    restore_rng_state,
    save_training_state,
)
from jrr_pipeline.ml.training.schedule import build_optimizer, build_scheduler

from .toy import make_model


def _parts(seed: int = 0):
    model = make_model(seed)
    opt = build_optimizer(model.named_parameters(), 1e-3, 0.01)
    sched = build_scheduler(opt, 10, 0.1)
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    sched.step()
    return model, opt, sched


def _save(state_dir, step, model, opt, sched):
    state = TrainState(step=step, epoch=1, batch_in_epoch=2, total_steps=10, seed=5)
    return save_training_state(state_dir, state, {"mlp": model}, opt, sched, [capture_rng_state()])


def test_roundtrip_and_only_latest_kept(tmp_path) -> None:
    model, opt, sched = _parts()
    _save(tmp_path, 3, model, opt, sched)
    path = _save(tmp_path, 6, model, opt, sched)
    assert path.name == "step-00000006"
    assert [p.name for p in tmp_path.iterdir()] == ["step-00000006"]
    loaded = load_training_state(tmp_path)
    assert loaded is not None and loaded.path == path
    assert (loaded.state.step, loaded.state.epoch, loaded.state.batch_in_epoch) == (6, 1, 2)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.modules["mlp"][key], value)
    fresh, fresh_opt, fresh_sched = _parts(seed=1)
    fresh.load_state_dict(loaded.modules["mlp"])
    fresh_opt.load_state_dict(loaded.optimizer)
    fresh_sched.load_state_dict(loaded.scheduler)
    assert fresh_sched.last_epoch == sched.last_epoch
    exp_avg = opt.state[opt.param_groups[0]["params"][0]]["exp_avg"]
    assert torch.equal(fresh_opt.state[fresh_opt.param_groups[0]["params"][0]]["exp_avg"], exp_avg)


def test_no_state_is_none(tmp_path) -> None:
    assert load_training_state(tmp_path / "missing") is None
    assert latest_state_path(tmp_path) is None


def test_crash_during_save_keeps_previous_state(tmp_path, monkeypatch) -> None:
    model, opt, sched = _parts()
    _save(tmp_path, 3, model, opt, sched)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    real_save = ckpt._torch_save

    def crash_on_optimizer(obj, path):
        if path.name == "optimizer.pt":
            path.write_bytes(b"half-written")
            raise KeyboardInterrupt("simulated crash")
        real_save(obj, path)

    monkeypatch.setattr(ckpt, "_torch_save", crash_on_optimizer)
    with pytest.raises(KeyboardInterrupt):
        _save(tmp_path, 6, model, opt, sched)
    assert [p.name for p in tmp_path.iterdir()] == ["step-00000003"]  # temp dir cleaned up
    loaded = load_training_state(tmp_path)
    assert loaded.state.step == 3
    for key, value in before.items():
        assert torch.equal(loaded.modules["mlp"][key], value)


def test_leftover_temp_dir_is_ignored(tmp_path) -> None:
    model, opt, sched = _parts()
    _save(tmp_path, 3, model, opt, sched)
    killed = tmp_path / ".step-00000006.tmp-killed"  # what a SIGKILL mid-save leaves behind
    older = tmp_path / ".tmp-killed"  # the same, from before saves went through ml.io
    for leftover in (killed, older):
        leftover.mkdir()
        (leftover / "optimizer.pt").write_bytes(b"junk")
    assert load_training_state(tmp_path).state.step == 3
    _save(tmp_path, 6, model, opt, sched)
    assert not killed.exists() and not older.exists()
    _save(tmp_path, 6, model, opt, sched)  # the same step again (final save after a periodic one)
    assert [p.name for p in tmp_path.iterdir()] == ["step-00000006"]


def test_corrupt_file_error_names_it(tmp_path) -> None:
    model, opt, sched = _parts()
    path = _save(tmp_path, 3, model, opt, sched)
    (path / "optimizer.pt").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="optimizer.pt"):
        load_training_state(tmp_path)
    (path / "optimizer.pt").unlink()
    with pytest.raises(FileNotFoundError, match="optimizer.pt"):
        load_training_state(tmp_path)
    (path / "state.json").write_text("{bad json")
    with pytest.raises(ValueError, match="state.json"):
        load_training_state(tmp_path)


def test_rng_roundtrip() -> None:
    saved = capture_rng_state()
    first = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    restore_rng_state(saved)
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == first


