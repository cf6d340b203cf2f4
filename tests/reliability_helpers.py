"""Helpers for tests/test_reliability_*.py: a tiny local DAG, SIGKILL of a process tree, table rows.

Each reliability test records its row of the reliability table (``bench/reliability_table.py``) with
:func:`case`: what was tried, what is expected, and what was observed. The rows travel in pytest's JUnit XML
(``--junitxml``) as test properties.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "workflow" / "Snakefile"
TEST_CONFIG = REPO / "config" / "test.yaml"
EXP = "vsr_qwen"

#: The smallest settings that still run every stage for real: 16/8/8 items, 4 SFT and 3 GRPO steps with a
#: checkpoint after every step, no warm-start pretraining, no blank-image probe, the rules judge on one split.
TINY = {
    "models": {"qwen": {"pretrain": {"steps": 0, "n_images": 8, "batch_size": 4}}},
    "datasets": {"vsr_synth": {"splits": {"train": 16, "val": 8, "test": 8}}},
    "sft": {"max_steps": 4, "per_device_train_batch_size": 4, "save_steps": 1},
    "grpo": {
        "max_steps": 3,
        "per_device_train_batch_size": 4,
        "num_generations": 2,
        "max_completion_length": 8,
        "save_steps": 1,
    },
    "evaluation": {
        "max_new_tokens": 8,
        "batch_size": 8,
        "splits": ["val", "test"],
        "blank_image_probe": False,
    },
    "tables": {"vsr_main": {"experiments": [EXP]}},
    "judge": {"runs": [EXP], "stages": ["grpo"], "splits": ["test"]},
}

TARGETS = (
    f"results/eval/{EXP}/grpo/scores.json",
    f"results/judge/{EXP}/grpo/test.taxonomy.jsonl",
)


def case(record_property, tried: str, expected: str, outcome: str, group: str | None = None) -> None:
    """Record this test's row of the reliability table (JUnit XML properties); rows of one ``group`` are
    shown as one line of the table (e.g. one reward against every hostile completion)."""
    record_property("rel_case", tried)
    record_property("rel_expected", expected)
    record_property("rel_outcome", outcome)
    if group:
        record_property("rel_group", group)


def env(**extra: str) -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **extra}


def write_override(path: Path, *overrides: dict) -> Path:
    from grpo_vqa.config import deep_merge

    merged: dict = {}
    for o in (TINY, *overrides):
        merged = deep_merge(merged, o)
    path.write_text(yaml.safe_dump(merged))
    return path


def snakemake_cmd(workdir: Path, targets, override: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(SNAKEFILE),
        "--directory",
        str(workdir),
        *targets,
        "--configfile",
        str(TEST_CONFIG),
        str(override),
        *extra,
    ]


def run(cmd: list[str], timeout: float = 600, **env_extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env(**env_extra))


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children first found through /proc/<pid>/task/*/children)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                kids = [int(x) for x in (task / "children").read_text().split()]
            except OSError:
                continue
            out.extend(kids)
            todo.extend(kids)
    return out


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL ``proc`` and everything it started (the jobs die with Snakemake, as on a node failure)."""
    victims = [proc.pid, *descendants(proc.pid)]
    for pid in victims:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=60)


def wait_for(predicate, timeout: float, proc: subprocess.Popen | None = None, poll: float = 0.05) -> bool:
    """Poll ``predicate`` until true (True), ``timeout`` passes or ``proc`` ends (False)."""
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        if predicate():
            return True
        if proc is not None and proc.poll() is not None:
            return bool(predicate())
        time.sleep(poll)
    return False


def tree_bytes(root: Path, skip=lambda rel: False) -> dict[str, bytes]:
    """Contents of every file under ``root`` by relative path (minus those ``skip`` rejects)."""
    out = {}
    for f in sorted(root.rglob("*")):
        rel = str(f.relative_to(root))
        if f.is_file() and not skip(rel):
            out[rel] = f.read_bytes()
    return out
