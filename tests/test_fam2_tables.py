"""The grounding and prompt_tuning families: table builders read their upstream files, the boxes reach the
IoU reward, ``sft_from`` shares one SFT run, and the DAG plans both families (embedded and paper configs)."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from grpo_vqa.config import ConfigError, check_references, deep_merge, fill_defaults, validate_config
from grpo_vqa.evaluation.scores import mean_box_iou, mean_response_words
from grpo_vqa.reporting.paper import TABLES, build_table, table_config, table_inputs

REPO = Path(__file__).resolve().parents[1]
FULL = REPO / "config" / "full-embedded.yaml"
PAPER = REPO / "config" / "paper.yaml"


def load(*names: Path) -> dict:
    cfg: dict = {}
    for path in (REPO / "config" / "config.yaml", *names):
        cfg = deep_merge(cfg, yaml.safe_load(path.read_text()))
    return fill_defaults(cfg)  # the schema's defaults, as validation fills them


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


GT = [[10.0, 10.0, 30.0, 30.0], [60.0, 60.0, 90.0, 90.0]]


def grounding_record(i: int, think: str) -> dict:
    return {"id": f"g{i}", "response": f"<think>{think}</think><answer>A</answer>", "boxes": GT}


def fake_grounding_run(root: Path, config: dict) -> None:
    """Score and response files of every upstream evaluation of the grounding table."""
    stages = [("grounding_qwen", "base", 10.0), ("grounding_qwen", "sft", 30.0)]
    stages += [("grounding_qwen", "grpo", 40.0), ("grounding_qwen_iou", "grpo", 50.0)]
    for k, (exp, stage, acc) in enumerate(stages):
        base = root / f"results/eval/{exp}/{stage}"
        splits = {"val": {"accuracy": acc + 1}, "test": {"accuracy": acc, "format": 90.0}}
        splits["grounding_ood-test"] = {"accuracy": acc - 5}
        write_json(base / "scores.json", {"splits": splits})
        # item 0 names both boxes exactly (IoU 1) from the second stage on; item 1 names none (IoU 0)
        exact = "the circle is at 10,10,30,30 circle and the square at 60,60,90,90 square"
        think0 = exact if k else "no boxes here"
        write_json(
            base / "generated_responses_test.json", [grounding_record(0, think0), grounding_record(1, "x")]
        )


def test_grounding_table_reads_its_upstream_files(tmp_path, monkeypatch):
    config = load(FULL)
    monkeypatch.chdir(tmp_path)
    fake_grounding_run(tmp_path, config)
    (tmp_path / "results/tables").mkdir()
    assert set(table_inputs("grounding", config)) == {
        f"results/eval/{e}/{s}/{f}"
        for e, s in [("grounding_qwen", "base"), ("grounding_qwen", "sft")]
        + [("grounding_qwen", "grpo"), ("grounding_qwen_iou", "grpo")]
        for f in ("scores.json", "generated_responses_test.json")
    }
    outputs = build_table(
        "grounding",
        table_config(config, "grounding"),
        "results/tables/grounding.md",
        "results/figures/grounding",
    )
    df = pd.read_csv("results/tables/grounding.csv")
    assert list(df["setting"]) == [
        "zero-shot (base)",
        "SFT",
        "GRPO (accuracy + format)",
        "GRPO (accuracy + format + iou)",
    ]
    assert list(df["test accuracy"]) == [10.0, 30.0, 40.0, 50.0]
    assert list(df["OOD accuracy"]) == [5.0, 25.0, 35.0, 45.0]
    assert list(df["test IoU"]) == [0.0, 0.5, 0.5, 0.5]
    assert list(df["study OOD accuracy"].fillna(-1)) == [-1, 54.47, 57.89, 61.31]
    for out in outputs:
        assert Path(str(out) + ".provenance.json").is_file(), out
    assert Path("results/figures/grounding/accuracy_iou.png").stat().st_size > 0

    # one upstream score and one upstream response change: the table follows
    path = tmp_path / "results/eval/grounding_qwen_iou/grpo/scores.json"
    scores = json.loads(path.read_text())
    scores["splits"]["grounding_ood-test"]["accuracy"] = 77.0
    write_json(path, scores)
    resp = tmp_path / "results/eval/grounding_qwen/grpo/generated_responses_test.json"
    write_json(resp, [grounding_record(0, "x"), grounding_record(1, "x")])
    build_table(
        "grounding",
        table_config(config, "grounding"),
        "results/tables/grounding.md",
        "results/figures/grounding",
    )
    df = pd.read_csv("results/tables/grounding.csv")
    assert list(df["OOD accuracy"]) == [5.0, 25.0, 35.0, 77.0]
    assert list(df["test IoU"]) == [0.0, 0.5, 0.0, 0.5]
    assert "77.00" in Path("results/tables/grounding.md").read_text()


def test_grounding_table_needs_an_out_of_domain_set():
    config = load(FULL)
    config["experiments"]["grounding_qwen"]["eval_datasets"] = []  # unset: the schema's default []
    with pytest.raises(ValueError, match="experiments.grounding_qwen.eval_datasets"):
        table_inputs("grounding", config)


def test_mean_box_iou():
    half = [{"response": "<think>1,1,2,2 a</think><answer>A</answer>", "boxes": [[1, 1, 2, 2], [5, 5, 6, 6]]}]
    assert mean_box_iou(half) == pytest.approx(0.5)
    # boxes outside <think> do not count; items without ground-truth boxes are skipped
    outside = {"response": "<think>none</think><answer>1,1,2,2</answer>", "boxes": [[1, 1, 2, 2]]}
    assert mean_box_iou([outside, {"response": "x", "boxes": []}]) == 0.0
    assert mean_box_iou([{"response": "<think>1,1,2,2 a</think>", "boxes": []}]) is None
    assert mean_response_words([{"response": "<answer>True</answer>"}, {"response": "a b c"}]) == 2.0


def fake_prompt_run(root: Path) -> None:
    for k, stage in enumerate(("base", "pt_direct", "pt_reason")):
        base = root / f"results/eval/vsr_qwen/{stage}"
        splits = {"val": {"accuracy": 50.0 + k}, "test": {"accuracy": 40.0 + k, "format": 10.0 * k}}
        write_json(base / "scores.json", {"splits": splits})
        words = " ".join(["w"] * (k + 1))
        write_json(base / "generated_responses_test.json", [{"response": words}, {"response": words + " w"}])


def test_prompt_tuning_table_reads_its_upstream_files(tmp_path, monkeypatch):
    config = load(FULL)
    monkeypatch.chdir(tmp_path)
    fake_prompt_run(tmp_path)
    (tmp_path / "results/tables").mkdir()
    assert table_inputs("prompt_tuning", config) == [
        f"results/eval/vsr_qwen/{s}/{f}"
        for s in ("base", "pt_direct", "pt_reason")
        for f in ("scores.json", "generated_responses_test.json")
    ]
    outputs = build_table(
        "prompt_tuning",
        table_config(config, "prompt_tuning"),
        "results/tables/prompt_tuning.md",
        "results/figures/pt",
    )
    df = pd.read_csv("results/tables/prompt_tuning.csv")
    assert list(df["setting"]) == ["zero-shot", "prompt (direct)", "prompt (reasoning)"]
    assert list(df["val accuracy"]) == [50.0, 51.0, 52.0]
    assert list(df["test format"]) == [0.0, 10.0, 20.0]
    assert list(df["test response length (words)"]) == [1.5, 2.5, 3.5]
    assert all(Path(str(o) + ".provenance.json").is_file() for o in outputs)

    path = tmp_path / "results/eval/vsr_qwen/pt_reason/scores.json"
    scores = json.loads(path.read_text())
    scores["splits"]["test"]["accuracy"] = 88.5
    write_json(path, scores)
    build_table(
        "prompt_tuning",
        table_config(config, "prompt_tuning"),
        "results/tables/prompt_tuning.md",
        "results/figures/pt",
    )
    assert list(pd.read_csv("results/tables/prompt_tuning.csv")["test accuracy"]) == [40.0, 41.0, 88.5]


def test_tables_are_registered():
    assert {"grounding", "prompt_tuning"} <= set(TABLES)


# --- sft_from and the new config keys -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (
            lambda c: c["experiments"]["grounding_qwen_iou"].update(sft_from="nope"),
            "unknown experiment 'nope'",
        ),
        (
            lambda c: c["experiments"]["grounding_qwen_iou"].update(sft_from="grounding_qwen_iou"),
            "cannot take its SFT model from itself",
        ),
        (
            lambda c: c["experiments"]["grounding_qwen_iou"].update(model="smolvlm"),
            "'grounding_qwen' trains model 'qwen', this experiment 'smolvlm'",
        ),
        (
            lambda c: c["experiments"]["grounding_qwen_iou"].update(sft={"max_steps": 3}),
            "config key experiments.grounding_qwen_iou.sft: not used with sft_from",
        ),
        (
            lambda c: c["experiments"]["grounding_qwen"].update(sft_from="vsr_qwen", sft=None),
            "experiments.grounding_qwen_iou.sft_from: 'grounding_qwen' itself takes its SFT model",
        ),
    ],
)
def test_sft_from_is_checked(edit, expected):
    config = copy.deepcopy(load(FULL))
    edit(config)
    with pytest.raises(ConfigError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        check_references(config)


def test_new_keys_are_validated():
    config = load(FULL)
    validate_config(config)
    bad = copy.deepcopy(config)
    bad["prompt_tuning"]["num_virtual_tokens"] = 0
    with pytest.raises(ConfigError, match="config key prompt_tuning.num_virtual_tokens"):
        validate_config(bad)
    bad = copy.deepcopy(config)
    bad["experiments"]["grounding_qwen"]["evaluation"]["splits"] = ["test"]
    with pytest.raises(
        ConfigError, match="config key experiments.grounding_qwen.evaluation.splits: unknown key"
    ):
        validate_config(bad)


def test_grounding_boxes_reach_the_iou_reward(tmp_path):
    """The ground-truth boxes column survives GRPO's row preparation and scores the SFT target at 1."""
    from grpo_vqa.data.build import build_dataset, load_split
    from grpo_vqa.rewards import get_reward_funcs
    from grpo_vqa.training.common import target_text
    from grpo_vqa.training.grpo import grpo_rows

    cfg = {"kind": "grounding", "source": "synthetic", "splits": {"train": 4}, "prompt_style": "vsr"}
    build_dataset("g", cfg, tmp_path / "g", seed=3)
    ds = load_split(tmp_path / "g", "train")
    rows = grpo_rows(ds, None)
    assert "boxes" in rows.column_names
    gold = [target_text(r, s) for r, s in zip(ds["reasoning"], ds["solution"], strict=True)]
    kwargs = {c: rows[c] for c in rows.column_names if c not in ("prompt", "image")}
    (iou,) = get_reward_funcs(["iou"])
    assert iou(gold, **kwargs) == [1.0] * 4
    assert iou(["<think>no box</think><answer>A</answer>"] * 4, **kwargs) == [0.0] * 4


