"""The bias, sim2real, shape_counting and math_r1 tables plan the expected jobs, on the embedded families
(config/full-embedded.yaml) and on the study's settings (config/paper.yaml)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TABLES = ("bias", "sim2real", "shape_counting", "math_r1")
TARGETS = [f"results/tables/{t}.md" for t in TABLES]


def dry_run(tmp_path: Path, configfile: str, offline: bool = True) -> str:
    env = dict(os.environ)
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    else:  # hub ids of config/paper.yaml are only checked against the local cache when offline
        env.pop("HF_HUB_OFFLINE", None)
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "workflow/Snakefile"), "-d", str(tmp_path)]
    cmd += ["-n", "--cores", "2", *TARGETS, "--configfile", str(REPO / configfile)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def job_counts(out: str) -> dict[str, int]:
    stats = out.split("Job stats:")[1].split("Reasons:")[0]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", stats, re.M)}


def grpo_inputs(out: str) -> dict[str, str]:
    """Experiment -> the model input of its planned grpo job."""
    found = {}
    for block in out.split("\nrule ")[1:]:
        if block.startswith("grpo:"):
            model = re.search(r"input: ([^,\n]+)", block).group(1)
            exp = re.search(r"wildcards: exp=(\w+)", block).group(1)
            found[exp] = model
    return found


def test_embedded_families_plan_their_jobs(tmp_path):
    out = dry_run(tmp_path, "config/full-embedded.yaml")
    counts = job_counts(out)
    # bias 3 x (SFT, GRPO), sim2real source and ceiling (SFT, GRPO), counting and math (SFT, GRPO)
    assert counts["sft"] == 7 and counts["grpo"] == 7
    # bias 3x2, sim2real 3 + 2, counting 3, math 3
    assert counts["evaluate"] == 17
    assert counts["table"] == 4 and counts["make_dataset"] == 8 and counts["build_model"] == 1
    assert "judge_responses" not in counts
    assert all(v.endswith("/sft/model") for v in grpo_inputs(out).values())


def test_paper_families_plan_the_study_settings(tmp_path):
    out = dry_run(tmp_path, "config/paper.yaml", offline=False)
    counts = job_counts(out)
    # the counting tutorial and the TRL recipe run GRPO directly on the instruction-tuned model
    assert counts["sft"] == 5 and counts["grpo"] == 6
    assert counts["evaluate"] == 14 and counts["table"] == 4
    inputs = grpo_inputs(out)
    assert inputs["shapes_qwen"] == inputs["math_qwen"] == "results/models/qwen/base.json"
    # the study's bias and sim2real arms: SFT and GRPO both from the base model (tests/test_paper_protocol.py)
    assert inputs["bias_strong"] == inputs["sim2real_source"] == "results/models/qwen/base.json"


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ({"experiments": {"shapes_qwen": {"grpo_from": "merged"}}}, "experiments.shapes_qwen.grpo_from"),
        (
            {"tables": {"sim2real": {"experiments": ["sim2real_source", "bias_050"]}}},
            "tables.sim2real.experiments.1",
        ),
    ],
)
def test_bad_family_config_names_the_key(tmp_path, override, expected):
    import yaml

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(override))
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "workflow/Snakefile"), "-d", str(tmp_path)]
    cmd += ["-n", "--cores", "1", *TARGETS, "--configfile", str(REPO / "config/full-embedded.yaml"), str(bad)]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=300, env=os.environ | {"HF_HUB_OFFLINE": "1"}
    )
    assert proc.returncode != 0
    assert expected in proc.stdout + proc.stderr
