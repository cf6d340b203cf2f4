"""Walltime kill and resume of GRPO through SLURM (profiles/slurm-test), with and without the walltime warning.

The GRPO job's first attempt gets a short limit and more steps than it can do in that time. Without the
warning (`slurm_extra` emptied) SLURM kills it (TIMEOUT) and the retry redoes the steps since the last
`save_steps` checkpoint. With the profile's `--signal=URG@60` the trainer saves a checkpoint at the step the
signal arrives in and exits (status 75, FAILED); the retry redoes no step. Either way Snakemake retries it
with a longer limit (`runtime` grows with `attempt`); the retry resumes from the newest complete checkpoint,
does the remaining steps only and ends with the same per-step history (rewards, completion lengths, entropy,
tokens: everything but timings) and the same adapter as an uninterrupted local run of the same config, run
at the same time.

Input: the SFT model etc. of the local reference DAG (`local_dag`), copied, so only rule grpo runs.
Takes about 3-4 minutes without the signal (the 1-minute limit is enforced 60-95 s after the job starts),
5-6 with it (a 3-minute limit; SLURM sends the signal 60-120 s before the limit).
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
GRPO_SHAPE = {"per_device_train_batch_size": 32, "num_generations": 4}
#: Walltime of the GRPO job in minutes, without / with the walltime signal: 1 (killed) or 3 (signalled 60-120 s
#: before the end) on the first attempt, then 15 and 29 on the retries (which the signal never reaches).
GRPO_RUNTIME = {False: "1 + 14 * (attempt - 1)", True: "3 + 12 * (attempt - 1)"}
#: Seconds of training the first attempt is given (after its ~15 s start-up): longer than the first attempt
#: can run (killed at the latest 95 s after a 1-minute job starts; 3 minutes with the signal), short enough to
#: keep the test quick.
TRAIN_TARGET_S = {False: 120, True: 200}
#: What the walltime warning saves and how the trainer ends (grpo_vqa.training.common).
WALLTIME_LINE = re.compile(r"\[grpo\] walltime warning \(SIGURG\): saved (\S+) at step (\d+) of (\d+)")
PROBE_STEPS = 3
RESUME_LINE = re.compile(r"\[grpo\] resuming from (\S+) \(step (\d+)\)")


def grpo_cmd(workdir: Path, max_steps: int, slurm: bool, signal: bool = False) -> list[str]:
    """Snakemake for the GRPO adapter with `max_steps` (an override file in `workdir`)."""
    override = workdir / "grpo_override.yaml"
    override.write_text(
        yaml.safe_dump({"grpo": {"max_steps": max_steps, "save_steps": SAVE_STEPS, **GRPO_SHAPE}})
    )
    if not slurm:
        return dag_cmd(GRPO_ADAPTER, configfiles=(override,), profile=None, extra=("--cores", "1"))
    resources = [f"grpo:runtime={GRPO_RUNTIME[signal]}", "grpo:mem_mb=attempt * 2000", "grpo:gpu=0"]
    if not signal:
        resources.append("grpo:slurm_extra=''")  # no --signal: SLURM's plain walltime kill
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
@pytest.mark.parametrize("signal", [False, True], ids=["kill", "signal"])
def test_grpo_walltime_kill_retry_resumes_and_matches_uninterrupted_run(
    signal, slurm_cluster, local_dag, tmp_path
):
    t_start = time.monotonic()
    local = finished(local_dag)
    slurm_wd, ref_wd, probe_wd = tmp_path / "slurm", tmp_path / "reference", tmp_path / "probe"
    for wd in (slurm_wd, ref_wd, probe_wd):
        copy_upstream(local.workdir, wd, UPSTREAM)

    step_s = seconds_per_step(probe_wd)
    max_steps = min(max(math.ceil(TRAIN_TARGET_S[signal] / step_s), 24), 400)

    # The SLURM run and the uninterrupted reference run, side by side (one core each).
    slurm = Background(
        grpo_cmd(slurm_wd, max_steps, slurm=True, signal=signal), slurm_wd, tmp_path / "slurm.log"
    ).start()
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

    # Only rule grpo ran, in SLURM: the first attempt was killed at its limit (or stopped itself at the
    # walltime warning, exit status 75), the retry completed.
    jobs = submitted_jobs(log)
    assert set(jobs) == {"grpo"}, jobs
    assert len(jobs["grpo"]) == 2, f"expected one retry: {jobs}"
    killed, retried = jobs["grpo"]
    assert job_state(killed) == ("FAILED" if signal else "TIMEOUT"), jobcomp_record(killed)
    assert job_state(retried) == "COMPLETED", jobcomp_record(retried)
    records = {job: jobcomp_record(job) for job in (killed, retried)}
    limits = {job: rec["TimeLimit"] for job, rec in records.items()}
    assert limits[killed] == ("3" if signal else "1") and int(limits[retried]) > 3, limits
    warned = WALLTIME_LINE.search(log)  # show-failed-logs prints the failed attempt's log
    if signal:
        # the trainer exited with 75 (the job's own exit code is that of Snakemake in its batch script: 1)
        assert "returned non-zero exit status 75." in log, log[-3000:]
        assert warned, "no walltime-warning checkpoint in the failed attempt's log:\n" + log[-3000:]
    else:
        assert not warned

    # The retry resumed from the newest complete checkpoint the killed attempt left ...
    m = RESUME_LINE.search((slurm_wd / f"results/logs/grpo/{EXP}.log").read_text())
    assert m, "the retried job did not resume"
    resumed_at = int(m.group(2))
    assert m.group(1).endswith(f"checkpoint-{resumed_at}") and 0 < resumed_at < max_steps
    if signal:  # from the checkpoint saved at the warning, whatever save_steps is
        assert m.group(1) == warned.group(1) and resumed_at == int(warned.group(2))
    else:
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
    if signal:
        assert redone == 0, f"{redone} step(s) redone after the walltime warning"
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
        f"\nwalltime ({'signal' if signal else 'kill'}): {max_steps} steps ({step_s:.2f} s/step probe), killed job {killed} after step "
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