# --- dry runs -------------------------------------------------------------------------------------------


def dry_run(tmp_path: Path, *configfiles: Path, env: dict | None = None) -> str:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "workflow" / "Snakefile")]
    cmd += ["results/tables/grounding.md", "results/tables/prompt_tuning.md", "-n", "--cores", "2"]
    cmd += ["-d", str(tmp_path), "--configfile", *map(str, configfiles)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def job_counts(out: str) -> dict[str, int]:
    block = out.split("Job stats:")[1].split("\n\n")[0]
    counts = {}
    for line in block.splitlines()[3:]:
        name, n = line.split()
        counts[name] = int(n)
    return counts


def test_dry_run_embedded_plans_both_families(tmp_path):
    out = dry_run(tmp_path, FULL)
    counts = job_counts(out)
    # one SFT shared by both GRPO variants; two soft prompts; base/sft/grpo x2 + base/pt x2 evaluations (the
    # embedded reasoning prompt learns the generator's reasoning, not GRPO responses: no vsr_qwen GRPO here)
    assert counts["sft"] == 1 and counts["grpo"] == 2 and counts["prompt_tuning"] == 2
    assert "generated_responses_train.json" not in out
    assert counts["evaluate"] == 7 and counts["table"] == 2
    assert "results/runs/grounding_qwen_iou/sft" not in out
    assert "input: results/runs/grounding_qwen/sft/model, results/data/grounding_synth\n" in out
    for pt in ("pt_direct", "pt_reason"):
        assert f"output: results/runs/vsr_qwen/{pt}/adapter" in out
        assert f"input: results/runs/vsr_qwen/{pt}/adapter, results/data/vsr_synth" in out


def test_dry_run_paper_plans_both_families(tmp_path):
    # planning only: hub ids are not looked up (HF_HUB_OFFLINE unset would ask for them in the local cache)
    out = dry_run(tmp_path, PAPER, env={**os.environ, "HF_HUB_OFFLINE": "0"})
    counts = job_counts(out)
    # grounding: one SFT shared by two GRPO variants; the reasoning soft prompt distils vsr_qwen's GRPO model
    assert counts["sft"] == 1 and counts["grpo"] == 3 and counts["prompt_tuning"] == 2
    assert "results/eval/vsr_qwen/grpo/generated_responses_train.json" in out
    assert "results/data/drivingvqa" in out and "results/data/aokvqa" in out
