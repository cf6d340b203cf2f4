"""The local one-node SLURM and the Snakemake SLURM profiles.

The `slurm`-marked tests start SLURM with scripts/slurm/start_local_slurm.sh (see
tests/slurm_helpers.py) and need root; they skip without SLURM unless GRPO_VQA_REQUIRE_SLURM=1.
They take about 4-5 minutes, most of it waiting for the walltime kill and for Snakemake's
status polls. The profile tests at the end need neither SLURM nor root.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from slurm_helpers import (
    REPO,
    SLURM_TEST_PROFILE,
    SLURMCTLD_LOG,
    kill_process,
    run_id,
    run_snakemake,
    sbatch,
    scontrol_show_job,
    slurm_cluster_fixture,  # noqa: F401  (the `slurm_cluster` fixture)
    snakemake_cmd,
    squeue_jobs,
    submitted_jobs,
    wait_for_job_state,
    write_toy_workflow,
)

SLURM_PROFILE = REPO / "profiles" / "slurm"
LOCAL_PROFILE = REPO / "profiles" / "local"
WALLTIME_MIN = 720  # the clusters kill jobs at 12 h


# ---- SLURM itself ----------------------------------------------------------------------------


@pytest.mark.slurm
def test_start_script_is_idempotent_and_node_takes_jobs(slurm_cluster):
    assert slurm_cluster.start_seconds < 60
    again = subprocess.run(
        [str(REPO / "scripts/slurm/start_local_slurm.sh")], capture_output=True, text=True, timeout=90
    )
    assert again.returncode == 0, again.stderr
    assert f"node {slurm_cluster.node} is" in again.stdout
    sinfo = subprocess.run(
        ["sinfo", "--noheader", "--format=%P|%T|%N"], capture_output=True, text=True, check=True
    ).stdout.split()
    assert sinfo and sinfo[0].startswith("debug*|") and sinfo[0].endswith(f"|{slurm_cluster.node}")
    assert sinfo[0].split("|")[1] in {"idle", "mixed", "allocated", "completing"}


@pytest.mark.slurm
def test_plain_job_runs(slurm_cluster, tmp_path):
    job = sbatch(
        "--time=1", "--output=job.out", wrap="echo ran on $(hostname -s) as $SLURM_JOB_ID", cwd=tmp_path
    )
    assert wait_for_job_state(job, {"COMPLETED"}, timeout=60) == "COMPLETED"
    assert (tmp_path / "job.out").read_text().strip() == f"ran on {slurm_cluster.node} as {job}"
    info = scontrol_show_job(job)
    assert info is not None and info["ExitCode"] == "0:0" and info["Partition"] == "debug"


@pytest.mark.slurm
def test_walltime_kill_gives_timeout(slurm_cluster, tmp_path):
    # 1-minute limit, 300 s of work: SLURM must kill it at the limit. slurmctld checks time
    # limits about every 30 s and KillWait is 5 s, so expect the end between 60 and ~100 s.
    # `&&`, not `;`: proctrack/linuxproc sends SIGTERM to the job's processes one by one, and on a loaded
    # machine the batch shell can run on after its killed `sleep` before its own SIGTERM arrives (seen once:
    # "Terminated" then "not killed"); what matters is that the work was cut short at the limit.
    job = sbatch("--time=1", "--output=job.out", wrap="sleep 300 && echo not killed", cwd=tmp_path)
    wait_for_job_state(job, {"RUNNING"}, timeout=30, poll=0.5)
    t_run = time.monotonic()
    assert wait_for_job_state(job, {"TIMEOUT"}, timeout=150, poll=1.0) == "TIMEOUT"
    waited = time.monotonic() - t_run
    assert 55 <= waited <= 130, f"killed after {waited:.0f} s of running"
    print(f"TIMEOUT after {waited:.0f} s of running")
    info = scontrol_show_job(job)  # still held by slurmctld (MinJobAge)
    assert info is not None and info["JobState"] == "TIMEOUT" and info["Reason"] == "TimeLimit"
    assert "DUE TO TIME LIMIT" in (tmp_path / "job.out").read_text()
    assert "not killed" not in (tmp_path / "job.out").read_text()


# ---- the toy workflow through the slurm-test profile -------------------------------------------


def _first_line(path: Path) -> str:
    return path.read_text().splitlines()[0]


@pytest.mark.slurm
def test_toy_workflow_runs_through_slurm_test_profile(slurm_cluster, tmp_path):
    write_toy_workflow(tmp_path)
    proc = run_snakemake(tmp_path, "all", timeout=400)
    assert proc.returncode == 0, proc.stdout[-4000:]
    jobs = submitted_jobs(proc.stdout)
    assert set(jobs) == {"a", "b"} and all(len(ids) == 1 for ids in jobs.values()), jobs
    (a_id,), (b_id,) = jobs["a"], jobs["b"]
    # The rules ran inside those SLURM jobs ...
    assert (tmp_path / "a.txt").read_text().split() == [a_id]
    assert (tmp_path / "b.txt").read_text().split() == [a_id, b_id]
    # ... which SLURM records as completed jobs of this run, with the rule's resources.
    uuid = run_id(proc.stdout)
    listed = {j["id"]: j for j in squeue_jobs(name=uuid)}
    assert set(listed) == {a_id, b_id}
    for rule, job in (("a", a_id), ("b", b_id)):
        assert listed[job]["state"] == "COMPLETED" and listed[job]["comment"] == f"rule_{rule}"
        assert Path(listed[job]["workdir"]) == tmp_path
        info = scontrol_show_job(job)
        assert info["TimeLimit"] == "00:05:00" and "mem=100M" in info["TRES"], info
    ctld_log = SLURMCTLD_LOG.read_text(errors="replace")
    assert f"JobId={a_id} " in ctld_log and f"JobId={b_id} " in ctld_log


@pytest.mark.slurm
def test_rerun_after_sigkill_resumes_without_unlock(slurm_cluster, tmp_path):
    """SIGKILL Snakemake while rule b runs in SLURM, rerun the same command: it finishes, rule a
    is not redone, no `--unlock` needed (the profiles set nolock). The killed run's SLURM job keeps
    running (nobody cancels it) and its id stays in Snakemake's incomplete marker."""
    write_toy_workflow(tmp_path)
    cmd = snakemake_cmd("all", "--config", "b_sleep=20")
    log1 = tmp_path / "run1.log"
    with log1.open("w") as out:
        first = subprocess.Popen(cmd, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        running_b = []
        while not running_b and time.monotonic() < deadline and first.poll() is None:
            time.sleep(1)
            running_b = [
                j
                for j in squeue_jobs()
                if j["comment"] == "rule_b" and j["state"] == "RUNNING" and Path(j["workdir"]) == tmp_path
            ]
        assert running_b, "rule b never ran:\n" + log1.read_text()[-3000:]
    finally:
        kill_process(first, signal.SIGKILL)
    orphan = running_b[0]["id"]
    a_before = (tmp_path / "a.txt").read_text()
    a_mtime = (tmp_path / "a.txt").stat().st_mtime_ns
    assert not (tmp_path / "b.txt").exists()
    markers = [json.loads(p.read_text()) for p in (tmp_path / ".snakemake/incomplete").iterdir()]
    assert {"external_jobid": orphan} in markers

    t0 = time.monotonic()
    second = subprocess.run(
        cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=400
    )
    rerun_s = time.monotonic() - t0
    assert second.returncode == 0, second.stdout[-4000:]
    assert "LockException" not in second.stdout
    jobs = submitted_jobs(second.stdout)
    assert set(jobs) == {"b"}, f"rerun submitted {jobs}"  # a was not redone
    assert (tmp_path / "a.txt").read_text() == a_before
    assert (tmp_path / "a.txt").stat().st_mtime_ns == a_mtime
    b_lines = (tmp_path / "b.txt").read_text().split()
    assert b_lines[0] == a_before.strip() and b_lines[1] in {orphan, jobs["b"][0]}
    print(f"rerun after SIGKILL took {rerun_s:.0f} s; orphaned SLURM job {orphan}")
    # Leave no orphan behind for later tests.
    subprocess.run(["scancel", orphan], check=False)


# ---- profiles (no SLURM needed) -------------------------------------------------------------


def test_stale_lock_after_sigkill_blocks_rerun_unless_nolock(tmp_path):
    """Why the SLURM profiles set `nolock: true`: Snakemake's lock has no staleness check, so after
    SIGKILL the same command fails until `--unlock`. Measured with the local executor (fast)."""
    write_toy_workflow(tmp_path)
    args = ("all", "--cores", "1", "--config", "b_sleep=8")
    with (tmp_path / "run1.log").open("w") as out:
        first = subprocess.Popen(
            snakemake_cmd(*args, profile=None),
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "a.txt").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(2)  # rule b has started (sleeping)
        assert (tmp_path / "a.txt").exists() and first.poll() is None
        assert list((tmp_path / ".snakemake/locks").iterdir())
    finally:
        # Kill the whole process group we started: Snakemake and rule b's shell.
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=30)

    blocked = run_snakemake(tmp_path, *args, profile=None, timeout=120)
    assert blocked.returncode != 0 and "LockException" in blocked.stdout
    resumed = run_snakemake(tmp_path, *args, "--nolock", "--rerun-incomplete", profile=None, timeout=120)
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    assert "rule a:" not in resumed.stdout and "rule b:" in resumed.stdout
    assert (tmp_path / "b.txt").read_text().split() == ["none", "none"]


