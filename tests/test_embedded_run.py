"""The embedded default end to end: run the DAG once (or read a finished run) and check what the README claims.

Set GRPO_VQA_RUN_DIR to a directory where `snakemake --cores 2 all` already ran to check that run instead
of starting one (the run takes about ten minutes on 2 cores). GRPO_VQA_EMBEDDED_DIR names the folder the
run is made in (kept afterwards; CI prints its table), GRPO_VQA_EMBEDDED_SEEDS the seeds to run, comma
separated (default: the config's one seed); every check below holds for every seed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MODELS = ("vsr_qwen", "vsr_smolvlm")
SEEDS = [int(s) for s in os.environ.get("GRPO_VQA_EMBEDDED_SEEDS", "").split(",") if s.strip()]
# Each experiment of each seed: the first seed keeps the plain names, the others are <name>_s<seed>.
EXPERIMENTS = [m if not SEEDS or s == SEEDS[0] else f"{m}_s{s}" for s in (SEEDS or [None]) for m in MODELS]
pytestmark = pytest.mark.embedded


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory) -> Path:
    given = os.environ.get("GRPO_VQA_RUN_DIR")
    if given:
        return Path(given)
    kept = os.environ.get("GRPO_VQA_EMBEDDED_DIR")
    workdir = Path(kept).resolve() if kept else tmp_path_factory.mktemp("embedded")
    workdir.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "results/tables/vsr_main.md",
        "-s",
        str(REPO / "workflow/Snakefile"),
        "--cores",
        "2",
        "-d",
        str(workdir),
    ]
    if SEEDS:
        cmd += ["--config", f"seeds=[{','.join(map(str, SEEDS))}]"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return workdir


def scores(run_dir: Path, exp: str, stage: str) -> dict:
    return json.loads((run_dir / f"results/eval/{exp}/{stage}/scores.json").read_text())["splits"]


@pytest.mark.parametrize("exp", EXPERIMENTS)
def test_sft_learns_the_format_and_beats_the_untrained_model(run_dir, exp):
    base, sft = scores(run_dir, exp, "base"), scores(run_dir, exp, "sft")
    assert sft["test"]["format"] >= 90.0
    assert sft["test"]["accuracy"] > base["test"]["accuracy"]


@pytest.mark.parametrize("exp", EXPERIMENTS)
def test_grpo_reward_rises(run_dir, exp):
    hist = json.loads((run_dir / f"results/runs/{exp}/grpo/adapter/train_history.json").read_text())
    rewards = [h["reward"] for h in hist]
    q = max(1, len(rewards) // 4)
    assert sum(rewards[-q:]) / q > sum(rewards[:q]) / q


@pytest.mark.parametrize("exp", EXPERIMENTS)
def test_model_reads_the_image(run_dir, exp):
    """Blank images: no better than chance overall (a broken format counts as wrong), coin flips among the
    answers given, and well below the accuracy with the images."""
    s = scores(run_dir, exp, "grpo")
    blank, real = s["test-blank"]["accuracy"], s["test"]["accuracy"]
    assert blank <= 58.0, f"blank-image accuracy {blank} is above chance: the text alone answers"
    records = json.loads(
        (run_dir / f"results/eval/{exp}/grpo/generated_responses_test-blank.json").read_text()
    )
    answered = [r for r in records if r["parsed_answer"] not in (None, "")]
    assert len(answered) >= len(records) / 2, "most blank-image responses give no answer"
    rate = 100.0 * sum(r["correct"] for r in answered) / len(answered)
    assert abs(rate - 50.0) <= 8.0, f"blank-image answers are right {rate:.1f} % of the time, not at chance"
    assert real >= blank + 8.0, f"accuracy with images {real} is not above the blank-image probe {blank}"


def test_table_and_figures_come_from_the_run(run_dir):
    md = (run_dir / "results/tables/vsr_main.md").read_text()
    sft = scores(run_dir, "vsr_qwen", "sft")["test"]["accuracy"]
    assert f"{sft:.2f}" in md
    for fig in ("grpo_rewards.png", "accuracy_by_relation.png"):
        path = run_dir / "results/figures/vsr_main" / fig
        assert path.stat().st_size > 5000
        assert (path.parent / (fig + ".provenance.json")).exists()
