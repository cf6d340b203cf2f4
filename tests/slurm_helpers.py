"""Helpers for tests that run on the local one-node SLURM (scripts/slurm/start_local_slurm.sh).

Use the session fixture in a test module (or re-export it from tests/conftest.py):

    from slurm_helpers import slurm_cluster_fixture  # noqa: F401  (the `slurm_cluster` fixture)

    @pytest.mark.slurm
    def test_x(slurm_cluster, tmp_path):
        job = sbatch("--time=1", wrap="true", cwd=tmp_path)
        assert wait_for_job_state(job, {"COMPLETED"}, timeout=60) == "COMPLETED"

Without SLURM installed (no `sinfo`) the fixture skips the test, unless GRPO_VQA_REQUIRE_SLURM=1
(CI sets it), in which case it fails. Without slurmdbd there is no `sacct`: the state of a job
comes from `scontrol show job` while slurmctld still holds the job (MinJobAge=300 s after it
ends), then from the job-completion log the local slurm.conf writes.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
START_SCRIPT = REPO / "scripts" / "slurm" / "start_local_slurm.sh"
STOP_SCRIPT = REPO / "scripts" / "slurm" / "stop_local_slurm.sh"
SLURM_TEST_PROFILE = REPO / "profiles" / "slurm-test"
JOBCOMP_LOG = Path("/var/log/slurm/jobcomp.log")
SLURMCTLD_LOG = Path("/var/log/slurm/slurmctld.log")
START_TIMEOUT_S = 60

#: Job states after which a job never runs again.
TERMINAL_STATES = frozenset(
    {
        "BOOT_FAIL",
        "CANCELLED",
        "COMPLETED",
        "DEADLINE",
        "FAILED",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "PREEMPTED",
        "TIMEOUT",
    }
)

#: Two rules that run through SLURM: a writes its SLURM job id, b (after `b_sleep` seconds)
#: copies it and appends its own. A missing SLURM_JOB_ID is written as "none".
TOY_SNAKEFILE = """\
rule all:
    input:
        "b.txt",


rule a:
    output:
        "a.txt",
    resources:
        runtime=5,
        mem_mb=100,
    shell:
        "echo ${{SLURM_JOB_ID:-none}} > {output}"


rule b:
    input:
        "a.txt",
    output:
        "b.txt",
    params:
        sleep=config.get("b_sleep", 1),
    resources:
        runtime=5,
        mem_mb=100,
    shell:
        "sleep {params.sleep}; cat {input} > {output}.tmp;"
        " echo ${{SLURM_JOB_ID:-none}} >> {output}.tmp; mv {output}.tmp {output}"
"""


def require_slurm() -> bool:
    """True when the tests must not skip for lack of SLURM (GRPO_VQA_REQUIRE_SLURM=1)."""
    return os.environ.get("GRPO_VQA_REQUIRE_SLURM", "") == "1"


def skip_or_fail(reason: str) -> None:
    if require_slurm():
        pytest.fail(f"{reason} (GRPO_VQA_REQUIRE_SLURM=1 forbids skipping)")
    pytest.skip(reason)


def _run(cmd: list[str], timeout: float = 30, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=check)


@dataclass(frozen=True)
class SlurmCluster:
    node: str
    partition: str
    started_here: bool  # the fixture started the daemons (and stops them at the end)
    start_seconds: float  # wall time of start_local_slurm.sh


def daemons_running() -> bool:
    """slurmctld answers (i.e. the cluster is up) -- checked with `scontrol ping`."""
    if shutil.which("scontrol") is None:
        return False
    try:
        out = _run(["scontrol", "ping"], timeout=10, check=False).stdout
    except subprocess.TimeoutExpired:
        return False
    return "is UP" in out


def start_cluster() -> SlurmCluster:
    """Run start_local_slurm.sh (idempotent) within START_TIMEOUT_S and describe the cluster."""
    if shutil.which("sinfo") is None:
        skip_or_fail(
            "SLURM is not installed (no sinfo): apt-get install slurm-wlm munge, "
            "then scripts/slurm/start_local_slurm.sh"
        )
    if os.geteuid() != 0:
        skip_or_fail("the local SLURM is started as root; these tests must run as root")
    was_running = daemons_running()
    env = {**os.environ, "GRPO_VQA_SLURM_START_TIMEOUT": str(START_TIMEOUT_S)}
    t0 = time.monotonic()
    try:
        proc = subprocess.run(
            [str(START_SCRIPT)], capture_output=True, text=True, env=env, timeout=START_TIMEOUT_S + 30
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"{START_SCRIPT.name} did not finish within {START_TIMEOUT_S + 30} s")
    elapsed = time.monotonic() - t0
    if proc.returncode != 0:
        pytest.fail(f"{START_SCRIPT.name} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    node = _run(["hostname", "-s"]).stdout.strip()
    return SlurmCluster(node=node, partition="debug", started_here=not was_running, start_seconds=elapsed)


def stop_cluster() -> None:
    subprocess.run([str(STOP_SCRIPT)], capture_output=True, text=True, timeout=90, check=False)


@pytest.fixture(scope="session", name="slurm_cluster")
def slurm_cluster_fixture():
    """The local one-node SLURM, started for the session (stopped again if this fixture started it)."""
    cluster = start_cluster()
    yield cluster
    if cluster.started_here:
        stop_cluster()


# ---- jobs ----------------------------------------------------------------------------------


def sbatch(*args: str, wrap: str | None = None, cwd: Path | str | None = None) -> str:
    """Submit a batch job; returns its job id."""
    cmd = ["sbatch", "--parsable", *args]
    if wrap is not None:
        cmd += ["--wrap", wrap]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30, cwd=cwd)
    if proc.returncode != 0:
        raise RuntimeError(f"sbatch failed: {proc.stderr.strip()}")
    return proc.stdout.strip().split(";")[0]


def scontrol_show_job(job_id: str) -> dict[str, str] | None:
    """Fields of `scontrol show job -o` (values containing spaces are cut at the first space),
    or None once slurmctld has forgotten the job (MinJobAge after it ended)."""
    proc = _run(["scontrol", "show", "job", "-o", str(job_id)], check=False)
    if proc.returncode != 0 or "JobId=" not in proc.stdout:
        return None
    return dict(tok.split("=", 1) for tok in proc.stdout.split() if "=" in tok)


def jobcomp_record(job_id: str) -> dict[str, str] | None:
    """The job-completion log's line for a finished job (kept after slurmctld forgets the job)."""
    if not JOBCOMP_LOG.is_file():
        return None
    record = None
    for line in JOBCOMP_LOG.read_text(errors="replace").splitlines():
        if line.startswith(f"JobId={job_id} "):
            record = dict(tok.split("=", 1) for tok in line.split() if "=" in tok)
    return record


