"""Shared fixtures: the local one-node SLURM (tests/slurm_helpers.py) and the local reference run of the
embedded DAG (tests/dag_helpers.py), which the SLURM DAG and resume tests compare against."""

from __future__ import annotations

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
