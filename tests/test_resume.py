"""Walltime kill and resume of GRPO through SLURM (profiles/slurm-test).

The GRPO job's first attempt gets a 1-minute limit and more steps than it can do in that time, so SLURM
kills it (TIMEOUT); Snakemake retries it with a longer limit (`runtime` grows with `attempt`); the retry
resumes from the newest complete checkpoint, does the remaining steps only and ends with the same per-step
history (rewards, completion lengths, entropy, tokens: everything but timings) and the same adapter as an
uninterrupted local run of the same config, run at the same time.

Input: the SFT model etc. of the local reference DAG (`local_dag`), copied, so only rule grpo runs.
Takes about 3-4 minutes (the 1-minute limit is enforced 60-95 s after the job starts).
"""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

import pytest
import torch
import yaml
from dag_helpers import (
    EXP,
    Background,
    adapter_tensors,
    copy_upstream,
    dag_cmd,
    finished,
    history,
    tensorboard_runs,
)
from slurm_helpers import job_state, jobcomp_record, submitted_jobs

GRPO_ADAPTER = f"results/runs/{EXP}/grpo/adapter"
UPSTREAM = ["results/data", "results/models", f"results/runs/{EXP}/sft"]
SAVE_STEPS = 4
#: 8 prompts x 4 completions a step: 8 steps an epoch on the 64 training items, so the kill and the resume
#: fall in a later epoch (the data order of a resumed epoch is part of what is checked).
GRPO_SHAPE = {"batch_size": 32, "num_generations": 4}
#: Walltime of the GRPO job in minutes: 1 on the first attempt (killed), 15 and 29 on the retries.
GRPO_RUNTIME = "1 + 14 * (attempt - 1)"
#: Seconds of training the first attempt is given (after its ~15 s start-up): longer than the 95 s after
#: which SLURM has killed a 1-minute job at the latest, short enough to keep the test quick.
TRAIN_TARGET_S = 120
PROBE_STEPS = 3
RESUME_LINE = re.compile(r"\[grpo\] resuming from (\S+) \(step (\d+)\)")


def grpo_cmd(workdir: Path, max_steps: int, slurm: bool) -> list[str]:
    """Snakemake for the GRPO adapter with `max_steps` (an override file in `workdir`)."""
    override = workdir / "grpo_override.yaml"
    override.write_text(
        yaml.safe_dump({"grpo": {"max_steps": max_steps, "save_steps": SAVE_STEPS, **GRPO_SHAPE}})
    )
    if not slurm:
        return dag_cmd(GRPO_ADAPTER, configfiles=(override,), profile=None, extra=("--cores", "1"))
    resources = (f"grpo:runtime={GRPO_RUNTIME}", "grpo:mem_mb=attempt * 2000", "grpo:gpu=0")
    return dag_cmd(GRPO_ADAPTER, configfiles=(override,), extra=("--set-resources", *resources))


def seconds_per_step(workdir) -> float:
    """Time one GRPO step of this config on this machine (a short local run)."""
    probe = Background(
        grpo_cmd(workdir, PROBE_STEPS, slurm=False), workdir, workdir.parent / "probe.log"
    ).start()
    finished(probe, timeout=300)
    times = [e["step_time"] for e in json.loads((workdir / GRPO_ADAPTER / "train_history.json").read_text())]
    return max(sum(times) / len(times), 0.05)


