"""The workflow itself: lint-clean, plans the DAG, and refuses bad configs with one line naming the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def snakemake(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "workflow" / "Snakefile"), *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_lint_is_clean():
    proc = snakemake("--lint", "--cores", "1")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout + proc.stderr
    assert "Lints for" not in out, out
    assert "Congratulations" in out


def test_dry_run_plans_every_stage(tmp_path):
    proc = snakemake("-n", "--cores", "2", "-d", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    for rule in ("make_dataset", "build_model", "sft", "merge_lora", "grpo", "evaluate", "table"):
        assert f"rule {rule}:" in proc.stdout or f"\n{rule} " in proc.stdout, rule


def test_one_table_target_plans_only_what_it_needs(tmp_path):
    proc = snakemake("results/tables/vsr_main.md", "-n", "--cores", "2", "-d", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "judge_responses" not in proc.stdout
    assert "rule grpo:" in proc.stdout


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (
            {"grpo": {"num_generations": 1}},
            "config key grpo.num_generations: 1 is less than the minimum of 2",
        ),
        ({"sft": {"learning_rate": -0.1}}, "config key sft.learning_rate"),
        ({"bogus_key": 3}, "config key bogus_key: unknown key"),
        # the training sections use TRL's / PEFT's names; an old name is refused with the new one
        (
            {"sft": {"lr_scheduler": "cosine"}},
            "config key sft.lr_scheduler: renamed to sft.lr_scheduler_type",
        ),
        (
            {"experiments": {"vsr_qwen": {"grpo": {"lora": {"targets": ["q_proj"]}}}}},
            "config key experiments.vsr_qwen.grpo.lora.targets: renamed to "
            "experiments.vsr_qwen.grpo.lora.target_modules",
        ),
        ({"sft": {"max_steps": "ten"}}, "config key sft.max_steps: 'ten' is not of type 'integer'"),
        (
            {"experiments": {"vsr_qwen": {"model": "nope"}}},
            "config key experiments.vsr_qwen.model: unknown model",
        ),
        (
            {"models": {"qwen": {"source": "pretrained", "path": "no/such-model-offline"}}},
            "config key models.qwen.path: hub id no/such-model-offline is not in the local cache",
        ),
    ],
)
def test_bad_config_fails_before_any_work_with_one_line(tmp_path, override, expected, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(override))
    proc = snakemake("-n", "--cores", "1", "-d", str(tmp_path), "--configfile", str(bad))
    assert proc.returncode != 0
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if "config key" in ln]
    assert lines, proc.stdout + proc.stderr
    assert expected in lines[0]
    assert not (tmp_path / "results").exists()
