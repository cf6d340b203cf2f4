"""The training sections use TRL's and PEFT's own argument names, and the objects built from them are the ones
the configs built before the rename (issue 17: "a study script's flags map one to one; every default lives in
one place").

tests/fixtures/trl_peft_args.json holds, for every shipped config combination, experiment and training stage,
the settings of the SFTConfig / GRPOConfig, LoraConfig and PromptTuningConfig that the code built from the
configs *before* the rename (batch_size as the global batch, grad_accum, lr_scheduler, lora alpha / dropout /
targets, prompt tuning init / init_text, and the fallbacks in the code). The same objects must come out now.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from grpo_vqa.config import ConfigError, deep_merge, prompt_tuning_recipe, stage_config, validate_config

REPO = Path(__file__).resolve().parents[1]
BEFORE = json.loads((REPO / "tests" / "fixtures" / "trl_peft_args.json").read_text())
COMBOS = {
    "default": ["config/config.yaml"],
    "paper": ["config/config.yaml", "config/paper.yaml"],
    "paper-tiny": ["config/config.yaml", "config/paper.yaml", "config/paper-tiny.yaml"],
    "full": ["config/config.yaml", "config/full-embedded.yaml"],
    "test": ["config/config.yaml", "config/test.yaml"],
    "families": [
        "config/config.yaml",
        "config/test.yaml",
        "config/full-embedded.yaml",
        "config/test-families.yaml",
    ],
    "bench": ["config/config.yaml", "bench/pipeline_grpo_3b.yaml"],
}


def load(*files: str) -> dict:
    cfg: dict = {}
    for f in files:
        cfg = deep_merge(cfg, yaml.safe_load((REPO / f).read_text()))
    return cfg


def built(cfg: dict, exp: str, stage: str, tmp_path, recipe: str | None = None):
    """The (TRL args, PEFT config) the training script of ``exp``'s ``stage`` builds (one process)."""
    from grpo_vqa.training.common import TrainJob, lora_config
    from grpo_vqa.training.grpo import grpo_args
    from grpo_vqa.training.prompt_tuning import prompt_tuning_config
    from grpo_vqa.training.sft import sft_args

    dtype = cfg["models"][cfg["experiments"][exp]["model"]].get("dtype", "float32")
    if recipe:
        section = prompt_tuning_recipe(cfg, exp, recipe)
        return sft_args(
            TrainJob("m", None, tmp_path, tmp_path, section, 1, tmp_path, dtype)
        ), prompt_tuning_config(section, "tok")
    section = stage_config(cfg, exp, stage)
    make = sft_args if stage == "sft" else grpo_args
    return make(TrainJob("m", None, tmp_path, tmp_path, section, 1, tmp_path, dtype)), lora_config(
        section["lora"]
    )


def _norm(value):
    return sorted(value) if isinstance(value, list | set) else value