def _profile(path: Path) -> dict:
    return yaml.safe_load((path / "config.yaml").read_text())


# Keys where slurm-test differs from slurm on purpose (see the header of profiles/slurm-test).
SLURM_TEST_DIFFERENCES = {
    "jobs",
    "software-deployment-method",
    "latency-wait",
    "seconds-between-status-checks",
    "slurm-status-command",
    "slurm-init-seconds-before-status-checks",
    "slurm-keep-successful-logs",
    "default-resources",
    "set-resources",
}


def test_slurm_test_profile_keeps_the_slurm_profile_settings():
    slurm, test = _profile(SLURM_PROFILE), _profile(SLURM_TEST_PROFILE)
    for key in (slurm.keys() | test.keys()) - SLURM_TEST_DIFFERENCES:
        assert test.get(key) == slurm.get(key), (
            f"{key}: slurm-test {test.get(key)!r} vs slurm {slurm.get(key)!r}"
        )
    assert slurm["software-deployment-method"] == "conda" and "software-deployment-method" not in test
    assert test["slurm-status-command"] == "squeue"
    # The same default resources (the GPU, CPUs and partition of each job come from the rules), and the
    # same walltime signal, earlier before the minutes-long local limits.
    assert set(test["default-resources"]) == set(slurm["default-resources"])
    assert slurm["default-resources"]["slurm_extra"] == "'--signal=URG@900'"
    assert test["default-resources"]["slurm_extra"] == "'--signal=URG@60'"
    assert "set-resources" not in slurm  # nothing to override (tests/test_slurm_profile.py checks any keys)
    assert all("gpu" not in res for res in test["set-resources"].values())


