"""The embedded DAG (config/test.yaml, the vsr_main table for vsr_qwen: data, model, SFT, merge, GRPO,
evaluation, table) through SLURM with profiles/slurm-test, with Snakemake SIGKILLed in the middle.

One scenario (the module fixture `killed_and_rerun`), three proofs:
  * Snakemake is SIGKILLed while the SFT job runs in SLURM;
    scripts/slurm/cancel_orphans.sh cancels the jobs the dead run left in SLURM; the same command then
    finishes without `--unlock` or other cleanup and resubmits no rule that had finished;
  * every job of both runs is in SLURM's records (job-completion log), with the state it should have;
  * the results equal those of a local run (`--cores 2`, no profile) byte for byte: scores.json and the
    generated responses of every stage, the training histories and the adapters.
About 3-4 minutes (the local run overlaps with it).
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
import torch
from dag_helpers import (
    EXP,
    REPO,
    TABLE,
    Background,
    adapter_tensors,
    dag_cmd,
    env,
    eval_files,
    finished,
    finished_jobs,
    history,
    jobs,
    mtimes,
)
from slurm_helpers import job_state, jobcomp_record, squeue_jobs, submitted_jobs

CANCEL_ORPHANS = REPO / "scripts" / "slurm" / "cancel_orphans.sh"
DAG_JOBS = 10


def is_rule(job: dict[str, str], rule: str) -> bool:
    """The executor plugin's comment is rule_<rule> or rule_<rule>_wildcards_<values>."""
    return job["comment"] == f"rule_{rule}" or job["comment"].startswith(f"rule_{rule}_wildcards_")


def _wait_for_running(rule: str, wd: Path, run: Background, timeout: float) -> list[dict[str, str]]:
    """Wait until a SLURM job of `rule` runs in `wd`; returns all running jobs of `wd` at that moment."""
    deadline = time.monotonic() + timeout
    while True:
        assert run.proc.poll() is None, f"snakemake ended early:\n{run.output()[-4000:]}"
        assert time.monotonic() < deadline, f"no {rule} job after {timeout} s:\n{run.output()[-3000:]}"
        jobs = [j for j in squeue_jobs() if j["state"] == "RUNNING" and Path(j["workdir"]) == wd]
        if any(is_rule(j, rule) for j in jobs):
            return jobs
        time.sleep(0.5)


@pytest.fixture(scope="module")
def killed_and_rerun(slurm_cluster, local_dag, tmp_path_factory):
    base = tmp_path_factory.mktemp("slurm_dag")
    wd = base / "wd"
    cmd = dag_cmd(TABLE)
    t0 = time.monotonic()
    first = Background(cmd, wd, base / "run1.log").start()
    try:
        # SIGKILL as soon as SFT runs in SLURM: its start-up (imports, model, images) takes several
        # seconds, so it is still running when cancel_orphans.sh comes (10 test steps take ~5 s).
        running = {j["id"]: j for j in _wait_for_running("sft", wd, first, timeout=600)}
    finally:
        first.stop()  # SIGKILL
    killed_after = time.monotonic() - t0
    log1 = first.output()
    done_before = finished_jobs(log1)
    kept = mtimes([wd / out for job in done_before.values() for out in job.outputs])
    markers = [json.loads(p.read_text()) for p in (wd / ".snakemake" / "incomplete").iterdir()]
    in_slurm = {j["id"]: j["state"] for j in squeue_jobs() if Path(j["workdir"]) == wd}

    cancel = subprocess.run(
        [str(CANCEL_ORPHANS), str(wd)], capture_output=True, text=True, timeout=180, env=env()
    )
    t1 = time.monotonic()
    second = subprocess.run(
        cmd, cwd=wd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900, env=env()
    )
    return {
        "wd": wd,
        "killed_after": killed_after,
        "running_at_kill": running,
        "log1": log1,
        "done_before": done_before,
        "kept_mtimes": kept,
        "markers": markers,
        "states_before_cancel": in_slurm,
        "cancel": cancel,
        "second": second,
        "rerun_s": time.monotonic() - t1,
        "total_s": time.monotonic() - t0,
    }