@pytest.mark.parametrize("combo", sorted(COMBOS))
def test_trainer_and_peft_configs_are_those_of_before_the_rename(combo, tmp_path, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    cfg = load(*COMBOS[combo])
    checked = 0
    for exp in cfg["experiments"]:
        for stage, recipe in (
            ("sft", None),
            ("grpo", None),
            ("pt_direct", "direct"),
            ("pt_reason", "reason"),
        ):
            args, peft = built(cfg, exp, stage, tmp_path, recipe)
            args, peft = args.to_dict(), peft.to_dict()
            key = f"{combo}/{exp}/{stage}"
            for name, want in BEFORE[key].items():
                assert _norm(args[name]) == _norm(want), (key, name)
            for name, want in BEFORE[f"{key}/{'peft' if recipe else 'lora'}"].items():
                assert _norm(peft[name]) == _norm(want), (key, name)
            checked += 1
    assert checked == 4 * len(cfg["experiments"])


def test_paper_objects_carry_the_studys_settings(tmp_path, monkeypatch):
    """config/paper.yaml, read as the trainers read it: the study's SFT and GRPO (issue 17, point 4)."""
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    cfg = load(*COMBOS["paper"])
    for exp in ("vsr_qwen", "vsr_smolvlm", "bias_strong", "sim2real_source"):
        sft, lora = built(cfg, exp, "sft", tmp_path)
        assert (sft.learning_rate, sft.per_device_train_batch_size, sft.gradient_accumulation_steps) == (
            1e-5,
            4,
            1,
        )
        assert (sft.max_steps, sft.num_train_epochs, str(sft.lr_scheduler_type)) == (
            -1,
            2.0,
            "SchedulerType.LINEAR",
        )
        assert sft.gradient_checkpointing and sft.warmup_steps == 0.0
        assert (lora.r, lora.lora_alpha, lora.lora_dropout, lora.target_modules) == (
            16,
            32,
            0.05,
            "all-linear",
        )
        assert lora.exclude_modules and not lora.modules_to_save  # the vision tower stays frozen
        grpo, glora = built(cfg, exp, "grpo", tmp_path)
        assert (grpo.learning_rate, grpo.num_train_epochs, grpo.max_steps) == (1e-5, 2.0, -1)
        # one prompt x 4 generations a step (one process)
        global_batch = grpo.per_device_train_batch_size * grpo.gradient_accumulation_steps
        assert (global_batch, grpo.num_generations, global_batch // grpo.num_generations) == (4, 4, 1)
        assert (grpo.beta, grpo.loss_type, grpo.max_completion_length, grpo.temperature) == (
            0.04,
            "grpo",
            256,
            0.9,
        )
        assert glora.target_modules == "all-linear" and glora.exclude_modules
    direct, direct_pt = built(cfg, "vsr_qwen", "pt_direct", tmp_path, "direct")
    assert (direct.per_device_train_batch_size, direct.gradient_accumulation_steps, direct.learning_rate) == (
        8,
        2,
        1e-2,
    )
    assert (direct_pt.num_virtual_tokens, str(direct_pt.prompt_tuning_init)) == (5, "PromptTuningInit.RANDOM")
    reason, reason_pt = built(cfg, "vsr_qwen", "pt_reason", tmp_path, "reason")
    assert (
        reason.per_device_train_batch_size,
        reason.gradient_accumulation_steps,
        reason.num_train_epochs,
    ) == (8, 4, 2)
    assert reason_pt.num_virtual_tokens == 10
    shapes, _ = built(
        cfg, "shapes_qwen", "grpo", tmp_path
    )  # the tutorial: 2 prompts x 4 generations, 4 steps
    assert (
        shapes.per_device_train_batch_size,
        shapes.gradient_accumulation_steps,
        shapes.num_generations,
    ) == (2, 4, 4)


def test_default_objects(tmp_path, monkeypatch):
    """config/config.yaml (the embedded default), read as the trainers read it."""
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    cfg = load(*COMBOS["default"])
    sft, lora = built(cfg, "vsr_qwen", "sft", tmp_path)
    assert (sft.per_device_train_batch_size, sft.learning_rate, sft.max_steps, sft.warmup_steps) == (
        24,
        2e-3,
        1000,
        0.05,
    )
    assert sorted(lora.modules_to_save) == ["embed_tokens", "lm_head"] and lora.lora_dropout == 0.0
    grpo, glora = built(cfg, "vsr_smolvlm", "grpo", tmp_path)
    assert (grpo.per_device_train_batch_size, grpo.num_generations, grpo.temperature, grpo.top_k) == (
        32,
        8,
        0.5,
        5,
    )
    assert (grpo.loss_type, grpo.beta, str(grpo.lr_scheduler_type)) == ("dapo", 0.0, "SchedulerType.CONSTANT")
    assert glora.target_modules == r"^(?!.*(visual|vision)).*\.(q_proj|v_proj)$"
    _, pt = built(cfg, "vsr_qwen", "pt_direct", tmp_path, "direct")
    assert pt.prompt_tuning_init_text == "Look at the image and answer the question."


OLD_NAMES = [
    ("sft", "lr_scheduler", "cosine", "sft.lr_scheduler: renamed to sft.lr_scheduler_type"),
    ("sft", "grad_accum", 2, "sft.grad_accum: renamed to sft.gradient_accumulation_steps"),
    ("grpo", "batch_size", 32, "grpo.batch_size: renamed to grpo.per_device_train_batch_size"),
    ("prompt_tuning", "init", "text", "prompt_tuning.init: renamed to prompt_tuning.prompt_tuning_init"),
    (
        "prompt_tuning",
        "init_text",
        "x",
        "prompt_tuning.init_text: renamed to prompt_tuning.prompt_tuning_init_text",
    ),
]


@pytest.mark.parametrize(("section", "old", "value", "message"), OLD_NAMES)
def test_an_old_name_gets_one_line_naming_the_new_one(section, old, value, message):
    cfg = load(*COMBOS["default"])
    bad = copy.deepcopy(cfg)
    bad[section][old] = value
    with pytest.raises(ConfigError, match=rf"^config key {message.replace('.', chr(92) + '.')}"):
        validate_config(bad)


@pytest.mark.parametrize(
    ("old", "new"), [("alpha", "lora_alpha"), ("dropout", "lora_dropout"), ("targets", "target_modules")]
)
def test_an_old_lora_name_in_an_experiment_is_named(old, new, monkeypatch):
    import grpo_vqa.config

    monkeypatch.setattr(
        grpo_vqa.config, "check_model_path", lambda key, path: None
    )  # hub ids: not cached here
    bad = load(*COMBOS["paper"])
    bad["experiments"]["shapes_qwen"]["grpo"]["lora"][old] = 1
    with pytest.raises(ConfigError) as err:
        validate_config(bad)
    assert str(err.value) == (
        f"config key experiments.shapes_qwen.grpo.lora.{old}: renamed to experiments.shapes_qwen.grpo.lora.{new}"
    )
    assert "\n" not in str(err.value)


def test_a_recipe_old_name_and_a_missing_default_are_named(monkeypatch):
    import grpo_vqa.config

    monkeypatch.setattr(grpo_vqa.config, "check_model_path", lambda key, path: None)
    cfg = load(*COMBOS["paper"])
    bad = copy.deepcopy(cfg)
    bad["prompt_tuning"]["reason"]["grad_accum"] = 4
    with pytest.raises(ConfigError, match=r"^config key prompt_tuning\.reason\.grad_accum: renamed to "):
        validate_config(bad)
    bad = copy.deepcopy(cfg)
    del bad["sft"]["warmup_ratio"]  # the top-level sections hold every default
    with pytest.raises(
        ConfigError,
        match=r"^config key sft\.warmup_ratio: missing \(the top-level training sections hold every",
    ):
        validate_config(bad)


def test_no_fallbacks_for_training_settings_in_the_code():
    """The trainers read their sections without `.get(key, default)`: config/config.yaml is the one default."""
    import re

    for name in ("common.py", "sft.py", "grpo.py", "prompt_tuning.py"):
        text = (REPO / "src" / "grpo_vqa" / "training" / name).read_text()
        assert not re.search(r"cfg\.get\(", text.replace('cfg.get("launch")', "")), name