def _eval_resource(value, attempt: int, threads: int = 4):
    from snakemake.resources import Resource

    if not isinstance(value, str):
        return value
    return Resource.cli_evaluator(
        "r", value, wildcards=None, input=None, attempt=attempt, threads=threads, async_run=None
    )


@pytest.mark.parametrize("attempt", [1, 2, 3])
def test_slurm_profile_resources_fit_the_12h_limit(attempt, monkeypatch):
    monkeypatch.setenv("GRPO_VQA_SLURM_PARTITION", "cpuq")
    monkeypatch.delenv("GRPO_VQA_SLURM_GPU_PARTITION", raising=False)
    slurm = _profile(SLURM_PROFILE)
    assert slurm["executor"] == "slurm" and slurm["retries"] == 2 and slurm["rerun-incomplete"] is True
    assert slurm["nolock"] is True
    defaults = {k: _eval_resource(v, attempt) for k, v in slurm["default-resources"].items()}
    assert defaults["slurm_partition"] == "cpuq" and defaults["cpus_per_task"] == 4
    assert 0 < defaults["runtime"] <= WALLTIME_MIN and defaults["mem_mb"] == attempt * 4000
    # the plugin rejects --gres/--gpus in slurm_extra; only the walltime signal goes there
    assert defaults["slurm_extra"] == "--signal=URG@900"


TOY_RULE_NAMES = (
    "make_dataset",
    "build_model",
    "sft",
    "merge_lora",
    "grpo",
    "prompt_tuning",
    "evaluate",
    "judge_responses",
    "report_tables",
)


@pytest.mark.parametrize("profile", [SLURM_PROFILE, SLURM_TEST_PROFILE, LOCAL_PROFILE], ids=lambda p: p.name)
def test_profiles_load_in_snakemake(profile, tmp_path):
    """Snakemake accepts each profile, and the resources it gives a GPU training job are as meant."""
    rules = "\n".join(
        f'rule {name}:\n    output: "{name}.txt"\n    shell: "touch {{output}}"\n' for name in TOY_RULE_NAMES
    )
    (tmp_path / "Snakefile").write_text(
        f"rule all:\n    input: {[f'{n}.txt' for n in TOY_RULE_NAMES]!r}\n\n{rules}"
    )
    env = {**os.environ, "GRPO_VQA_SLURM_GPU_PARTITION": "gpuq"}
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "--profile", str(profile), "--dry-run", "all"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    sft_block = proc.stdout.split("rule sft:")[1].split("rule ")[0]
    if profile == SLURM_PROFILE:
        # GPUs, CPUs and the GPU partition come from the workflow's rules, not from the profile
        assert "gpu=" not in sft_block and "slurm_extra=--signal=URG@900" in sft_block
    elif profile == SLURM_TEST_PROFILE:
        assert "gpu=" not in sft_block and "slurm_partition=debug" in sft_block
