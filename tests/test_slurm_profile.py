"""profiles/slurm against the REAL workflow: rule names, and the sbatch request of every job of the study.

* Every `set-resources` / `set-threads` key of profiles/slurm and profiles/slurm-test is a rule of
  workflow/Snakefile (`snakemake --list-rules`), and not a local rule (whose resources SLURM never sees).
* `snakemake --profile profiles/slurm --configfile config/paper.yaml -n all` (the profile without
  `software-deployment-method: conda`, as no conda is installed here) gives each job the sbatch request it
  needs: GPU, GPU partition and 8 CPUs per process only for pretrained models, at most 12 h per attempt (3
  attempts), the walltime signal; internet work (downloads, judge API) runs as local rules.
  The request is the sbatch command line the SLURM executor plugin itself builds from each job's resources
  (its get_submit_command and set_gres_string); the table of them is printed (`pytest -s`). No SLURM
  needed: a dry run submits nothing.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "workflow" / "Snakefile"
PROFILES = [REPO / "profiles" / "slurm", REPO / "profiles" / "slurm-test"]
PAPER = REPO / "config" / "paper.yaml"
TEST_CONFIG = REPO / "config" / "test.yaml"
WALLTIME_MIN = 720
LOCAL_RULES = {"fetch_model", "fetch_dataset", "judge_responses", "judge_calibration"}
GPU_RULES = {"sft", "grpo", "prompt_tuning", "merge_lora", "evaluate"}


def _snakemake(*args: str, cwd: Path, env: dict | None = None) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "HF_HUB_OFFLINE": "0", **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    return proc.stdout


def workflow_rules(tmp_path: Path) -> set[str]:
    out = _snakemake("--list-rules", cwd=tmp_path)
    # one rule a line, "name" or "name (docstring...)"; docstring continuation lines are indented
    return {m.group(1) for m in re.finditer(r"^(\w+)(?: \(|$)", out, re.M)}


LOCAL_RULES_SCRIPT = """
import json, sys
from pathlib import Path
from snakemake.api import SnakemakeApi
from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings, StorageSettings
with SnakemakeApi(OutputSettings()) as api:
    wf = api.workflow(
        resource_settings=ResourceSettings(), config_settings=ConfigSettings(), storage_settings=StorageSettings(),
        snakefile=Path(sys.argv[1]), workdir=Path(sys.argv[2]),
    )
    print("LOCALRULES=" + json.dumps(sorted(wf._workflow._localrules)))
"""


def declared_local_rules(tmp_path: Path) -> set[str]:
    """The workflow's `localrules:` (a dry run cannot show them: it runs every job locally)."""
    proc = subprocess.run(
        [sys.executable, "-c", LOCAL_RULES_SCRIPT, str(SNAKEFILE), str(tmp_path)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
        timeout=120,
    )
    m = re.search(r"^LOCALRULES=(.*)$", proc.stdout, re.M)
    assert m, proc.stdout[-2000:] + proc.stderr[-2000:]
    return set(json.loads(m.group(1)))


def unknown_rule_keys(profile: dict, rules: set[str]) -> list[str]:
    """`set-resources` / `set-threads` keys of a profile that are not rules, or are local rules."""
    keys = [*(profile.get("set-resources") or {}), *(profile.get("set-threads") or {})]
    return [k for k in keys if k not in rules or k in LOCAL_RULES]


def test_profile_keys_are_rules_of_the_workflow(tmp_path):
    rules = workflow_rules(tmp_path)
    assert {"sft", "grpo", "prompt_tuning", "evaluate", "fetch_model", "make_dataset"} <= rules, rules
    # internet work (downloads, the judge's API) runs where Snakemake runs, never as a SLURM job
    assert declared_local_rules(tmp_path) == LOCAL_RULES
    # the check catches a name that is not a rule (the rule's old name) and a local rule, whose resources SLURM
    # never sees
    assert unknown_rule_keys({"set-resources": {"prompt_tune": {}, "sft": {}}}, rules) == ["prompt_tune"]
    assert unknown_rule_keys({"set-threads": {"judge_responses": 2}}, rules) == ["judge_responses"]
    for profile in PROFILES:
        cfg = yaml.safe_load((profile / "config.yaml").read_text())
        assert unknown_rule_keys(cfg, rules) == [], f"{profile.name}: not rules of workflow/"


# ---- the sbatch request of every job --------------------------------------------------------------


def dry_run_jobs(out: str) -> list[dict]:
    """[{rule, wildcards, resources: {k: v}}] from a dry run's job blocks."""
    jobs = []
    for m in re.finditer(r"^(localrule|rule) (\w+):\n((?:    .*\n)+)", out, re.M):
        body = m.group(3)
        res = re.search(r"^    resources: (.*)$", body, re.M)
        wc = re.search(r"^    wildcards: (.*)$", body, re.M)
        resources = dict(kv.split("=", 1) for kv in res.group(1).split(", ")) if res else {}
        jobs.append(
            {
                "rule": m.group(2),
                "wildcards": wc.group(1) if wc else "",
                "resources": resources,
            }
        )
    return jobs


class _Resources(dict):
    """A job's resources as the plugin reads them (``job.resources.get(k)`` and ``job.resources.k``)."""

    def __getattr__(self, key):
        try:
            return self[key]
        except KeyError as exc:
            raise AttributeError(key) from exc


def plugin_sbatch_call(res: dict) -> str:
    """The sbatch command line snakemake-executor-plugin-slurm 2.8 submits for a job with these resources (its own
    get_submit_command + set_gres_string, as in its run_job; the partition as its get_partition_arg gives it)."""
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    typed = _Resources({k: int(v) if re.fullmatch(r"-?\d+", v) else v for k, v in res.items()})
    job = SimpleNamespace(resources=typed, threads=typed.get("cpus_per_task", 1))
    partition = f" -p {typed['slurm_partition']}" if typed.get("slurm_partition") else ""
    params = {
        "run_uuid": "RUN",
        "slurm_logfile": "LOG",
        "comment_str": "RULE",
        "account": "",
        "partition": partition,
        "workdir": "",
    }
    return get_submit_command(job, params) + set_gres_string(job)


def sbatch_request(res: dict) -> dict:
    """The options of the plugin's sbatch call for a job (partition, GPUs, CPUs, memory, time, the rest)."""
    argv = shlex.split(plugin_sbatch_call(res))
    assert argv[:2] == ["sbatch", "--parsable"], argv
    opts: dict[str, str] = {}
    extra = []
    i = 2
    while i < len(argv):
        arg = argv[i]
        if arg in ("--job-name", "--output", "--comment", "-p", "-t", "--mem"):
            opts[arg], i = argv[i + 1], i + 2
            continue
        key, _, value = arg.partition("=")
        if key in ("--gpus", "--gres", "--cpus-per-task", "--ntasks", "--ntasks-per-gpu", "--nodes"):
            opts[key] = value
        elif arg != "--export=ALL":
            extra.append(arg)
        i += 1
    return {
        "partition": opts.get("-p", ""),
        "gpus": int(opts.get("--gpus", 0)),
        "gres": opts.get("--gres", ""),
        "cpus": int(opts["--cpus-per-task"]),
        "mem_mb": int(opts["--mem"]),
        "time_min": int(opts["-t"]),
        "extra": " ".join(extra),
    }


def slurm_dry_run(tmp_path: Path, configfile: Path, attempt: int) -> list[dict]:
    profile = tmp_path / "profile"
    profile.mkdir(exist_ok=True)
    cfg = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())
    cfg.pop("software-deployment-method")  # no conda here; it changes no resource
    (profile / "config.yaml").write_text(yaml.safe_dump(cfg))
    env = {"GRPO_VQA_SLURM_PARTITION": "cpuq", "GRPO_VQA_SLURM_GPU_PARTITION": "gpuq"}
    out = _snakemake(
        "--profile",
        str(profile),
        "-n",
        "all",
        "--configfile",
        str(configfile),
        "--attempt",
        str(attempt),
        cwd=tmp_path,
        env=env,
    )
    return dry_run_jobs(out)


