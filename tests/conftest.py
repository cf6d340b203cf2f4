"""Shared fixtures: the local one-node SLURM (tests/slurm_helpers.py), the local reference run of the
embedded DAG (tests/dag_helpers.py), which the SLURM DAG and resume tests compare against, and the embedded
default's full run (``embedded_run``), which the README's learning and family-effect checks read."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from dag_helpers import TABLE, Background, dag_cmd
from slurm_helpers import slurm_cluster_fixture  # noqa: F401  (the `slurm_cluster` fixture)


@pytest.fixture(scope="session")
def local_dag(tmp_path_factory):
    """The DAG subset run locally (`--cores 2`, no profile), started in the background when first requested
    (it overlaps with the SLURM runs); call ``dag_helpers.finished`` before reading its results."""
    base = tmp_path_factory.mktemp("local_dag")
    run = Background(
        dag_cmd(TABLE, profile=None, extra=("--cores", "2")), base / "wd", base / "snakemake.log"
    ).start()
    yield run
    run.stop()


REPO = Path(__file__).resolve().parents[1]
#: The family tables tests/test_family_effects.py checks (config/full-embedded.yaml, the run's first seed).
FAMILY_TABLES = ("bias", "sim2real")


def _selected(session, module: str) -> bool:
    return any(Path(str(item.fspath)).name == module for item in session.items)


@pytest.fixture(scope="session")
def embedded_run(request, tmp_path_factory) -> Path:
    """The folder of the embedded default's run, made by one Snakemake call (2 cores) for every selected check:
    vsr_main (tests/test_embedded_run.py) and the bias and sim2real tables of config/full-embedded.yaml, which only
    adds datasets, experiments and tables (tests/test_family_effects.py). One call keeps both cores busy to the
    end (two calls in a row left one idle while a chain finished; CI on 2026-12-07: 2,026 s for both against
    1,322 + 826 s as two calls the day before). Seeds:
    GRPO_VQA_EMBEDDED_SEEDS (comma separated; default the config's); the folder: GRPO_VQA_EMBEDDED_DIR (kept;
    CI prints its table) or a temporary one."""
    kept = os.environ.get("GRPO_VQA_EMBEDDED_DIR")
    workdir = Path(kept).resolve() if kept else tmp_path_factory.mktemp("embedded")
    workdir.mkdir(parents=True, exist_ok=True)
    targets, configfiles = [], []
    if _selected(request.session, "test_embedded_run.py"):
        targets.append("results/tables/vsr_main.md")
    if _selected(request.session, "test_family_effects.py"):
        targets += [f"results/tables/{t}.md" for t in FAMILY_TABLES]
        configfiles.append(str(REPO / "config/full-embedded.yaml"))
    cmd = [sys.executable, "-m", "snakemake", *targets, "-s", str(REPO / "workflow/Snakefile")]
    cmd += ["--cores", "2", "-d", str(workdir)]
    if configfiles:
        cmd += ["--configfile", *configfiles]
    seeds = os.environ.get("GRPO_VQA_EMBEDDED_SEEDS", "").strip()
    if seeds:
        cmd += ["--config", f"seeds=[{seeds}]"]
    env = os.environ | {"HF_HUB_OFFLINE": "1"}
    # two seeds and the two family tables: about 35 minutes on 2 cores, up to an hour on a slow machine
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=5400, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return workdir
