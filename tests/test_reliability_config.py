"""Bad configs: each is refused before anything runs, with one line naming the key (or file and line), and
finished results are left untouched."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from reliability_helpers import REPO, SNAKEFILE, case, env  # noqa: E402

from grpo_vqa.config import ConfigError, check_config_files, validate_config  # noqa: E402

BASE = yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def edited(path: str, value) -> dict:
    cfg = copy.deepcopy(BASE)
    *parents, last = path.split(".")
    node = cfg
    for p in parents:
        node = node.setdefault(p, {})
    node[last] = value
    return cfg


# (tried, config edit, expected message fragment)
BAD = {
    "unknown key grpo.num_generation (typo)": (
        "grpo.num_generation",
        4,
        "config key grpo.num_generation: unknown key",
    ),
    "wrong type grpo.learning_rate: 'fast'": (
        "grpo.learning_rate",
        "fast",
        "config key grpo.learning_rate: 'fast' is not of type 'number'",
    ),
    "YAML 1e-4 read as text (sft.learning_rate)": ("sft.learning_rate", "1e-4", "YAML reads 1e-4 as text"),
    "out of range grpo.num_generations: 1": (
        "grpo.num_generations",
        1,
        "config key grpo.num_generations: 1 is less than the minimum of 2",
    ),
    "negative learning rate sft.learning_rate: -0.001": (
        "sft.learning_rate",
        -0.001,
        "config key sft.learning_rate: -0.001 is less than or equal to the minimum of 0",
    ),
    "wrong type experiments.vsr_qwen.grpo.max_steps: '60'": (
        "experiments.vsr_qwen.grpo.max_steps",
        "60",
        "config key experiments.vsr_qwen.grpo.max_steps: '60' is not of type 'integer' (a quoted number is text; write it without quotes)",
    ),
    "experiment naming an unknown dataset": (
        "experiments.vsr_qwen.dataset",
        "vsr",
        "config key experiments.vsr_qwen.dataset: unknown dataset 'vsr'",
    ),
    "dataset named 'x$(touch pwned)' (names reach paths and shell words)": (
        "datasets.x$(touch pwned)",
        {"kind": "relation", "source": "synthetic", "splits": {"train": 4}},
        "config key datasets.x$(touch pwned): name 'x$(touch pwned)' may hold only letters",
    ),
    "table named 'alignment' (the judge table writes the same file)": (
        "tables.alignment",
        {"experiments": ["vsr_qwen"]},
        "config key tables.alignment: results/tables/alignment.md is already written",
    ),
}


@pytest.mark.parametrize("tried", list(BAD))
def test_bad_config_value_is_one_line_naming_the_key(tried, record_property):
    path, value, fragment = BAD[tried]
    with pytest.raises(ConfigError) as info:
        validate_config(edited(path, value))
    msg = str(info.value)
    assert "\n" not in msg and fragment in msg, msg
    case(record_property, f"config: {tried}", "stop before any job: one line naming the key", msg)


def test_good_config_passes():
    validate_config(BASE)  # the reference for the cases above: only their edit makes them fail


@pytest.mark.parametrize("path", ["someorg/missing-model", "./missing_model_dir"])
def test_missing_model_while_offline_names_the_key(path, monkeypatch, tmp_path, record_property):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty_home"))
    cfg = copy.deepcopy(BASE)
    cfg["models"]["qwen"] = {"source": "pretrained", "arch": "qwen2_5_vl", "path": path}
    with pytest.raises(ConfigError) as info:
        validate_config(cfg)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("config key models.qwen.path:") and path in msg, msg
    kind = "local path" if path.startswith(".") else "hub id"
    assert ("not in the local cache and HF_HUB_OFFLINE is set" in msg) == (kind == "hub id"), msg
    case(
        record_property,
        f"config: pretrained model {kind} {path!r} missing, HF_HUB_OFFLINE=1",
        "stop: one line naming the key",
        msg,
    )


def test_duplicate_experiment_in_a_config_file_is_refused(tmp_path, record_property):
    f = tmp_path / "dup.yaml"
    f.write_text(
        "experiments:\n"
        "  vsr_qwen:\n    model: qwen\n    dataset: vsr_synth\n"
        "  vsr_qwen:\n    model: smolvlm\n    dataset: vsr_synth\n"
    )
    yaml.safe_load(f.read_text())  # PyYAML alone keeps the last entry silently
    with pytest.raises(ConfigError) as info:
        check_config_files([REPO / "config" / "config.yaml", f])
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"{f}:5: duplicate key 'vsr_qwen' (first at line 2)"), msg
    shipped = ["config.yaml", "test.yaml", "paper.yaml", "full-embedded.yaml"]
    check_config_files([REPO / "config" / name for name in shipped])
    merged = tmp_path / "merge.yaml"  # a YAML merge key's entries may be overridden; written twice may not
    merged.write_text("a: &base {x: 1, y: 2}\nb: {<<: *base, y: 3}\n")
    check_config_files([merged])
    merged.write_text("a: &base {x: 1}\nb: {<<: *base, y: 3, y: 4}\n")
    with pytest.raises(ConfigError, match="duplicate key 'y'"):
        check_config_files([merged])
    case(
        record_property,
        "config: two experiments of one name (same outputs) in one file",
        "stop: one line naming file and line",
        msg,
    )


@pytest.mark.parametrize(
    "name,text,fragment",
    [
        (
            "num_generations 1",
            "grpo: {num_generations: 1}\n",
            "config key grpo.num_generations: 1 is less than the minimum of 2",
        ),
        (
            "duplicate experiment",
            "experiments:\n  a: {model: qwen, dataset: vsr_synth}\n  a: {model: qwen, dataset: vsr_synth}\n",
            "duplicate key 'a'",
        ),
    ],
)
def test_snakemake_refuses_bad_config_and_leaves_results_intact(
    tmp_path, name, text, fragment, record_property
):
    """Through Snakemake: exit non-zero with the one line, and a finished result is not touched."""
    wd = tmp_path / "wd"
    done = wd / "results" / "tables" / "vsr_main.md"
    done.parent.mkdir(parents=True)
    done.write_text("| finished |\n")
    before = (done.read_bytes(), done.stat().st_mtime_ns)
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    cmd = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "--directory", str(wd), "--cores", "1"]
    proc = subprocess.run(
        [*cmd, "all", "--configfile", str(bad)], capture_output=True, text=True, env=env(), timeout=300
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    lines = [ln for ln in out.splitlines() if fragment in ln]
    assert len(lines) == 1, out
    assert (done.read_bytes(), done.stat().st_mtime_ns) == before
    assert sorted(p.name for p in (wd / "results").rglob("*") if p.is_file()) == ["vsr_main.md"]
    case(
        record_property,
        f"snakemake with bad config ({name}) over a finished result",
        "exit non-zero, one line; finished files untouched",
        lines[0].strip(),
    )
