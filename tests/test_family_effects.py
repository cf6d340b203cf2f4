"""The relation families show the effects they exist to measure, on the embedded default (issue 19): the bias
and sim2real tables of config/full-embedded.yaml, run in the embedded-default run's folder (its base models are
reused) on that run's first seed. Three seeds were measured once (README, "What the embedded families show").

Set GRPO_VQA_FAMILY_DIR to a folder where the two tables were already made to check them instead of running.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest
from conftest import FAMILY_TABLES

# Made in the embedded run's Snakemake call (tests/conftest.py, ``embedded_run``): about 12 minutes more on 2 cores.
pytestmark = [pytest.mark.families, pytest.mark.embedded]


@pytest.fixture(scope="module")
def tables(request) -> dict[str, pd.DataFrame]:
    given = os.environ.get("GRPO_VQA_FAMILY_DIR")
    workdir = Path(given) if given else request.getfixturevalue("embedded_run")  # tests/conftest.py
    return {t: pd.read_csv(workdir / f"results/tables/{t}.csv") for t in FAMILY_TABLES}


def test_the_biased_wording_biases_the_model(tables):
    """After GRPO, agreement with the text prior rises with the training set's bias, and at the strongest bias
    the model answers the prior: bias-inconsistent items fall far below bias-consistent ones (three seeds:
    agreement 44.5 / 71.0 / 99.3 % on the mean; inconsistent 0-3 % against 100 % at 0.95)."""
    df = tables["bias"]
    grpo = df[df["stage"].str.contains("GRPO")].sort_values("train bias")
    assert grpo["train bias"].tolist() == [0.5, 0.8, 0.95]
    agreement = grpo["agreement with text prior"].tolist()
    assert agreement[0] < agreement[1] < agreement[2], f"agreement by bias level {agreement}"
    assert agreement[2] - agreement[0] >= 20.0, f"agreement by bias level {agreement}"
    strongest = grpo.iloc[-1]
    consistent, inconsistent = strongest["bias-consistent accuracy"], strongest["bias-inconsistent accuracy"]
    assert inconsistent <= consistent - 30.0, f"at 0.95: consistent {consistent}, inconsistent {inconsistent}"
    # the probe measured each set's bias level and the table reports it
    assert grpo["relation-only probe"].notna().all()
    assert grpo["relation-only probe"].is_monotonic_increasing


def test_source_trained_model_reads_the_target_domain(tables):
    """The source-trained model (SFT, then GRPO) is above chance on the target domain (a one-sided binomial
    test on the 200 target items, p < 0.01), as is the target-trained ceiling."""
    from scipy.stats import binomtest

    df = tables["sim2real"].set_index("setting")
    for setting in ("SFT → GRPO on source", "SFT → GRPO on target (ceiling)"):
        acc = float(df.loc[setting, "target test accuracy"])
        p = binomtest(round(2.0 * acc), 200, 0.5, alternative="greater").pvalue
        assert p < 0.01, f"{setting}: target accuracy {acc} (p = {p:.3f}) is not above chance"
