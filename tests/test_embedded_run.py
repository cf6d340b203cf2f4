"""The embedded default end to end: run the DAG once (or read a finished run) and check what the README claims.

Set GRPO_VQA_RUN_DIR to a directory where `snakemake --cores 2 all` already ran to check that run instead
of starting one (the run takes about ten minutes on 2 idle cores). GRPO_VQA_EMBEDDED_DIR names the folder the
run is made in (kept afterwards; CI prints its table), GRPO_VQA_EMBEDDED_SEEDS the seeds to run, comma
separated (default: the config's one seed); every check below holds for every seed. The run is the
``embedded_run`` fixture of tests/conftest.py (one Snakemake call with tests/test_family_effects.py's tables).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

MODELS = ("vsr_qwen", "vsr_smolvlm")
VERDICTS = {"True", "False"}  # the relation task's labels (the accuracy reward's exact answers)
SEEDS = [int(s) for s in os.environ.get("GRPO_VQA_EMBEDDED_SEEDS", "").split(",") if s.strip()]
# Each experiment of each seed: the first seed keeps the plain names, the others are <name>_s<seed>.
EXPERIMENTS = [m if not SEEDS or s == SEEDS[0] else f"{m}_s{s}" for s in (SEEDS or [None]) for m in MODELS]
pytestmark = pytest.mark.embedded


@pytest.fixture(scope="session")
def run_dir(request) -> Path:
    given = os.environ.get("GRPO_VQA_RUN_DIR")
    return Path(given) if given else request.getfixturevalue("embedded_run")


def scores(run_dir: Path, exp: str, stage: str) -> dict:
    return json.loads((run_dir / f"results/eval/{exp}/{stage}/scores.json").read_text())["splits"]


def replicates(model: str) -> list[str]:
    """The experiment of ``model`` (vsr_qwen / vsr_smolvlm) for every seed of the run."""
    return [e for e in EXPERIMENTS if e == model or e.startswith(f"{model}_s")]


def blank_image_answers(run_dir: Path, exp: str) -> tuple[float, float, int, int]:
    """(blank-image accuracy, % right among the verdicts given, verdicts given, items) of the GRPO model."""
    blank = scores(run_dir, exp, "grpo")["test-blank"]["accuracy"]
    records = json.loads(
        (run_dir / f"results/eval/{exp}/grpo/generated_responses_test-blank.json").read_text()
    )
    # a verdict is an answer of the label set; a garbled answer ("False: the green square.</think><answer>False")
    # is no verdict and carries no label information either way
    answered = [r for r in records if str(r["parsed_answer"]).strip() in VERDICTS]
    rate = 100.0 * sum(r["correct"] for r in answered) / max(1, len(answered))
    return blank, rate, len(answered), len(records)


# --- What the README claims of every run (in CI, every seed) -------------------------------------------------


@pytest.mark.parametrize("exp", EXPERIMENTS)
def test_sft_knows_the_task_and_grpo_learns_the_format(run_dir, exp):
    """SFT (``sft.target: partial_tags``) writes the answer tags on about half of the items: it beats the
    untrained model but leaves the format to GRPO, whose format reward brings it to >= 85 % on every seed."""
    base, sft, grpo = (scores(run_dir, exp, stage)["test"] for stage in ("base", "sft", "grpo"))
    assert sft["accuracy"] > base["accuracy"]
    assert grpo["format"] >= 85.0, f"{exp}: GRPO's test format {grpo['format']}"
    assert grpo["format"] > sft["format"], f"{exp}: format SFT {sft['format']} -> GRPO {grpo['format']}"


@pytest.mark.parametrize("exp", EXPERIMENTS)
def test_the_text_alone_does_not_answer(run_dir, exp):
    """Blank images: no better than chance overall (a broken format or no answer counts as wrong), and the
    verdicts (True/False) that are given are coin flips (an exact binomial test against 50 %, two-sided, p >= 0.01): the
    balanced captions carry no label information. A model that reads the image often gives no answer at all
    without one (SmolVLM answers 14-77 % of the blank items, seeds 1234 / 7 / 42)."""
    from scipy.stats import binomtest

    blank, rate, answered, n = blank_image_answers(run_dir, exp)
    assert blank <= 58.0, f"blank-image accuracy {blank} is above chance: the text alone answers"
    if answered:
        p = binomtest(round(rate * answered / 100), answered, 0.5).pvalue
        assert p >= 0.01, (
            f"blank-image answers are right {rate:.1f} % of {answered} (p = {p:.4f}), not at chance"
        )


@pytest.mark.parametrize("exp", EXPERIMENTS)
def test_every_model_learns_the_relations_from_the_image(run_dir, exp):
    """Both tiny models (2,500-step warm starts that list the shapes of held-out scenes right on 99-100 %, seeds
    7 and 42; Qwen with M-RoPE [0, 2, 14]) end (after GRPO) with >= 70 % of the test items right, well above
    their blank-image accuracy."""
    s = scores(run_dir, exp, "grpo")
    assert s["test"]["accuracy"] >= 70.0, f"{exp} grpo: test accuracy {s['test']['accuracy']}"
    assert s["test"]["accuracy"] >= s["test-blank"]["accuracy"] + 15.0, f"{exp} grpo: {s}"


def test_table_and_figures_come_from_the_run(run_dir):
    md = (run_dir / "results/tables/vsr_main.md").read_text()
    for exp in EXPERIMENTS:
        sft = scores(run_dir, exp, "sft")["test"]["accuracy"]
        assert f"{sft:.2f}" in md, f"{exp}'s SFT test accuracy {sft:.2f} is not in the table"
    for fig in ("grpo_rewards.png", "accuracy_by_relation.png"):
        path = run_dir / "results/figures/vsr_main" / fig
        assert path.stat().st_size > 5000
        assert (path.parent / (fig + ".provenance.json")).exists()


# --- GRPO helps (issue 16's bars; README, "What the default run gives") ----------------------------------


@pytest.mark.parametrize("exp", EXPERIMENTS)
def test_grpo_reward_rises(run_dir, exp):
    hist = json.loads((run_dir / f"results/runs/{exp}/grpo/adapter/train_history.json").read_text())
    rewards = [h["reward"] for h in hist]
    q = max(1, len(rewards) // 4)
    assert sum(rewards[-q:]) / q > sum(rewards[:q]) / q


@pytest.mark.parametrize("model", MODELS)
def test_grpo_helps_on_every_seed(run_dir, model):
    """GRPO's test accuracy >= its starting point + 5 points on the mean over seeds, and lower on none."""
    gains = [
        scores(run_dir, e, "grpo")["test"]["accuracy"] - scores(run_dir, e, "sft")["test"]["accuracy"]
        for e in replicates(model)
    ]
    assert sum(gains) / len(gains) >= 5.0 and min(gains) >= 0.0, f"{model}: GRPO - SFT per seed {gains}"