def job_state(job_id: str) -> str | None:
    """Current state of a job (PENDING, RUNNING, COMPLETED, TIMEOUT, ...), None if unknown."""
    info = scontrol_show_job(job_id)
    if info is None:
        info = jobcomp_record(job_id)
    if info is None:
        return None
    return info.get("JobState")


def wait_for_job_state(job_id: str, states: Iterable[str], timeout: float, poll: float = 1.0) -> str:
    """Poll until the job is in one of `states`; returns that state.

    Raises AssertionError if the job ends in another terminal state or the timeout passes."""
    wanted = set(states)
    deadline = time.monotonic() + timeout
    state = None
    while True:
        state = job_state(job_id)
        if state in wanted:
            return state
        if state in TERMINAL_STATES:
            raise AssertionError(f"job {job_id} ended as {state}, expected one of {sorted(wanted)}")
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"job {job_id} not in {sorted(wanted)} after {timeout} s (last state: {state})"
            )
        time.sleep(poll)


def squeue_jobs(*, name: str | None = None) -> list[dict[str, str]]:
    """Jobs slurmctld knows (queued, running and finished within MinJobAge):
    dicts with id, name, state, comment (the snakemake plugin puts rule_<rule> there), workdir."""
    cmd = ["squeue", "--noheader", "--states=all", "--format=%i|%j|%T|%k|%Z"]
    if name:
        cmd.append(f"--name={name}")
    out = _run(cmd).stdout
    keys = ("id", "name", "state", "comment", "workdir")
    return [
        dict(zip(keys, line.split("|"), strict=True)) for line in out.splitlines() if line.count("|") == 4
    ]


# ---- snakemake -----------------------------------------------------------------------------


def write_toy_workflow(workdir: Path) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    snakefile = workdir / "Snakefile"
    snakefile.write_text(TOY_SNAKEFILE)
    return snakefile


def snakemake_cmd(*args: str, profile: Path | None = SLURM_TEST_PROFILE) -> list[str]:
    """`python -m snakemake [--profile P] ARGS` with the current interpreter."""
    cmd = [sys.executable, "-m", "snakemake"]
    if profile is not None:
        cmd += ["--profile", str(profile)]
    return cmd + list(args)


def run_snakemake(
    workdir: Path, *args: str, profile: Path | None = SLURM_TEST_PROFILE, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """Run snakemake in `workdir` to the end; stdout and stderr are combined in .stdout."""
    return subprocess.run(
        snakemake_cmd(*args, profile=profile),
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
    )


def run_id(log: str) -> str | None:
    """The SLURM run id (the job name of all its SLURM jobs) a snakemake run printed."""
    m = re.search(r"SLURM run ID: (\S+)", log)
    return m.group(1) if m else None


def submitted_jobs(log: str) -> dict[str, list[str]]:
    """{rule: [SLURM job ids]} from a snakemake log ("Job N has been submitted with SLURM jobid
    J (log: .../slurm_logs/rule_<rule>/...)")."""
    jobs: dict[str, list[str]] = {}
    for m in re.finditer(r"submitted with SLURM jobid (\d+) \(log: \S*/rule_(\w+)/", log):
        jobs.setdefault(m.group(2), []).append(m.group(1))
    return jobs


def kill_process(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """Send `sig` to one process we started (by pid) and reap it."""
    if proc.poll() is None:
        os.kill(proc.pid, sig)
    proc.wait(timeout=30)
