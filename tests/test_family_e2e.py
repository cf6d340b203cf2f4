"""One tiny real run of the bias, sim2real, shape_counting and math_r1 families (config/test-families.yaml on
top of config/test.yaml and config/full-embedded.yaml): every chain runs and each table comes out with its
figures and provenance, its numbers read from the run's own score files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

# Several minutes of real training on 2 cores: `pytest -m families` (in CI; see README, Development).
pytestmark = pytest.mark.families

REPO = Path(__file__).resolve().parents[1]
TABLES = ("bias", "sim2real", "shape_counting", "math_r1")
CONFIGS = ("config/test.yaml", "config/full-embedded.yaml", "config/test-families.yaml")


def test_family_tables_end_to_end(tmp_path):
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "workflow/Snakefile"), "-d", str(tmp_path)]
    cmd += ["--cores", "2", *[f"results/tables/{t}.md" for t in TABLES]]
    cmd += ["--configfile", *[str(REPO / c) for c in CONFIGS]]
    t0 = time.monotonic()
    env = os.environ | {"HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=2400, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    print(f"family tables end to end: {time.monotonic() - t0:.0f} s")
    res = tmp_path / "results"
    for table in TABLES:
        md = res / f"tables/{table}.md"
        assert md.read_text().startswith("# "), table
        assert (res / f"tables/{table}.csv.provenance.json").exists()
        figs = list((res / f"figures/{table}").glob("*.png"))
        assert figs and all((f.parent / (f.name + ".provenance.json")).exists() for f in figs), table

    def score(exp: str, stage: str, split: str) -> float:
        return json.loads((res / f"eval/{exp}/{stage}/scores.json").read_text())["splits"][split]["accuracy"]

    bias = pd.read_csv(res / "tables/bias.csv")
    assert sorted(set(bias["train bias"])) == [0.5, 0.95]
    row = bias.query("experiment == 'bias_095' and stage == 'SFT'").iloc[0]
    assert row["test accuracy"] == score("bias_095", "sft", "test")
    assert row["blank-image accuracy"] == score("bias_095", "sft", "test-blank")
    s2r = pd.read_csv(res / "tables/sim2real.csv").set_index("setting")
    assert s2r.loc["SFT on source", "target test accuracy"] == score(
        "sim2real_source", "sft", "sim2real_target-test"
    )
    assert s2r.loc["SFT on target (ceiling)", "target test accuracy"] == score(
        "sim2real_ceiling", "sft", "test"
    )
    assert s2r.loc["SFT → GRPO on target (ceiling)", "source test accuracy"] == score(
        "sim2real_ceiling", "grpo", "sim2real_source-test"
    )
    counting = pd.read_csv(res / "tables/shape_counting.csv")
    assert counting["generalisation accuracy"].tolist() == [
        score("shapes_qwen", s, "shapes_general-test") for s in ("base", "grpo")
    ]
    math = pd.read_csv(res / "tables/math_r1.csv")
    assert math["test accuracy"].tolist() == [score("math_qwen", s, "test") for s in ("base", "grpo")]
    assert math["stage"].tolist() == ["zero-shot (base)", "GRPO"]  # grpo_from: base, no SFT stage
    history = json.loads((res / "runs/math_qwen/grpo/adapter/train_history.json").read_text())
    assert any("rewards/math_accuracy/mean" in h for h in history)
