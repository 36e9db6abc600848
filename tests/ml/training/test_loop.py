"""The generic loop: determinism, bit-exact resume (in-process and after SIGKILL), learning,
epoch/step accounting, bf16 autocast and the atomic final save."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from jrr_pipeline.ml.training import TrainConfig, latest_state_path, train

from .toy import ToyTask, eval_loss, make_examples, make_model
from .toy_worker import KILL_CONFIG

REPO = Path(__file__).resolve().parents[3]
CFG = TrainConfig(epochs=3, batch_size=4, lr=1e-2, warmup_ratio=0.2, checkpoint_every=3,
                  log_every=5, seed=7)


def _run(tmp_path: Path, name: str, config: TrainConfig = CFG, n: int = 30, **kwargs):
    model = make_model()
    result = train(ToyTask(model), make_examples(n), config, tmp_path / name, progress=False,
                   **kwargs)
    return model, result


def _assert_same(a: torch.nn.Module, b: torch.nn.Module) -> None:
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y), name


def _differs(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return any(not torch.equal(x, y) for x, y in zip(a.state_dict().values(),
                                                    b.state_dict().values(), strict=True))


def test_same_seed_same_weights_other_seed_differs(tmp_path) -> None:
    a, res = _run(tmp_path, "a")
    b, _ = _run(tmp_path, "b")
    c, _ = _run(tmp_path, "c", TrainConfig(**{**CFG.to_dict(), "seed": 8}))
    _assert_same(a, b)
    assert _differs(a, c)
    assert _differs(a, make_model())  # it trained at all
    assert res.completed and res.step == res.total_steps == 3 * 8  # ceil(30 / 4) = 8 per epoch
    saved = torch.load(tmp_path / "a" / "mlp.pt", weights_only=True)
    for key, value in a.state_dict().items():
        assert torch.equal(saved[key], value)


def test_resume_after_stop_is_bit_exact(tmp_path) -> None:
    full, _ = _run(tmp_path, "full")
    state = tmp_path / "state"
    _, partial = _run(tmp_path, "part", state_dir=state, stop_after_steps=10)
    assert not partial.completed and partial.step == 10
    assert not (tmp_path / "part").exists()  # no output from an interrupted run
    assert latest_state_path(state).name == "step-00000009"  # crosses an epoch boundary (8)
    resumed, result = _run(tmp_path, "part", state_dir=state)
    assert result.resumed_from_step == 9 and result.step == 24
    _assert_same(full, resumed)
    # a finished state resumes to a no-op that still writes the output
    again, result2 = _run(tmp_path, "again", state_dir=state)
    assert result2.resumed_from_step == 24
    _assert_same(full, again)


def test_resume_after_sigkill_is_bit_exact(tmp_path) -> None:
    out, state = tmp_path / "killed-out", tmp_path / "state"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.ml.training.toy_worker", str(out), str(state), "0.15"],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while latest_state_path(state) is None:
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "no checkpoint within 60 s"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    killed_at = int(latest_state_path(state).name.split("-")[1])
    assert 4 <= killed_at < KILL_CONFIG.max_steps and not out.exists()

    resumed = make_model()
    result = train(ToyTask(resumed), make_examples(30), KILL_CONFIG, out, state_dir=state,
                   progress=False)
    assert result.resumed_from_step == killed_at
    reference = make_model()
    train(ToyTask(reference), make_examples(30), KILL_CONFIG, tmp_path / "ref", progress=False)
    _assert_same(reference, resumed)


def test_resume_refuses_other_settings(tmp_path) -> None:
    state = tmp_path / "state"
    _run(tmp_path, "a", state_dir=state, stop_after_steps=3)
    with pytest.raises(ValueError, match="field 'batch_size'"):
        _run(tmp_path, "b", TrainConfig(**{**CFG.to_dict(), "batch_size": 5}), state_dir=state)


def test_loss_decreases_on_learnable_task(tmp_path) -> None:
    examples = make_examples(64)
    model = make_model()
    before = eval_loss(model, examples)
    losses: list[float] = []
    cfg = TrainConfig(epochs=15, batch_size=8, lr=1e-2, log_every=8, seed=0)
    train(ToyTask(model), examples, cfg, tmp_path / "o", progress=False,
          on_log=lambda step, m: losses.append(m["loss"]))
    assert eval_loss(model, examples) < 0.3 * before
    assert losses[-1] < 0.5 * losses[0]


def test_max_steps_overrides_epochs_and_batches_are_global(tmp_path) -> None:
    task = ToyTask(make_model())
    cfg = TrainConfig(epochs=1, max_steps=7, batch_size=4, seed=0)
    result = train(task, make_examples(10), cfg, tmp_path / "o", progress=False)
    assert result.step == 7 and result.epoch == 2  # 3 batches per epoch: 4, 4, 2
    assert task.batch_sizes == [4, 4, 2, 4, 4, 2, 4]


def test_max_steps_zero_means_the_epochs_decide(tmp_path) -> None:
    cfg = TrainConfig(epochs=2, batch_size=4, seed=0, max_steps=0)
    result = train(ToyTask(make_model()), make_examples(10), cfg, tmp_path / "o", progress=False)
    assert result.completed and result.step == result.total_steps == 2 * 3


def test_module_lr_multipliers_scale_a_modules_learning_rate(tmp_path) -> None:
    cfg = TrainConfig(epochs=1, batch_size=4, seed=0)
    frozen, _ = _run(tmp_path, "frozen", cfg, n=12, module_lr_multipliers={"mlp": 0.0})
    _assert_same(frozen, make_model())  # lr 0 for the only module: no change
    plain, _ = _run(tmp_path, "plain", cfg, n=12)
    same, _ = _run(tmp_path, "same", cfg, n=12, module_lr_multipliers={"mlp": 1.0})
    assert _differs(plain, make_model())
    _assert_same(same, plain)
    halved, _ = _run(tmp_path, "halved", cfg, n=12, module_lr_multipliers={"mlp": 0.5})
    assert _differs(halved, plain)


def test_bf16_on_uses_autocast_and_keeps_fp32_weights(tmp_path) -> None:
    model = make_model()
    dtypes: list[torch.dtype] = []
    model[0].register_forward_hook(lambda mod, inp, out: dtypes.append(out.dtype))
    cfg = TrainConfig(max_steps=3, batch_size=4, bf16="on", seed=0)
    result = train(ToyTask(model), make_examples(12), cfg, tmp_path / "o", progress=False)
    assert result.bf16 and dtypes == [torch.bfloat16] * 3
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert result.final_loss is not None and result.final_loss == result.final_loss  # not NaN


def test_failed_final_save_keeps_previous_output(tmp_path) -> None:
    out = tmp_path / "out"
    _run(tmp_path, "out", TrainConfig(max_steps=2, batch_size=4))
    good = (out / "mlp.pt").read_bytes()

    class BrokenSave(ToyTask):
        def save(self, output_dir: Path) -> None:
            Path(output_dir).mkdir()
            (Path(output_dir) / "mlp.pt").write_bytes(b"partial")
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        train(BrokenSave(make_model()), make_examples(8), TrainConfig(max_steps=2, batch_size=4),
              out, progress=False)
    assert (out / "mlp.pt").read_bytes() == good


def test_bad_inputs(tmp_path) -> None:
    with pytest.raises(ValueError, match="no training examples"):
        train(ToyTask(make_model()), [], TrainConfig(), tmp_path / "o", progress=False)
    with pytest.raises(TypeError, match="TrainingTask"):
        train(object(), make_examples(4), TrainConfig(), tmp_path / "o", progress=False)
    with pytest.raises(ValueError, match=r"train.warmup_ratio = 1.5: must be < 1"):
        TrainConfig(warmup_ratio=1.5)
    with pytest.raises(ValueError, match=r"cfg.json: train.lr = 'fast': expected float"):
        TrainConfig.from_dict({"lr": "fast"}, "cfg.json")
    with pytest.raises(ValueError, match=r"cfg.json: train.epoch: unknown setting"):
        TrainConfig.from_dict({"epoch": 2}, "cfg.json")
    with pytest.raises(ValueError, match=r"cfg.json: train.bf16 = 'maybe': expected one of"):
        TrainConfig.from_dict({"bf16": "maybe"}, "cfg.json")
    with pytest.raises(ValueError, match=r"train.lr = -1: must be > 0"):
        TrainConfig(lr=-1)
    with pytest.raises(ValueError, match=r"train.batch_size = 0: must be >= 1"):
        TrainConfig(batch_size=0)
    loaded = TrainConfig.from_dict({"max_steps": 0, "lr": 1}, "cfg.json")
    assert loaded.lr == 1.0 and isinstance(loaded.lr, float)


def test_every_config_field_has_a_default_and_help() -> None:
    fields = dataclasses.fields(TrainConfig)
    assert {f.name for f in fields} >= {
        "epochs", "max_steps", "batch_size", "lr", "weight_decay", "warmup_ratio",
        "max_grad_norm", "bf16", "gradient_checkpointing", "seed", "checkpoint_every",
        "log_every"}
    for f in fields:
        has_default = (f.default is not dataclasses.MISSING
                       or f.default_factory is not dataclasses.MISSING)
        assert has_default, f.name
        assert f.metadata.get("help"), f.name
    assert TrainConfig.from_dict(TrainConfig().to_dict()) == TrainConfig()
