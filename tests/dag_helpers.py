"""Helpers for the tests that run the embedded DAG (config/test.yaml) locally and through SLURM.

The DAG subset is the `vsr_main` table restricted to one experiment (vsr_qwen): make_dataset,
build_model, sft, merge_lora (sft, grpo), grpo, evaluate (base, sft, grpo) and table -- 10 jobs.
Workflows run in temporary directories with `-s workflow/Snakefile` (results are relative to the
working directory, scripts are found through the checkout).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from slurm_helpers import REPO, SLURM_TEST_PROFILE

SNAKEFILE = REPO / "workflow" / "Snakefile"
TEST_CONFIG = REPO / "config" / "test.yaml"
EXP = "vsr_qwen"
TABLE = "results/tables/vsr_main.md"
STAGES = ("base", "sft", "grpo")
#: `--config` restricting the table (and so the DAG) to one experiment.
ONE_EXPERIMENT = f"tables={{vsr_main: {{experiments: [{EXP}]}}}}"
#: Keys of TRL's per-step log entries that measure time, not training (differ between runs).
TIMING_KEY = re.compile(r"time|per_second")


def env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def dag_cmd(
    *targets: str, configfiles: tuple[Path, ...] = (), profile: Path | None = SLURM_TEST_PROFILE, extra=()
) -> list[str]:
    """`python -m snakemake [--profile P] TARGETS --configfile config/test.yaml [FILES] --config ... -s
    Snakefile [EXTRA]` (`--config` values are strings to Snakemake: typed overrides go in `configfiles`)."""
    cmd = [sys.executable, "-m", "snakemake"]
    if profile is not None:
        cmd += ["--profile", str(profile)]
    cmd += [*targets, "--configfile", str(TEST_CONFIG), *map(str, configfiles), "--config", ONE_EXPERIMENT]
    return cmd + ["-s", str(SNAKEFILE), *extra]


@dataclass
class Background:
    """A command running in `workdir` with its output in `log`; started by :func:`start`."""

    cmd: list[str]
    workdir: Path
    log: Path
    proc: subprocess.Popen | None = None
    t0: float = 0.0
    seconds: float | None = None
    _out: object = field(default=None, repr=False)

    def start(self) -> Background:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._out = self.log.open("w")
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(
            self.cmd, cwd=self.workdir, stdout=self._out, stderr=subprocess.STDOUT, env=env()
        )
        return self

    def wait(self, timeout: float) -> int:
        try:
            rc = self.proc.wait(timeout=timeout)
        finally:
            if self.seconds is None and self.proc.poll() is not None:
                self.seconds = time.monotonic() - self.t0
                self._out.close()
        return rc

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        """Kill the process (only the one we started) if it still runs."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)


def finished(run: Background, timeout: float = 900) -> Background:
    """Wait for a background Snakemake run and require success."""
    rc = run.wait(timeout=timeout)
    assert rc == 0, f"{run.cmd} failed ({rc}):\n{run.output()[-4000:]}"
    return run


@dataclass(frozen=True)
class Job:
    rule: str
    outputs: tuple[str, ...]


def jobs(log: str) -> dict[int, Job]:
    """The jobs a Snakemake run started, by Snakemake job id, from its "rule X:" blocks."""
    found = {}
    for m in re.finditer(r"^(?:local)?rule (\w+):\n((?:    .*\n)+)", log, flags=re.M):
        fields = dict(re.findall(r"^    (\w+): (.*)$", m.group(2), flags=re.M))
        if "jobid" in fields:
            found[int(fields["jobid"])] = Job(m.group(1), tuple(fields.get("output", "").split(", ")))
    return found


def finished_jobs(log: str) -> dict[int, Job]:
    """The jobs a Snakemake run reported finished ("Finished jobid: N (Rule: X)")."""
    started = jobs(log)
    return {int(j): started[int(j)] for j in re.findall(r"Finished jobid: (\d+) \(Rule: \w+\)", log)}


def mtimes(paths: list[Path]) -> dict[str, int]:
    """mtime_ns of every file under `paths` that exists."""
    out = {}
    for p in paths:
        files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else []
        out.update({str(f): f.stat().st_mtime_ns for f in files})
    return out


def history(adapter_dir: Path) -> list[dict]:
    """train_history.json (TRL log_history entries) without timing keys."""
    entries = json.loads((adapter_dir / "train_history.json").read_text())
    return [{k: v for k, v in e.items() if not TIMING_KEY.search(k)} for e in entries]


def eval_files(workdir: Path) -> dict[str, bytes]:
    """scores.json and generated responses of every stage, by path relative to `workdir`."""
    out = {}
    for stage in STAGES:
        d = workdir / "results" / "eval" / EXP / stage
        for f in sorted(d.glob("*.json")):
            if f.name.endswith(".provenance.json"):  # git commit, times: differ between runs
                continue
            out[str(f.relative_to(workdir))] = f.read_bytes()
    return out


def adapter_tensors(adapter_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(adapter_dir / "adapter_model.safetensors"))


def tensorboard_runs(log_dir: Path, tag: str = "train/reward") -> list[dict[int, float]]:
    """{step: value} of `tag` per TensorBoard event file under `log_dir`, oldest file first (one file
    per training process, so one per SLURM attempt)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    runs = []
    files = sorted(log_dir.rglob("events.out.tfevents.*"), key=lambda p: (p.stat().st_mtime_ns, p.name))
    files = sorted(files, key=lambda p: int(p.name.split(".")[3]))  # creation time in the name
    for f in files:
        values = {}
        for event in EventFileLoader(str(f)).Load():
            for v in event.summary.value:
                if v.tag == tag:
                    values[event.step] = (
                        float(v.tensor.float_val[0]) if v.HasField("tensor") else v.simple_value
                    )
        runs.append(values)
    return runs


def copy_upstream(src: Path, dst: Path, paths: list[str]) -> None:
    """Copy finished outputs (mtimes kept) and Snakemake's metadata about them into a new workdir."""
    for rel in [*paths, ".snakemake/metadata"]:
        s, d = src / rel, dst / rel
        d.parent.mkdir(parents=True, exist_ok=True)
        if s.is_dir():
            shutil.copytree(s, d, copy_function=shutil.copy2)
        else:
            shutil.copy2(s, d)
