"""One real tiny run of the grounding and prompt_tuning families (config/test.yaml + config/full-embedded.yaml
+ the tiny override below): every job of both tables runs, and the tables hold what the upstream files say.

About 2-3 minutes on an idle 2-core machine: 21 jobs of 8-20 s CPU each, mostly process start-up and imports.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

# Several minutes of real training on 2 cores: `pytest -m families` (in CI; see README, Development).
pytestmark = pytest.mark.families

REPO = Path(__file__).resolve().parents[1]
TABLES = ("results/tables/grounding.md", "results/tables/prompt_tuning.md")
TINY = {
    "datasets": {
        "grounding_synth": {"splits": {"train": 32, "val": 8, "test": 8}},
        "grounding_ood": {"splits": {"test": 8}},
    },
    "evaluation": {"splits": ["test"], "blank_image_probe": False, "max_new_tokens": 12},
    "experiments": {
        "grounding_qwen": {
            "sft": {"max_steps": 4},
            "grpo": {"max_steps": 1, "max_completion_length": 12},
            "evaluation": {"max_new_tokens": 12},
        },
        "grounding_qwen_iou": {
            "grpo": {"max_steps": 1, "max_completion_length": 12},
            "evaluation": {"max_new_tokens": 12},
        },
    },
    "prompt_tuning": {
        "max_steps": 2,
        "per_device_train_batch_size": 8,
        "save_steps": 1,
        "num_virtual_tokens": 4,
    },
}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    wd = tmp_path_factory.mktemp("fam2_tiny")
    (wd / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    configs = [REPO / "config" / "test.yaml", REPO / "config" / "full-embedded.yaml", wd / "tiny.yaml"]
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "workflow" / "Snakefile"), *TABLES]
    cmd += ["--cores", "2", "-d", str(wd), "--configfile", *map(str, configs)]
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)  # a busy machine is slow
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    print(f"fam2 tiny run: {time.time() - t0:.0f} s")
    return wd


def scores(wd: Path, exp: str, stage: str) -> dict:
    return json.loads((wd / f"results/eval/{exp}/{stage}/scores.json").read_text())["splits"]


def test_grounding_table_from_the_run(run):
    df = pd.read_csv(run / "results/tables/grounding.csv")
    assert list(df["setting"]) == [
        "zero-shot (base)",
        "SFT",
        "GRPO (accuracy + format)",
        "GRPO (accuracy + format + iou)",
    ]
    stages = [("grounding_qwen", "base"), ("grounding_qwen", "sft")]
    stages += [("grounding_qwen", "grpo"), ("grounding_qwen_iou", "grpo")]
    for row, (exp, stage) in zip(df.to_dict("records"), stages, strict=True):
        s = scores(run, exp, stage)
        assert row["test accuracy"] == s["test"]["accuracy"]
        assert row["OOD accuracy"] == s["grounding_ood-test"]["accuracy"]
        assert 0.0 <= row["test IoU"] <= 1.0
    # both GRPO variants started from the one SFT model
    assert not (run / "results/runs/grounding_qwen_iou/sft").exists()
    hist = json.loads((run / "results/runs/grounding_qwen_iou/grpo/adapter/train_history.json").read_text())
    assert any("rewards/iou/mean" in h for h in hist)
    assert (run / "results/figures/grounding/accuracy_iou.png").stat().st_size > 0
    assert (run / "results/tables/grounding.md.provenance.json").is_file()


def test_prompt_tuning_table_from_the_run(run):
    df = pd.read_csv(run / "results/tables/prompt_tuning.csv")
    assert list(df["setting"]) == ["zero-shot", "prompt (direct)", "prompt (reasoning)"]
    for row, stage in zip(df.to_dict("records"), ("base", "pt_direct", "pt_reason"), strict=True):
        assert row["test accuracy"] == scores(run, "vsr_qwen", stage)["test"]["accuracy"]
    for pt in ("pt_direct", "pt_reason"):
        adapter = run / f"results/runs/vsr_qwen/{pt}/adapter"
        assert json.loads((adapter / "adapter_config.json").read_text())["peft_type"] == "PROMPT_TUNING"
        assert not (adapter / "config.json").exists()  # the base model's weights are not copied
        assert any((run / f"results/checkpoints/vsr_qwen/{pt}").glob("run-*/checkpoint-2/.complete"))
    assert (run / "results/figures/prompt_tuning/accuracy_format.png").stat().st_size > 0