@pytest.mark.slurm
@pytest.mark.slow
def test_grpo_walltime_kill_retry_resumes_and_matches_uninterrupted_run(slurm_cluster, local_dag, tmp_path):
    t_start = time.monotonic()
    local = finished(local_dag)
    slurm_wd, ref_wd, probe_wd = tmp_path / "slurm", tmp_path / "reference", tmp_path / "probe"
    for wd in (slurm_wd, ref_wd, probe_wd):
        copy_upstream(local.workdir, wd, UPSTREAM)

    step_s = seconds_per_step(probe_wd)
    max_steps = min(max(math.ceil(TRAIN_TARGET_S / step_s), 24), 400)

    # The SLURM run and the uninterrupted reference run, side by side (one core each).
    slurm = Background(grpo_cmd(slurm_wd, max_steps, slurm=True), slurm_wd, tmp_path / "slurm.log").start()
    reference = Background(
        grpo_cmd(ref_wd, max_steps, slurm=False), ref_wd, tmp_path / "reference.log"
    ).start()
    try:
        finished(slurm, timeout=900)
        finished(reference, timeout=600)
    finally:
        slurm.stop()
        reference.stop()
    log = slurm.output()

    # Only rule grpo ran, in SLURM: the first attempt was killed at its 1-minute limit, the retry completed.
    jobs = submitted_jobs(log)
    assert set(jobs) == {"grpo"}, jobs
    assert len(jobs["grpo"]) == 2, f"expected one retry: {jobs}"
    killed, retried = jobs["grpo"]
    assert job_state(killed) == "TIMEOUT", jobcomp_record(killed)
    assert job_state(retried) == "COMPLETED", jobcomp_record(retried)
    limits = {job: jobcomp_record(job)["TimeLimit"] for job in (killed, retried)}
    assert limits[killed] == "1" and int(limits[retried]) > 1, limits

    # The retry resumed from the newest complete checkpoint the killed attempt left ...
    m = RESUME_LINE.search((slurm_wd / f"results/logs/grpo/{EXP}.log").read_text())
    assert m, "the retried job did not resume"
    resumed_at = int(m.group(2))
    assert m.group(1).endswith(f"checkpoint-{resumed_at}") and 0 < resumed_at < max_steps
    assert resumed_at % SAVE_STEPS == 0

    # ... and did only the steps after it: the TensorBoard files of the two attempts (one per process).
    attempts = tensorboard_runs(slurm_wd / f"results/logs/tensorboard/{EXP}/grpo")
    assert len(attempts) == 2, [sorted(a) for a in attempts]
    first, second = attempts
    last_before_kill = max(first)
    assert sorted(first) == list(range(1, last_before_kill + 1))
    assert sorted(second) == list(range(resumed_at + 1, max_steps + 1)), "the retry redid or skipped steps"
    redone = last_before_kill - resumed_at
    assert 0 <= redone <= SAVE_STEPS
    # The redone steps reproduce what the killed process had computed for them.
    for step in range(resumed_at + 1, last_before_kill + 1):
        assert first[step] == second[step], (step, first[step], second[step])

    # The final history has every step once and equals the uninterrupted run's, step by step.
    got, want = history(slurm_wd / GRPO_ADAPTER), history(ref_wd / GRPO_ADAPTER)
    assert [e["step"] for e in got] == list(range(1, max_steps + 1))
    assert len(want) == len(got)
    for g, w in zip(got, want, strict=True):
        assert g == w, f"step {g['step']}: resumed {g} != uninterrupted {w}"
    a, b = adapter_tensors(slurm_wd / GRPO_ADAPTER), adapter_tensors(ref_wd / GRPO_ADAPTER)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    print(
        f"\nwalltime: {max_steps} steps ({step_s:.2f} s/step probe), killed job {killed} after step "
        f"{last_before_kill}, retry {retried} resumed at step {resumed_at} (save_steps {SAVE_STEPS}): "
        f"{redone} step(s) redone; SLURM run {slurm.seconds:.0f} s, test {time.monotonic() - t_start:.0f} s"
    )


def test_grpo_sampler_gives_a_resumed_epoch_the_uninterrupted_order():
    """Why rule grpo's trainer uses an epoch-seeded sampler (no SLURM needed, milliseconds): TRL's
    RepeatSampler draws each epoch's order from one generator, so a resumed process (a fresh sampler)
    would replay epoch 0's order in any later epoch; ours gives every epoch TRL's uninterrupted order."""
    from trl.trainer.utils import RepeatSampler

    from grpo_vqa.training.grpo import epoch_seeded_repeat_sampler_class, trainer_class

    data = list(range(16))
    kw = {"mini_repeat_count": 4, "batch_size": 2, "repeat_count": 1, "shuffle": True, "seed": 1234}
    trl = RepeatSampler(data, **kw)
    trl_epochs = [list(trl) for _ in range(3)]
    assert list(RepeatSampler(data, **kw)) == trl_epochs[0] != trl_epochs[2]  # TRL after a resume: wrong

    cls = epoch_seeded_repeat_sampler_class()
    ours = cls(data, **kw)
    uninterrupted = []
    for epoch in range(3):
        ours.set_epoch(epoch)
        uninterrupted.append(list(ours))
    assert uninterrupted == trl_epochs  # an uninterrupted run keeps TRL's order
    resumed = cls(data, **kw)
    resumed.set_epoch(2)
    assert list(resumed) == trl_epochs[2]  # a run resumed in epoch 2 gets epoch 2's order

    from trl import GRPOTrainer

    assert issubclass(trainer_class("hf"), GRPOTrainer)
    assert trainer_class("hf")._get_train_sampler is not GRPOTrainer._get_train_sampler
