"""Compute jobs need no network: they run from the files the submit-host rules put down.

On most clusters compute nodes have no internet. The workflow's internet work (hub models and datasets,
image downloads, the judge's API) is done by local rules (fetch_model, fetch_dataset, judge_responses, judge_calibration) that
run where Snakemake runs; every other rule is a compute job that reads local files only.

* `test_compute_jobs_run_without_network`: the real VSR fixture (tests/fixtures/real/vsr, JSONL + COCO
  images, `source: local`) is fetched by fetch_dataset on the "submit host"; then Snakemake runs the
  compute jobs of the tiny Qwen experiment on it -- build_model, sft, merge_lora, evaluate -- in its own
  network namespace (`unshare -n`: loopback only, down), and they succeed. Needs root (or user namespaces).
* `test_network_work_is_never_a_compute_job`: in the paper's DAG (hub datasets, hub models, the OpenAI
  judge), every job that downloads or calls an API is a local rule, and the compute rules are never chosen
  for a hub/local dataset or a pretrained model.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_slurm_profile import declared_local_rules

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "workflow" / "Snakefile"
TEST_CONFIG = REPO / "config" / "test.yaml"
PAPER = REPO / "config" / "paper.yaml"
VSR_FIXTURE = REPO / "tests" / "fixtures" / "real" / "vsr"
EXP, DATASET = "vsr_local_qwen", "vsr_local"
#: The rules whose jobs may need the internet (hub ids, image URLs, the judge's API): local rules.
LOCAL_RULES = {"fetch_model", "fetch_dataset", "judge_responses", "judge_calibration"}
#: A connection attempt that only a network namespace without interfaces refuses at once.
PROBE = (
    "import socket, sys\n"
    "try:\n"
    "    socket.create_connection(('1.1.1.1', 443), timeout=5)\n"
    "except OSError as e:\n"
    "    print('NO-NETWORK', e.errno); sys.exit(0)\n"
    "print('NETWORK'); sys.exit(1)\n"
)


def run(cmd: list[str], cwd: Path, env: dict, timeout: float = 1500) -> str:
    proc = subprocess.run(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout
    )
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout[-4000:]}"
    return proc.stdout


def snakemake(*args: str, configfiles=()) -> list[str]:
    return [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(SNAKEFILE),
        *args,
        "--configfile",
        *map(str, configfiles),
    ]


def ran_rules(log: str) -> list[str]:
    """The rules of the jobs a (dry) run started, in order; `localrule X:` for local rules."""
    return re.findall(r"^(?:local)?rule (\w+):$", log, re.M)


def local_dataset_config(tmp_path: Path) -> Path:
    """The VSR fixture as a `source: local` dataset and a tiny-Qwen experiment on it (config/test.yaml sizes)."""
    root = tmp_path / "vsr"
    shutil.copytree(VSR_FIXTURE, root)
    cfg = {
        "datasets": {
            DATASET: {
                "kind": "relation",
                "source": "local",
                "loader": "vsr",
                "splits": {"train": 10, "val": 2, "test": 1},
                "real": {"local_dir": str(root), "splits": {"train": "train", "val": "dev", "test": "test"}},
            }
        },
        "experiments": {
            EXP: {"model": "qwen", "dataset": DATASET, "sft": {"per_device_train_batch_size": 4}}
        },
        "sft": {"max_steps": 4, "save_steps": 2},
    }
    path = tmp_path / "offline.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def unshare_available() -> bool:
    try:
        return subprocess.run(["unshare", "-n", "true"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.slow
@pytest.mark.skipif(not unshare_available(), reason="needs `unshare -n` (root or user namespaces)")
def test_compute_jobs_run_without_network(tmp_path):
    workdir = tmp_path / "wd"
    workdir.mkdir()
    configs = (TEST_CONFIG, local_dataset_config(tmp_path))
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
    target = f"results/eval/{EXP}/sft/scores.json"

    # The namespace really has no network (so the run below proves something).
    probe = run(["unshare", "-n", sys.executable, "-c", PROBE], workdir, env, timeout=60)
    assert probe.startswith("NO-NETWORK"), probe

    # Submit host: the download stage (fetch_dataset, a local rule) puts the dataset down under results/.
    log = run(snakemake("--cores", "1", f"results/data/{DATASET}", configfiles=configs), workdir, env)
    assert ran_rules(log) == ["fetch_dataset"], log[-3000:]
    manifest = json.loads((workdir / f"results/data/{DATASET}/manifest.json").read_text())
    assert {s: v["n"] for s, v in manifest["splits"].items()} == {"train": 10, "val": 2, "test": 1}

    # What is left for the target are compute jobs only.
    dry = run(snakemake("-n", "--cores", "2", target, configfiles=configs), workdir, env)
    left = ran_rules(dry)
    assert set(left) == {"build_model", "sft", "merge_lora", "evaluate"}, left

    # Compute jobs without network: every one of them succeeds from local files. HF_HUB_OFFLINE is unset here,
    # so nothing but the missing network keeps the libraries off the hub.
    no_hub_env = {k: v for k, v in env.items() if k != "HF_HUB_OFFLINE"}
    log = run(["unshare", "-n", *snakemake("--cores", "2", target, configfiles=configs)], workdir, no_hub_env)
    assert sorted(ran_rules(log)) == sorted(left), log[-3000:]
    assert "fetch_" not in log
    scores = json.loads((workdir / target).read_text())["splits"]
    assert {split: scores[split]["n"] for split in ("val", "test")} == {"val": 2, "test": 1}, scores
    # ... having read the fixture's images (real COCO photos, read in place), not synthetic renders
    from grpo_vqa.data.build import load_split

    images = load_split(workdir / f"results/data/{DATASET}", "train")["image_path"]
    assert len(images) == 10 and all(Path(p).parent == tmp_path / "vsr" / "images" for p in images), images
    responses = json.loads((workdir / f"results/eval/{EXP}/sft/generated_responses_test.json").read_text())
    assert len(responses) == 1 and responses[0]["id"].startswith("vsr-"), responses


def test_network_work_is_never_a_compute_job(tmp_path):
    """The paper's DAG: hub datasets, hub models and the OpenAI judge; all of their internet work is local."""
    paper = yaml.safe_load(PAPER.read_text())
    fetched = {d for d, c in paper["datasets"].items() if c.get("source", "synthetic") != "synthetic"}
    pretrained = {m for m, c in paper["models"].items() if c["source"] == "pretrained"}
    assert fetched and pretrained and paper["judge"]["backend"] == "openai"
    assert any(str(c["path"]).count("/") == 1 for m, c in paper["models"].items() if m in pretrained)

    # the rules that do it run where Snakemake runs
    assert declared_local_rules(tmp_path) == LOCAL_RULES
    # (a dry run only validates the hub ids: HF_HUB_OFFLINE=1 would reject them as not in the local cache)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "HF_HUB_OFFLINE": "0"}
    out = run(snakemake("-n", "--cores", "1", "all", configfiles=(PAPER,)), tmp_path, env, timeout=300)
    jobs = re.findall(r"^(?:localrule|rule) (\w+):\n((?:    .*\n)+)", out, re.M)
    assert len(jobs) > 50, out[-2000:]
    by_rule: dict[str, list[str]] = {}
    for rule, body in jobs:
        wc = re.search(r"^    wildcards: (.*)$", body, re.M)
        by_rule.setdefault(rule, []).append(wc.group(1) if wc else "")
    assert LOCAL_RULES <= set(by_rule), sorted(by_rule)
    # every hub/local dataset is fetched on the submit host; make_dataset only generates synthetic ones
    assert {w.removeprefix("dataset=") for w in by_rule["fetch_dataset"]} == fetched
    assert not {w.removeprefix("dataset=") for w in by_rule.get("make_dataset", [])} & fetched
    # every pretrained (hub) model is downloaded on the submit host; build_model only builds tiny ones
    assert {w.removeprefix("model=") for w in by_rule["fetch_model"]} == pretrained
    assert not {w.removeprefix("model=") for w in by_rule.get("build_model", [])} & pretrained
