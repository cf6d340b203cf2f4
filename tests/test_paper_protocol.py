"""config/paper.yaml runs the study's protocol (../shared/reference/study-facts.md), point by point.

The plan test resolves the jobs `snakemake -n -p --configfile config/paper.yaml all` plans (rule, wildcards,
inputs and the --config-json each script runs with) and checks the ten points of issue 17 on them; the unit
tests beside it check that the code those settings select does what the study did, on fixtures in the real
formats. The paper-shaped run (marker `paper`) runs config/paper.yaml with config/paper-tiny.yaml (tiny models
of the same architectures, tests/fixtures/real data, two steps per stage) end to end to every table.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures" / "real"
R1_INSTRUCTION = (
    "First output the thinking process in <think> </think> tags and then output the final answer in "
    "<answer> </answer> tags."
)
VSR_ARMS = ("vsr_qwen", "vsr_smolvlm", "bias_plain", "bias_biased", "bias_strong")
SIM2REAL = ("sim2real_source",)  # sim2real_ceiling (SFT on SpatialSense) has no GRPO stage


@dataclass(frozen=True)
class Job:
    rule: str
    wildcards: dict
    inputs: tuple[str, ...]
    cfg: dict


#: The study's LoRA in PEFT's own names: rank 16, alpha 32, dropout 0.05, every linear layer of the language model.
STUDY_LORA = {
    "r": 16,
    "lora_alpha": 32,
    "lora_dropout": 0.05,
    "target_modules": "all-linear",
    "modules_to_save": [],
}


def planned_jobs(workdir: Path, *configfiles: str) -> list[Job]:
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}  # hub ids are not in a cache
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "workflow/Snakefile"), "-d", str(workdir)]
    cmd += ["-n", "-p", "--cores", "2", "all", "--configfile", *(str(REPO / c) for c in configfiles)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    jobs = []
    for block in re.split(r"\n(?=rule \w+:\n)", proc.stdout):
        head = re.match(r"rule (\w+):\n", block)
        if not head:
            continue
        fields = dict(re.findall(r"^    (\w+): (.*)$", block, flags=re.M))
        wildcards = dict(kv.split("=", 1) for kv in fields.get("wildcards", "").split(", ") if "=" in kv)
        cfg = re.search(r"--config-json '(\{.*?\})'", block)
        inputs = tuple(fields["input"].split(", ")) if "input" in fields else ()
        jobs.append(Job(head.group(1), wildcards, inputs, json.loads(cfg.group(1)) if cfg else {}))
    return jobs


@pytest.fixture(scope="module")
def plan(tmp_path_factory) -> list[Job]:
    return planned_jobs(tmp_path_factory.mktemp("paper-plan"), "config/paper.yaml")


def job(plan: list[Job], rule: str, **wildcards: str) -> Job:
    found = [j for j in plan if j.rule == rule and all(j.wildcards.get(k) == v for k, v in wildcards.items())]
    assert len(found) == 1, f"{rule} {wildcards}: {len(found)} planned jobs"
    return found[0]


# ------------------------------------------------------------------------------------------ the plan


def test_1_vsr_zeroshot_whole_dev_and_test(plan):
    for name in ("vsr_synth", "bias_plain", "bias_biased", "bias_strong"):
        cfg = job(plan, "fetch_dataset", dataset=name).cfg
        assert cfg["loader"] == "vsr" and cfg["real"]["hub_id"] == "cambridgeltl/vsr_zeroshot"
        assert cfg["splits"] == {"train": 1000, "val": None, "test": None}  # 1,000 drawn; all of dev and test
        assert cfg["real"]["splits"] == {"train": "train", "val": "dev", "test": "test"}


def test_2_topology_two_arms_from_base_and_grounding_chains(plan):
    for exp in VSR_ARMS + SIM2REAL:
        model = job(plan, "grpo", exp=exp).inputs[0]
        assert re.fullmatch(r"results/models/(qwen|smolvlm)/base\.json", model), (exp, model)
        sft = job(plan, "sft", exp=exp)
        assert sft.inputs[0] == model and sft.cfg["sft"]["target"] == "answer"  # the bare answer
    ceiling = job(plan, "sft", exp="sim2real_ceiling")
    assert ceiling.inputs[0] == "results/models/qwen/base.json" and ceiling.cfg["sft"]["target"] == "answer"
    assert job(plan, "grpo", exp="grounding_qwen").inputs[0] == "results/runs/grounding_qwen/sft/model"
    assert job(plan, "grpo", exp="grounding_qwen_iou").inputs[0] == "results/runs/grounding_qwen/sft/model"
    assert job(plan, "sft", exp="grounding_qwen").cfg["sft"]["target"] == "think_answer"
    merged = {j.wildcards["exp"] for j in plan if j.rule == "merge_lora" and j.wildcards["trained"] == "sft"}
    assert "grounding_qwen" in merged


def test_merged_models_only_where_grpo_trains_from_one(plan):
    """evaluation.from_adapter: trained stages are evaluated from their adapters; only grounding's SFT model,
    which both GRPO variants train from, is merged on disk."""
    merged = sorted((j.wildcards["exp"], j.wildcards["trained"]) for j in plan if j.rule == "merge_lora")
    assert merged == [("grounding_qwen", "sft")]
    trained = [j for j in plan if j.rule == "evaluate" and j.wildcards["stage"] in ("sft", "grpo")]
    assert len(trained) == 18
    for j in trained:
        assert j.inputs[0] == f"results/runs/{j.wildcards['exp']}/{j.wildcards['stage']}/adapter", j


def test_3_no_system_prompt_and_the_r1_instruction_in_the_user_turn(plan):
    for j in plan:
        if j.rule in ("sft", "grpo", "evaluate", "prompt_tuning"):
            assert j.cfg["system_prompt"] is None, j
    for name in ("vsr_synth", "bias_strong", "drivingvqa", "aokvqa"):
        template = job(plan, "fetch_dataset", dataset=name).cfg["question_template"]
        assert template == f"{{question}} {R1_INSTRUCTION}"


def test_4_study_hyperparameters(plan):
    # TRL's and PEFT's own names: a study script's flags map one to one
    lora = dict(STUDY_LORA)
    for exp in VSR_ARMS:
        sft = job(plan, "sft", exp=exp).cfg
        assert sft["seed"] == 42
        s = sft["sft"]
        assert (s["learning_rate"], s["per_device_train_batch_size"], s["gradient_accumulation_steps"]) == (
            1e-5,
            4,
            1,
        )
        assert (s["max_steps"], s["num_train_epochs"], s["lr_scheduler_type"]) == (-1, 2, "linear")
        assert s["launch"]["num_processes"] * s["launch"]["num_machines"] == 1  # so 4 is the global batch too
        assert s["fp16"] and s["gradient_checkpointing"] and s["lora"] == lora
        g = job(plan, "grpo", exp=exp).cfg["grpo"]
        per_step = g["per_device_train_batch_size"] * g["gradient_accumulation_steps"]
        assert (g["learning_rate"], per_step, g["num_generations"]) == (1e-5, 4, 4)
        assert g["launch"]["num_processes"] * g["launch"]["num_machines"] == 1
        assert per_step // g["num_generations"] == 1  # one prompt a step: 2 x 1,000 = 2,000 steps
        assert (g["max_steps"], g["num_train_epochs"]) == (-1, 2)
        assert g["fp16"] and g["gradient_checkpointing"] and g["lora"] == lora


def test_5_exact_accuracy_for_training_yes_no_only_for_smolvlm_evaluation(plan):
    for exp in VSR_ARMS + SIM2REAL:
        assert job(plan, "grpo", exp=exp).cfg["grpo"]["rewards"] == ["accuracy_exact", "format"]
    for stage in ("base", "sft", "grpo"):
        qwen = job(plan, "evaluate", exp="vsr_qwen", stage=stage).cfg
        smol = job(plan, "evaluate", exp="vsr_smolvlm", stage=stage).cfg
        assert qwen["correctness"]["relation"] == "accuracy_exact"
        assert smol["correctness"]["relation"] == "accuracy_yes_no"


def test_6_grounding_uses_the_exam_score(plan):
    for exp in ("grounding_qwen", "grounding_qwen_iou"):
        assert job(plan, "evaluate", exp=exp, stage="grpo").cfg["correctness"]["grounding"] == "exam"
    assert job(plan, "grpo", exp="grounding_qwen_iou").cfg["grpo"]["rewards"] == ["exam", "format", "iou"]


def test_7_judge_reads_the_caption_on_train_dev_test(plan):
    judged = [j for j in plan if j.rule == "judge_responses"]
    assert sorted((j.wildcards["stage"], j.wildcards["split"]) for j in judged) == sorted(
        (st, sp) for st in ("base", "grpo") for sp in ("train", "val", "test")
    )
    for j in judged:
        assert j.wildcards["exp"] == "vsr_qwen" and j.cfg["claim"] == "caption"
        assert j.cfg["max_items_per_split"] == 350 and j.cfg["model"] == "o4-mini"
    assert job(plan, "evaluate", exp="vsr_qwen", stage="grpo").cfg["splits"] == ["train", "val", "test"]


def test_8_bias_sets_undersample_the_minority_label(plan):
    ratios = {n: job(plan, "fetch_dataset", dataset=n).cfg.get("bias_keep_ratio") for n in VSR_ARMS[2:]}
    assert (
        ratios["bias_plain"] == 1.0 and ratios["bias_plain"] > ratios["bias_biased"] > ratios["bias_strong"]
    )
    for name in ratios:
        # no half-vocabulary P(true): bias stays the schema's unbiased default, which build_dataset never applies
        assert job(plan, "fetch_dataset", dataset=name).cfg["bias"] == 0.5
    assert any(i == "results/data/bias_strong" for i in job(plan, "table", table="bias").inputs)


def test_9_two_soft_prompt_recipes_and_the_distillation_edge(plan):
    direct = job(plan, "prompt_tuning", exp="vsr_qwen", pt="pt_direct")
    d = direct.cfg["prompt_tuning"]
    assert (d["num_virtual_tokens"], d["prompt_tuning_init"], d["learning_rate"]) == (5, "RANDOM", 1e-2)
    assert (d["per_device_train_batch_size"], d["gradient_accumulation_steps"], d["num_train_epochs"]) == (
        8,
        2,
        1,
    )
    assert d["completion"] == "answer" and "direct" not in d and "reason" not in d
    scored = job(plan, "evaluate", exp="vsr_qwen", stage="pt_direct").cfg
    assert scored["next_token_labels"] == ["True", "False"]
    reason = job(plan, "prompt_tuning", exp="vsr_qwen", pt="pt_reason")
    r = reason.cfg["prompt_tuning"]
    assert (r["num_virtual_tokens"], r["learning_rate"]) == (10, 2e-2)
    assert (r["per_device_train_batch_size"], r["gradient_accumulation_steps"], r["num_train_epochs"]) == (
        8,
        4,
        2,
    )
    assert r["completion"] == "grpo_responses"
    assert "results/eval/vsr_qwen/grpo/generated_responses_train.json" in reason.inputs
    assert job(plan, "evaluate", exp="vsr_qwen", stage="pt_reason").cfg["next_token_labels"] is None


def test_10_sim2real_statement_prompt_and_grpo_from_base(plan):
    for name in ("sim2real_source", "sim2real_target"):
        template = job(plan, "fetch_dataset", dataset=name).cfg["question_template"]
        assert template == f"Is the following statement true: {{question}} {R1_INSTRUCTION}"
    for exp in SIM2REAL:
        assert job(plan, "grpo", exp=exp).inputs[0] == "results/models/qwen/base.json"


# ----------------------------------------------------------------------- what the settings select


def build(tmp_path: Path, name: str, cfg: dict, seed: int = 42) -> Path:
    from grpo_vqa.data.build import build_dataset

    out = tmp_path / name
    build_dataset(name, cfg, out, seed)
    return out


def vsr_cfg(**extra) -> dict:
    real = {"local_dir": str(FIXTURES / "vsr_zeroshot"), "images_dir": str(FIXTURES / "vsr" / "images")}
    real |= {"splits": {"train": "train", "val": "dev", "test": "test"}}
    cfg = {"kind": "relation", "source": "local", "loader": "vsr", "splits": {"train": 10, "val": None}}
    return cfg | {"real": real} | extra


def test_draw_is_written_and_reused(tmp_path):
    from grpo_vqa.data.build import load_split

    first = build(tmp_path, "a", vsr_cfg())
    ids = json.loads((first / "ids" / "train.json").read_text())
    assert len(ids) == 10 and ids == load_split(first, "train")["id"]
    assert len(load_split(first, "val")) == 4  # the whole dev split
    other_seed = build(tmp_path, "b", vsr_cfg(), seed=7)
    assert load_split(other_seed, "train")["id"] != ids
    cfg = vsr_cfg()
    cfg["real"]["ids"] = {"train": str(first / "ids" / "train.json")}
    assert load_split(build(tmp_path, "c", cfg, seed=7), "train")["id"] == ids


def test_question_template_follows_the_vsr_prompt(tmp_path):
    from grpo_vqa.data.build import load_split

    out = build(tmp_path, "t", vsr_cfg(question_template=f"{{question}} {R1_INSTRUCTION}"))
    row = load_split(out, "train")[0]
    assert row["problem"] == f"Is the following statement true: {row['caption']} {R1_INSTRUCTION}"
    assert row["solution"] in ("True", "False")


def test_minority_undersampling_leaves_dev_and_test_and_the_probe_sees_it(tmp_path):
    from grpo_vqa.data.build import load_split

    plain = build(
        tmp_path, "plain", vsr_cfg(splits={"train": None, "val": None, "test": None}, bias_keep_ratio=1.0)
    )
    strong = build(
        tmp_path, "strong", vsr_cfg(splits={"train": None, "val": None, "test": None}, bias_keep_ratio=0.0)
    )
    for split in ("val", "test"):
        assert load_split(plain, split)["id"] == load_split(strong, split)["id"]
    train = load_split(strong, "train")
    by_rel: dict[str, set] = {}
    for rel, label in zip(train["relation"], train["label"], strict=True):
        by_rel.setdefault(rel, set()).add(label)
    assert all(len(labels) == 1 for labels in by_rel.values())  # the relation word decides the label
    probes = [
        json.loads((d / "manifest.json").read_text())["splits"]["train"]["bias_probe"]
        for d in (plain, strong)
    ]
    assert probes[1]["accuracy"] == 100.0 and probes[0]["accuracy"] < probes[1]["accuracy"]
    assert probes[1]["majority"] == {"behind": "True", "left of": "True", "on top of": "False"}


def test_sft_target_is_the_bare_answer():
    from grpo_vqa.training.common import target_text

    assert target_text("I see it.", "True", "answer") == "True"
    assert target_text("I see it.", "True") == "<think>I see it.</think><answer>True</answer>"
    with pytest.raises(ValueError, match="SFT target 'bare'"):
        target_text("", "True", "bare")


def test_lora_all_linear_spares_the_vision_tower_and_the_output_layer():
    from grpo_vqa.training.common import lora_config

    lora = dict(STUDY_LORA)
    cfg = lora_config(lora)
    assert cfg.target_modules == "all-linear"
    for name in (
        "model.visual.blocks.0.attn.qkv",
        "model.visual.merger.mlp.0",
        "model.vision_model.encoder",
        "model.connector.modality_projection.proj",
    ):
        assert re.fullmatch(cfg.exclude_modules, name), name
    assert not re.fullmatch(cfg.exclude_modules, "model.language_model.layers.0.mlp.down_proj")


def test_epochs_reach_the_trainer_with_max_steps_minus_one(tmp_path):
    from config_helpers import train_section

    from grpo_vqa.training.common import TrainJob, shared_trainer_kwargs

    cfg = train_section(
        "sft", max_steps=-1, num_train_epochs=2, learning_rate=1e-5, per_device_train_batch_size=4
    )
    cfg |= {"fp16": True}
    kw = shared_trainer_kwargs(TrainJob("m", None, tmp_path, tmp_path, cfg, 42, dtype="bfloat16"))
    assert (kw["max_steps"], kw["num_train_epochs"], kw["per_device_train_batch_size"]) == (-1, 2.0, 4)
    import torch

    assert kw.get("fp16", False) == torch.cuda.is_available()  # mixed precision only where there is a GPU
    assert kw["bf16"] != kw.get("fp16", False) or not kw["bf16"]


def test_rewards_exact_yes_no_and_exam():
    from grpo_vqa.rewards import accuracy_exact_reward, accuracy_yes_no_reward, exam_reward

    answers = [
        "<answer> True </answer>",
        "<answer>true</answer>",
        "<answer>Yes</answer>",
        "True",
        "<answer>No</answer>",
    ]
    assert accuracy_exact_reward(answers, solution=["True"] * 4 + ["False"]) == [1.0, 0.0, 0.0, 0.0, 0.0]
    assert accuracy_yes_no_reward(answers, solution=["True"] * 4 + ["False"]) == [1.0, 0.0, 1.0, 0.0, 1.0]
    letters = [
        "<answer>C, A</answer>",
        "<answer>A</answer>",
        "<answer>(A) and (C)</answer>",
        "<answer>A, B, C</answer>",
    ]
    assert exam_reward(letters, solution=["A, C"] * 4) == [1.0, 0.0, 1.0, 0.0]


def test_untagged_answers_count_when_asked():
    from grpo_vqa.evaluation.generate import score_record

    item = {"id": "x", "problem": "p", "solution": "True", "task": "relation"}
    strict = {"relation": "accuracy_exact"}
    assert not score_record(item, "True", strict)["correct"]
    rec = score_record(item, " True ", strict, answer_without_tags=True)
    assert rec["correct"] and rec["parsed_answer"] == "True" and not rec["format_ok"]
    assert not score_record(item, "true", strict, answer_without_tags=True)["correct"]


def test_scores_carry_wilson_interval_and_weighted_prf():
    from sklearn.metrics import precision_recall_fscore_support

    from grpo_vqa.evaluation.scores import INVALID, predicted_label, split_scores

    answers = ["True"] * 200 + ["False"] * 40 + ["False"] * 60 + ["True"] * 30 + [None] * 10
    gold = ["True"] * 200 + ["False"] * 40 + ["True"] * 60 + ["False"] * 30 + ["True"] * 10
    recs = [
        {"correct": a == g, "format_ok": True, "parsed_answer": a, "response": str(a), "solution": g}
        for a, g in zip(answers, gold, strict=True)
    ]
    s = split_scores(recs)
    assert s["n"] == 340 and s["accuracy"] == round(100 * 240 / 340, 4)
    lo, hi = s["accuracy_ci95"]
    assert 65.5 < lo < 66.0 and 75.1 < hi < 75.6  # Wilson 95 % for 240 / 340
    pred = [predicted_label(r, {"True", "False"}) for r in recs]
    assert pred.count(INVALID) == 10
    p, r, f, _ = precision_recall_fscore_support(
        gold, pred, labels=["False", "True"], average="weighted", zero_division=0
    )
    assert s["weighted"] == {
        "precision": round(100 * p, 4),
        "recall": round(100 * r, 4),
        "f1": round(100 * f, 4),
    }


def test_judge_reads_the_caption(tmp_path):
    from grpo_vqa.judge.runner import judge_file

    item = {
        "id": "a",
        "task": "relation",
        "question": "Is the following statement true: The cat is on the mat.",
        "caption": "The cat is on the mat.",
        "response": "<think>x</think><answer>True</answer>",
        "reasoning": "x",
        "parsed_answer": "True",
    }
    path = tmp_path / "r.json"
    path.write_text(json.dumps([item]))
    seen = []

    class Spy:
        name, model = "spy", "spy-1"

        def judge(self, it, prompt):
            from grpo_vqa.judge.backends import RulesBackend

            seen.append(prompt.messages(it)[-1]["content"])
            return RulesBackend().judge(it, prompt)

    from config_helpers import judge_section

    judge_file(
        path, tmp_path / "out.jsonl", tmp_path / "cache", judge_section(claim="caption"), backend=Spy()
    )
    assert "Question: The cat is on the mat.\n" in seen[0]
    bare = {k: v for k, v in item.items() if k != "caption"}
    path.write_text(json.dumps([bare]))
    with pytest.raises(ValueError, match="no caption"):
        judge_file(
            path, tmp_path / "o2.jsonl", tmp_path / "c2", judge_section(claim="caption"), backend=Spy()
        )


def test_bad_recipe_key_names_the_key():
    import copy

    import yaml

    from grpo_vqa.config import ConfigError, deep_merge, validate_config

    with open(REPO / "config/config.yaml") as fh:
        base = yaml.safe_load(fh)
    bad = deep_merge(copy.deepcopy(base), {"prompt_tuning": {"direct": {"completion": "bare"}}})
    with pytest.raises(ConfigError, match=r"^config key prompt_tuning\.direct\.completion: "):
        validate_config(bad)
    bad = deep_merge(copy.deepcopy(base), {"sft": {"max_steps": 0}})
    with pytest.raises(ConfigError, match=r"^config key sft\.max_steps: "):
        validate_config(bad)


# ----------------------------------------------------------------------------- the paper-shaped run

TABLES = (
    "vsr_main",
    "bias",
    "sim2real",
    "shape_counting",
    "math_r1",
    "grounding",
    "prompt_tuning",
    "alignment",
)


@pytest.mark.paper
@pytest.mark.slow
def test_paper_shaped_run_reaches_every_table(tmp_path):
    """config/paper.yaml + config/paper-tiny.yaml, end to end on 2 cores, to every table."""
    (tmp_path / "tests").symlink_to(REPO / "tests")  # the override's fixture paths are relative
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "workflow/Snakefile"), "-d", str(tmp_path)]
    cmd += [
        "--cores",
        "2",
        "all",
        "--configfile",
        str(REPO / "config/paper.yaml"),
        str(REPO / "config/paper-tiny.yaml"),
    ]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    seconds = time.monotonic() - t0
    logs = sorted((tmp_path / "results" / "logs").rglob("*.log")) if proc.returncode else []
    tail = "\n".join(f"== {p}\n{p.read_text(errors='replace')[-1500:]}" for p in logs[-3:])
    assert proc.returncode == 0, proc.stderr[-3000:] + tail
    print(f"paper-shaped run: {seconds:.0f} s")
    results = tmp_path / "results"
    for table in TABLES:
        assert (results / "tables" / f"{table}.md").stat().st_size > 0, table
    # the protocol left its marks: the saved draw, the probe, the metrics, the distilled prompt
    assert json.loads((results / "data/vsr_synth/ids/train.json").read_text())
    probe = json.loads((results / "data/bias_strong/manifest.json").read_text())["splits"]["train"][
        "bias_probe"
    ]
    assert probe["accuracy"] is not None
    scores = json.loads((results / "eval/vsr_qwen/grpo/scores.json").read_text())["splits"]
    assert set(scores) >= {"train", "val", "test"} and "accuracy_ci95" in scores["test"]
    assert "weighted" in scores["test"]
    pt = json.loads((results / "eval/vsr_qwen/pt_direct/generated_responses_test.json").read_text())
    assert all(r["response"] in ("True", "False") for r in pt)  # scored by next-token probabilities
    assert (results / "runs/vsr_qwen/pt_reason/adapter/adapter_config.json").is_file()
    judged = [
        json.loads(x) for x in (results / "judge/vsr_qwen/grpo/train.taxonomy.jsonl").read_text().splitlines()
    ]
    assert judged
    shutil.rmtree(results / "checkpoints", ignore_errors=True)
