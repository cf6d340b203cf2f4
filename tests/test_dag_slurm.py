"""The embedded DAG (config/test.yaml, the vsr_main table for vsr_qwen: data, model, SFT, merge, GRPO,
evaluation, table) through SLURM with profiles/slurm-test, with Snakemake SIGKILLed in the middle.

One scenario (the module fixture `killed_and_rerun`), three proofs:
  * Snakemake is SIGKILLed while the SFT job runs in SLURM (after its first checkpoint);
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
SFT_FIRST_CHECKPOINT = f"results/checkpoints/{EXP}/sft/checkpoint-5/.complete"  # save_steps 5 in test.yaml


def _wait_for(path: Path, run: Background, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert run.proc.poll() is None, f"snakemake ended early:\n{run.output()[-4000:]}"
        assert time.monotonic() < deadline, f"{path} not there after {timeout} s:\n{run.output()[-3000:]}"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def killed_and_rerun(slurm_cluster, local_dag, tmp_path_factory):
    base = tmp_path_factory.mktemp("slurm_dag")
    wd = base / "wd"
    cmd = dag_cmd(TABLE)
    t0 = time.monotonic()
    first = Background(cmd, wd, base / "run1.log").start()
    try:
        _wait_for(wd / SFT_FIRST_CHECKPOINT, first, timeout=600)
        running = [j["id"] for j in squeue_jobs() if j["state"] == "RUNNING" and Path(j["workdir"]) == wd]
    finally:
        first.stop()  # SIGKILL
    killed_after = time.monotonic() - t0
    log1 = first.output()
    done_before = finished_jobs(log1)
    kept = mtimes([wd / out for job in done_before.values() for out in job.outputs])
    markers = [json.loads(p.read_text()) for p in (wd / ".snakemake" / "incomplete").iterdir()]
    orphans = sorted({m["external_jobid"] for m in markers if "external_jobid" in m})
    orphans_before = {j: job_state(j) for j in orphans}

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
        "orphans": orphans,
        "orphans_before": orphans_before,
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
    # The dead run's SLURM jobs (SFT among them) were still running; the incomplete markers name them
    # and cancel_orphans.sh cancelled exactly those.
    assert r["running_at_kill"] and set(r["running_at_kill"]) <= set(r["orphans"]), r
    assert all(r["orphans_before"][j] == "RUNNING" for j in r["running_at_kill"]), r["orphans_before"]
    assert r["cancel"].returncode == 0, r["cancel"].stderr
    assert r["cancel"].stdout.split() == ["cancel_orphans:", "cancelled", *r["orphans"]], r["cancel"].stdout
    assert all(job_state(j) == "CANCELLED" for j in r["orphans"])
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
    # ... and SFT resumed from the checkpoint the cancelled job had saved.
    sft_log = (wd / f"results/logs/sft/{EXP}.log").read_text()
    assert f"[sft] resuming from results/checkpoints/{EXP}/sft/checkpoint-5" in sft_log
    assert (wd / TABLE).is_file() and not any((wd / ".snakemake" / "incomplete").iterdir())
    print(
        f"\nSIGKILL after {r['killed_after']:.0f} s (finished: {sorted(done_rules)}; orphans "
        f"{r['orphans']}); rerun {r['rerun_s']:.0f} s; whole scenario {r['total_s']:.0f} s"
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
            assert rec["JobState"] == ("CANCELLED" if job in r["orphans"] else "COMPLETED"), (rule, rec)


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