@pytest.mark.parametrize("attempt", [1, 3])
def test_paper_jobs_ask_slurm_for_what_they_use(tmp_path, attempt):
    jobs = slurm_dry_run(tmp_path, PAPER, attempt)
    assert len(jobs) > 50, len(jobs)
    by_rule: dict[str, list[dict]] = {}
    for job in jobs:
        by_rule.setdefault(job["rule"], []).append(job)
    assert {"fetch_model", "fetch_dataset", "sft", "grpo", "prompt_tuning", "merge_lora", "evaluate"} <= set(
        by_rule
    )
    paper = yaml.safe_load(PAPER.read_text())
    lines = [f"attempt {attempt}: rule [wildcards] -> sbatch request"]
    for job in jobs:
        rule, res = job["rule"], job["resources"]
        if rule == "all":
            continue
        if rule in LOCAL_RULES:  # runs where Snakemake runs (test_profile_keys_are_rules_of_the_workflow)
            lines.append(f"{rule} [{job['wildcards']}] -> local (submit host)")
            continue
        req = sbatch_request(res)
        lines.append(f"{rule} [{job['wildcards']}] -> {plugin_sbatch_call(res)}")
        assert 0 < req["time_min"] <= WALLTIME_MIN, (rule, req)
        assert req["extra"] == "--signal=URG@900", (rule, req)
        assert req["gres"] == "", (rule, req)  # one node: the plugin's --gpus
        if rule in GPU_RULES:
            exp = re.fullmatch(r"exp=(\w+)(, \w+=\w+)?", job["wildcards"]).group(1)
            model = paper["experiments"][exp]["model"]
            assert paper["models"][model]["source"] == "pretrained", (exp, model)
            assert req["gpus"] == 1 and req["partition"] == "gpuq" and req["cpus"] == 8, (rule, req)
            assert req["mem_mb"] == 64000 * attempt, (rule, req)
            if rule in {"sft", "grpo", "prompt_tuning"}:
                assert req["time_min"] == WALLTIME_MIN, (rule, req)  # every attempt: the full 12 h
        else:  # data generation, tables, figures: CPU jobs
            assert req["gpus"] == 0 and req["partition"] == "cpuq" and req["cpus"] == 1, (rule, req)
    print("\n" + "\n".join(lines))


def test_tiny_model_jobs_need_no_gpu(tmp_path):
    """The test config's tiny models: the same rules ask for no GPU, the CPU partition and 30-minute slots."""
    jobs = slurm_dry_run(tmp_path, TEST_CONFIG, 1)
    seen = set()
    for job in jobs:
        if job["rule"] in GPU_RULES:
            req = sbatch_request(job["resources"])
            assert req["gpus"] == 0 and req["partition"] == "cpuq" and req["cpus"] == 1, (job, req)
            assert req["mem_mb"] == 4000 and req["time_min"] == 30, (job, req)
            seen.add(job["rule"])
    assert {"sft", "grpo", "merge_lora", "evaluate"} <= seen, seen
