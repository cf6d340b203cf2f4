"""``grpo.rollout_engine: auto``: which engine it picks and why, the schema key, and run_grpo's choice on CPU."""

import copy
import os
from types import SimpleNamespace

import pytest
import torch
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from grpo_vqa.config import ConfigError, validate_config  # noqa: E402
from grpo_vqa.rollout.config import ENGINE_CHOICES, SUPPORTED_MODEL_TYPES, choose_engine  # noqa: E402
from grpo_vqa.training import grpo as grpo_mod  # noqa: E402
from grpo_vqa.training.common import TrainJob  # noqa: E402

DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), "..", "config", "config.yaml")


def test_explicit_engines_are_kept():
    assert choose_engine("hf", "qwen2_5_vl", cuda=True) == ("hf", "rollout_engine: hf")
    assert choose_engine("fast", "idefics3", cuda=False) == ("fast", "rollout_engine: fast")


@pytest.mark.parametrize(
    "model_type,cuda,ds,engine,why",
    [
        ("qwen2_5_vl", True, None, "fast", "CUDA device and model type 'qwen2_5_vl'"),
        ("qwen2_5_vl", False, None, "hf", "no CUDA device"),
        ("idefics3", True, None, "fast", "CUDA device and model type 'idefics3'"),
        ("llava", True, None, "hf", "model type 'llava' is not one"),
        ("qwen2_5_vl", True, 2, "hf", "DeepSpeed ZeRO-2"),
        (None, True, None, "hf", "model type None"),
    ],
)
def test_auto_picks_fast_only_with_cuda_and_a_supported_model(model_type, cuda, ds, engine, why):
    got, reason = choose_engine("auto", model_type, cuda=cuda, deepspeed_stage=ds)
    assert got == engine
    assert reason.startswith("auto: ") and why in reason


def test_unknown_engine_is_an_error():
    with pytest.raises(ValueError, match="rollout_engine must be one of"):
        choose_engine("vllm", "qwen2_5_vl", cuda=True)
    assert ENGINE_CHOICES == ("hf", "fast", "auto")
    assert {"qwen2_5_vl", "idefics3"} <= set(SUPPORTED_MODEL_TYPES)


def _default_config():
    with open(DEFAULT_CONFIG) as fh:
        return yaml.safe_load(fh)


def test_schema_takes_auto_and_refuses_others():
    cfg = _default_config()
    cfg["grpo"]["rollout_engine"] = "auto"
    validate_config(cfg)
    cfg["grpo"]["rollout_engine"] = "vllm"
    with pytest.raises(ConfigError, match="rollout_engine"):
        validate_config(cfg)


def test_rollout_engine_for_reads_model_cuda_and_launch(monkeypatch):
    qwen = SimpleNamespace(config=SimpleNamespace(model_type="qwen2_5_vl"))
    cfg = {**_default_config()["grpo"], "rollout_engine": "auto"}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert grpo_mod.rollout_engine_for(cfg, qwen)[0] == "hf"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert grpo_mod.rollout_engine_for(cfg, qwen)[0] == "fast"
    cfg_ds = {**cfg, "launch": {"num_processes": 2, "num_machines": 1, "deepspeed_stage": 3}}
    assert grpo_mod.rollout_engine_for(cfg_ds, qwen)[0] == "hf"
    smol = SimpleNamespace(config=SimpleNamespace(model_type="idefics3"))
    assert grpo_mod.rollout_engine_for(cfg, smol)[0] == "fast"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert grpo_mod.rollout_engine_for(cfg, smol)[0] == "hf"


class _Stop(Exception):
    pass


def test_run_grpo_auto_on_cpu_builds_trls_trainer_as_hf_does(tmp_path, monkeypatch, capsys):
    """On CPU, ``auto`` hands the trainer exactly what ``hf`` does (same class, same arguments) and logs why."""
    from grpo_vqa.models.tiny import build_tiny_model

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    ckpt = build_tiny_model(
        "qwen2_5_vl", {"image_size": 112}, ["a b c <answer>x</answer>"] * 4, tmp_path / "m", seed=0
    )
    real_trainer_class = grpo_mod.trainer_class
    built = []

    def recording_trainer_class(engine):
        cls = real_trainer_class(engine)

        def build(**kwargs):
            args = kwargs.pop("args").to_dict()
            built.append((engine, cls.__mro__[1], sorted(kwargs), args))
            raise _Stop

        return build

    monkeypatch.setattr(grpo_mod, "trainer_class", recording_trainer_class)
    base = _default_config()["grpo"]
    for engine in ("hf", "auto"):
        cfg = copy.deepcopy({**base, "rollout_engine": engine})
        with pytest.raises(_Stop):
            grpo_mod.run_grpo(TrainJob(ckpt, None, tmp_path / "out", tmp_path / "ckpt", cfg, seed=0))
    out = capsys.readouterr().out
    assert "[grpo] rollout engine: hf (rollout_engine: hf)" in out
    assert "[grpo] rollout engine: hf (auto: no CUDA device" in out
    assert len(built) == 2
    assert built[0] == built[1]
    assert built[0][0] == "hf" and built[0][1].__name__ == "GRPOTrainer"
    assert "rollout_config" not in built[0][2]


def test_run_grpo_reports_rollouts_per_second(tmp_path, monkeypatch, capsys):
    """A short CPU run: every step's log entry holds rollouts_per_second, the log says the run's rate and the
    engine, and rollout_rate.json beside the adapter counts the rollouts the trainer generated."""
    import json

    import datasets
    from PIL import Image

    from grpo_vqa.models.tiny import build_tiny_model

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    model = build_tiny_model(
        "qwen2_5_vl", {"image_size": 112}, ["a b c <answer>x</answer>"] * 4, tmp_path / "m", seed=0
    )
    rows = datasets.Dataset.from_dict(
        {
            "prompt": [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "a b"}]}]]
            * 4,
            "image": [Image.new("RGB", (112, 112), (40 * i, 30, 30)) for i in range(4)],
            "solution": ["x"] * 4,
        }
    )
    cfg = {
        **_default_config()["grpo"],
        "rollout_engine": "auto",
        "max_steps": 2,
        "per_device_train_batch_size": 4,
        "num_generations": 4,
        "max_completion_length": 4,
        "save_steps": 100,
    }
    out = tmp_path / "out"
    result = grpo_mod.run_grpo(TrainJob(model, rows, out, tmp_path / "ckpt", cfg, seed=0))
    log = capsys.readouterr().out
    rate = json.loads((out / "rollout_rate.json").read_text())
    assert rate == result["rollout_rate"]
    assert rate["engine"] == "hf" and rate["engine_reason"].startswith("auto: no CUDA device")
    assert (rate["steps"], rate["rollouts"], rate["rollouts_per_step"]) == (2, 8, 4.0)
    assert rate["rollouts_per_s"] == pytest.approx(8 / rate["train_s"])
    assert rate["steady_rollouts_per_s"] > 0 and rate["first_step_s"] > 0
    history = json.loads((out / "train_history.json").read_text())
    assert [e["step"] for e in history] == [1, 2]
    assert all(e["rollouts_per_second"] > 0 for e in history)
    line = next(x for x in log.splitlines() if x.startswith("[grpo] rate: "))
    assert line.startswith(f"[grpo] rate: 8 rollouts in 2 steps, {rate['train_s']:.1f} s: ")
    assert line.endswith("| engine hf")