@pytest.mark.slurm
@pytest.mark.slow
def test_rerun_after_sigkill_finishes_and_redoes_no_finished_job(killed_and_rerun):
    r = killed_and_rerun
    wd = r["wd"]
    done_rules = {job.rule for job in r["done_before"].values()}
    # The kill hit mid-DAG: data and base model done, SFT running in SLURM.
    assert {"make_dataset", "build_model"} <= done_rules and "sft" not in done_rules, done_rules
    # The dead run's SLURM jobs (SFT among them) were still running; cancel_orphans.sh cancelled those
    # still queued or running, and only those, and waited for them to end.
    cancel = r["cancel"]
    assert cancel.returncode == 0, cancel.stderr
    before = r["states_before_cancel"]
    active = {j for j, state in before.items() if state in {"PENDING", "RUNNING"}}
    sft = {j for j, job in r["running_at_kill"].items() if is_rule(job, "sft")}
    assert sft and sft <= active, (r["running_at_kill"], before)
    assert cancel.stdout.split()[:2] == ["cancel_orphans:", "cancelled"], cancel.stdout
    assert set(cancel.stdout.split()[2:]) == active, (cancel.stdout, before)
    assert all(job_state(j) == "CANCELLED" for j in active)
    # The same command, run again, finished without --unlock ...
    second = r["second"]
    assert second.returncode == 0, second.stdout[-4000:]
    assert "LockException" not in second.stdout and "IncompleteFilesException" not in second.stdout
    # ... redid no job that had finished (its outputs untouched) and did each of the others once ...
    done_outputs = {out for job in r["done_before"].values() for out in job.outputs}
    redo = jobs(second.stdout)
    assert not done_outputs & {out for job in redo.values() for out in job.outputs}
    assert len(redo) + len(r["done_before"]) == DAG_JOBS, (redo, r["done_before"])
    assert sum(len(v) for v in submitted_jobs(second.stdout).values()) == len(redo)
    assert mtimes(list(map(Path, r["kept_mtimes"]))) == r["kept_mtimes"]
    # ... SFT among them, and it completed this time.
    assert "sft" in {job.rule for job in redo.values()}
    assert "[sft] done:" in (wd / f"results/logs/sft/{EXP}.log").read_text()
    assert (wd / TABLE).is_file() and not any((wd / ".snakemake" / "incomplete").iterdir())
    print(
        f"\nSIGKILL after {r['killed_after']:.0f} s (finished: {sorted(done_rules)}; cancelled orphans "
        f"{sorted(active)}; incomplete markers {r['markers']}); rerun {r['rerun_s']:.0f} s; "
        f"whole scenario {r['total_s']:.0f} s"
    )


@pytest.mark.slurm
@pytest.mark.slow
def test_dag_jobs_are_in_slurm_records(killed_and_rerun):
    r = killed_and_rerun
    jobs1, jobs2 = submitted_jobs(r["log1"]), submitted_jobs(r["second"].stdout)
    # Every rule of the DAG ran as SLURM jobs over the two runs ...
    assert set(jobs1) | set(jobs2) == {
        "make_dataset",
        "build_model",
        "sft",
        "merge_lora",
        "grpo",
        "evaluate",
        "table",
    }
    # ... which SLURM's job-completion log records, in this workdir, cancelled or completed.
    for rule, ids in [*jobs1.items(), *jobs2.items()]:
        for job in ids:
            rec = jobcomp_record(job)
            assert rec is not None, f"job {job} ({rule}) is not in SLURM's job-completion log"
            assert Path(rec["WorkDir"]) == r["wd"], rec
            cancelled = r["states_before_cancel"].get(job) in {"PENDING", "RUNNING"}
            assert rec["JobState"] == ("CANCELLED" if cancelled else "COMPLETED"), (rule, rec)


@pytest.mark.slurm
@pytest.mark.slow
def test_slurm_results_equal_local_run(killed_and_rerun, local_dag):
    wd, local = killed_and_rerun["wd"], finished(local_dag).workdir
    got, want = eval_files(wd), eval_files(local)
    assert sorted(got) == sorted(want) and len(got) == 3 * 4  # scores + val/test/test-blank responses
    for name in want:
        assert got[name] == want[name], f"{name} differs between the SLURM and the local run"
    for stage in ("sft", "grpo"):
        adapter = Path("results/runs") / EXP / stage / "adapter"
        assert history(wd / adapter) == history(local / adapter), stage
        a, b = adapter_tensors(wd / adapter), adapter_tensors(local / adapter)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), stage
