"""Faults: SIGKILL each stage at a seeded random point, rerun, and get what an uninterrupted run gets; and
after a config edit exactly the affected rules (and only those) rerun.

One tiny uninterrupted reference run of the DAG (make_dataset, build_model, sft, merge_lora, grpo, evaluate,
judge_responses; `TINY` in reliability_helpers) is made once for the module. Each kill test copies the
reference's upstream outputs (mtimes and Snakemake metadata kept) into a fresh working directory, starts
Snakemake for one stage (`--cores 1`), SIGKILLs Snakemake and its job after a seeded number of progress
lines (training) or once a seeded amount of work is cached (evaluation, judge) or after a seeded delay
(data), reruns the same command and compares the final outputs with the reference's.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from reliability_helpers import (  # noqa: E402
    EXP,
    REPO,
    TARGETS,
    case,
    env,
    kill_tree,
    run,
    snakemake_cmd,
    tree_bytes,
    wait_for,
    write_override,
)

SEED = 20261125
TIMING_KEY = re.compile(r"time|per_second")
FIG_DIR = Path(
    __import__("os").environ.get("RELIABILITY_FIG_DIR", REPO / "results" / "figures" / "reliability")
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted tiny run: (workdir, override file)."""
    base = tmp_path_factory.mktemp("reliability_ref")
    override = write_override(base / "override.yaml")
    wd = base / "wd"
    proc = run(snakemake_cmd(wd, TARGETS, override, "--cores", "2"), timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return wd, override


def copy_upstream(src: Path, dst: Path, paths: list[str]) -> None:
    for rel in [*paths, ".snakemake/metadata"]:
        s, d = src / rel, dst / rel
        d.parent.mkdir(parents=True, exist_ok=True)
        if s.is_dir():
            shutil.copytree(s, d, copy_function=shutil.copy2)
        else:
            shutil.copy2(s, d)


def count_lines(path: Path, pattern: str) -> int:
    if not path.is_file():
        return 0
    return len(re.findall(pattern, path.read_text(errors="replace"), flags=re.M))


def kill_then_rerun(wd: Path, override: Path, target: str, trigger, *, env_extra=None, timeout=300):
    """Start Snakemake for ``target``, SIGKILL it and its job when ``trigger(wd)`` is true, rerun it;
    returns the rerun's output."""
    # --nolock as in profiles/slurm: Snakemake's lock carries no PID, so a SIGKILLed run leaves a stale one
    cmd = snakemake_cmd(wd, [target], override, "--cores", "1", "--nolock")
    log = (wd.parent / "killed.log").open("w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env(**(env_extra or {})))
    fired = wait_for(lambda: trigger(wd), timeout=timeout, proc=proc)
    running = proc.poll() is None
    kill_tree(proc)
    log.close()
    assert fired and running, (
        f"the kill point was never reached:\n{(wd.parent / 'killed.log').read_text()[-3000:]}"
    )
    rerun = run([*cmd, "--rerun-incomplete"], timeout=timeout, **(env_extra or {}))
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    return rerun.stdout + rerun.stderr


def history(adapter: Path) -> list[dict]:
    entries = json.loads((adapter / "train_history.json").read_text())
    return [{k: v for k, v in e.items() if not TIMING_KEY.search(k)} for e in entries]


def tensors(adapter: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(adapter / "adapter_model.safetensors"))


def no_provenance(rel: str) -> bool:
    return rel.endswith(".provenance.json")  # git commit and time: differ between runs by design


def test_sigkill_data_stage_redoes_cleanly(reference, tmp_path, record_property):
    ref, override = reference
    wd = tmp_path / "wd"
    delay = random.Random(f"{SEED}-data").uniform(0.5, 4.0)
    log = wd / "results/logs/make_dataset/vsr_synth.log"
    import time

    started: list[float] = []

    def trigger(_wd):
        if not log.exists():
            return False
        started.append(started[0] if started else time.monotonic())
        return time.monotonic() - started[0] >= delay

    kill_then_rerun(wd, override, "results/data/vsr_synth", trigger)
    want = tree_bytes(ref / "results/data/vsr_synth", skip=no_provenance)
    got = tree_bytes(wd / "results/data/vsr_synth", skip=no_provenance)
    assert got.keys() == want.keys()
    differing = [k for k in want if want[k] != got[k]]
    assert not differing, differing
    case(
        record_property,
        f"SIGKILL make_dataset {delay:.1f} s into its job, rerun",
        "rerun redoes the dataset; every file byte-equal to an uninterrupted run",
        f"{len(got)} files byte-equal",
    )


@pytest.mark.parametrize("stage", ["sft", "grpo"])
def test_sigkill_training_resumes_and_matches(reference, tmp_path, stage, record_property):
    ref, override = reference
    wd = tmp_path / "wd"
    upstream = ["results/data", "results/models"]
    if stage == "grpo":
        upstream.append(f"results/runs/{EXP}/sft")
    copy_upstream(ref, wd, upstream)
    max_steps = 4 if stage == "sft" else 3
    kill_after = random.Random(f"{SEED}-{stage}").randint(1, max_steps - 1)
    log = wd / f"results/logs/{stage}/{EXP}.log"
    pattern = rf"^\[{stage}\] step (\d+)/{max_steps}"
    adapter = f"results/runs/{EXP}/{stage}/adapter"

    def trigger(_wd):
        # the line for step k+1 is printed once step k (and its checkpoint) is done
        return count_lines(log, pattern) >= kill_after + 1

    out = kill_then_rerun(wd, override, adapter, trigger)
    rerun_log = (wd / f"results/logs/{stage}/{EXP}.log").read_text()
    m = re.search(rf"\[{stage}\] resuming from \S+ \(step (\d+)\)", rerun_log)
    assert m, f"the rerun did not resume:\n{rerun_log[-2000:]}\n{out[-2000:]}"
    resumed_at = int(m.group(1))
    assert 1 <= resumed_at < max_steps
    got_h, want_h = history(wd / adapter), history(ref / adapter)
    assert [e["step"] for e in got_h] == list(range(1, max_steps + 1))
    assert got_h == want_h
    a, b = tensors(wd / adapter), tensors(ref / adapter)
    import torch

    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    if stage == "sft":
        loss_figure(want_h, got_h, resumed_at, FIG_DIR / "sft_kill_resume.png")
    case(
        record_property,
        f"SIGKILL {stage} after {kill_after} of {max_steps} steps, rerun",
        "resumes from the newest complete checkpoint; history and adapter equal an uninterrupted run's",
        f"resumed at step {resumed_at}; {len(got_h)} history entries equal; {len(a)} tensors bit-equal",
    )


def loss_figure(want: list[dict], got: list[dict], resumed_at: int, out: Path) -> None:
    """Training loss of the uninterrupted run and of the killed-then-resumed one, per step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from grpo_vqa.provenance import write_sidecar

    out.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot([e["step"] for e in want], [e["loss"] for e in want], "-", lw=3, alpha=0.4, label="uninterrupted")
    ax.plot([e["step"] for e in got], [e["loss"] for e in got], "o--", label="SIGKILL + rerun")
    ax.axvline(resumed_at + 0.5, color="grey", ls=":", label=f"killed; resumed from checkpoint-{resumed_at}")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("SFT step")
    ax.set_ylabel("training loss")
    ax.set_title("SFT killed with SIGKILL and resumed (tiny config)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    write_sidecar(out, {"figure": "sft_kill_resume", "seed": SEED, "resumed_at": resumed_at}, [])


def test_sigkill_evaluation_resumes_and_scores_are_byte_equal(reference, tmp_path, record_property):
    ref, override = reference
    wd = tmp_path / "wd"
    copy_upstream(ref, wd, ["results/data", "results/models", f"results/runs/{EXP}"])
    n_cached = random.Random(f"{SEED}-eval").randint(1, 2)  # splits fully cached before the kill
    cache = wd / f"results/checkpoints/eval/{EXP}/grpo"

    def trigger(_wd):
        return sum(1 for f in cache.rglob("*.jsonl") if f.stat().st_size > 0) >= n_cached

    kill_then_rerun(wd, override, f"results/eval/{EXP}/grpo/scores.json", trigger)
    want = tree_bytes(ref / f"results/eval/{EXP}/grpo", skip=no_provenance)
    got = tree_bytes(wd / f"results/eval/{EXP}/grpo", skip=no_provenance)
    assert got.keys() == want.keys() and "scores.json" in got
    assert [k for k in want if want[k] != got[k]] == []
    case(
        record_property,
        f"SIGKILL evaluate once {n_cached} split(s) are cached, rerun",
        "rerun reuses the cached splits; scores.json and responses byte-equal to an uninterrupted run",
        f"{len(got)} files byte-equal",
    )


def test_sigkill_judge_resumes_and_pays_nothing_twice(reference, tmp_path, record_property):
    from fake_openai_server import FakeOpenAIServer

    ref, _ = reference
    target = f"results/judge/{EXP}/grpo/test.taxonomy.jsonl"
    upstream = [f"results/eval/{EXP}/grpo"]
    key = "sk-reliability-judge-0000"
    records = {}
    with FakeOpenAIServer(delay_s=0.15) as srv:
        judge = {"backend": "openai", "base_url": srv.base_url, "concurrency": 1, "max_retries": 1}
        for name in ("uninterrupted", "killed"):
            wd = tmp_path / name / "wd"
            copy_upstream(ref, wd, upstream)
            override = write_override(tmp_path / name / "override.yaml", {"judge": judge})
            before = srv.total
            if name == "uninterrupted":
                proc = run(snakemake_cmd(wd, [target], override, "--cores", "1"), OPENAI_API_KEY=key)
                assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
                n_items = srv.total - before
            else:
                kill_at = random.Random(f"{SEED}-judge").randint(2, n_items - 2)
                cache = wd / f"results/judge/.cache/{EXP}/grpo/test"

                def trigger(_wd, cache=cache, kill_at=kill_at):
                    return sum(count_lines(f, r"^\{") for f in cache.rglob("*.jsonl")) >= kill_at

                kill_then_rerun(wd, override, target, trigger, env_extra={"OPENAI_API_KEY": key})
                paid = srv.total - before
            records[name] = [
                {k: v for k, v in json.loads(line).items() if k not in ("latency_s", "usage", "judged_utc")}
                for line in (wd / target).read_text().splitlines()
            ]
    assert n_items == 8
    assert records["killed"] == records["uninterrupted"]
    # a request in flight at the kill may be paid twice; finished ones never are
    assert n_items <= paid <= n_items + 1, paid
    case(
        record_property,
        f"SIGKILL judge_responses after {kill_at} of {n_items} verdicts (fake OpenAI server), rerun",
        "rerun judges only the missing items; records equal an uninterrupted run's",
        f"{paid} requests for {n_items} items; records equal",
    )


def planned_jobs(wd: Path, override: Path, extra_override: dict | None, tmp_path: Path) -> dict[str, int]:
    """Rule -> job count of `snakemake -n` on the finished reference after an (optional) config edit."""
    files = [override]
    if extra_override is not None:
        import yaml

        edit = tmp_path / "edit.yaml"
        edit.write_text(yaml.safe_dump(extra_override))
        files.append(edit)
    cmd = snakemake_cmd(wd, TARGETS, files[0], *map(str, files[1:]), "-n", "--cores", "1")
    proc = run(cmd)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    if "Nothing to be done" in out:
        return {}
    table = re.search(r"Job stats:\n(.*?)\n\n", out, flags=re.S)
    assert table, out
    rows = re.findall(r"^(\w+)\s+(\d+)$", table.group(1), flags=re.M)
    return {rule: int(n) for rule, n in rows if rule != "total"}


EDITS = {
    "nothing": (None, {}),
    "experiments.vsr_qwen.grpo.learning_rate": (
        {"experiments": {EXP: {"grpo": {"learning_rate": 5.0e-4}}}},
        {"grpo": 1, "merge_lora": 1, "evaluate": 1, "judge_responses": 1},
    ),
    "evaluation.max_new_tokens": (
        {"evaluation": {"max_new_tokens": 6}},
        {"evaluate": 1, "judge_responses": 1},
    ),
    "judge.max_items_per_split": ({"judge": {"max_items_per_split": 4}}, {"judge_responses": 1}),
}


@pytest.mark.parametrize("key", list(EDITS))
def test_config_edit_reruns_exactly_the_affected_rules(reference, tmp_path, key, record_property):
    ref, override = reference
    edit, expected = EDITS[key]
    got = planned_jobs(ref, override, edit, tmp_path)
    assert got == expected
    case(
        record_property,
        f"edit config {key} after a finished run" if edit else "rerun a finished run unchanged",
        "reruns " + (", ".join(sorted(expected)) if expected else "nothing"),
        "plans " + (", ".join(f"{r} x{n}" for r, n in sorted(got.items())) if got else "nothing"),
    )
