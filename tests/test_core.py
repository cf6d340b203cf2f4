"""Config merging, provenance sidecars, checkpoint selection, scores and table building."""

from __future__ import annotations

import copy
import json

import pandas as pd
import yaml

from grpo_vqa.config import deep_merge, fill_defaults, stage_config
from grpo_vqa.evaluation.scores import split_scores
from grpo_vqa.io import atomic_write_json, read_json
from grpo_vqa.provenance import config_hash, sidecar_path, write_sidecar
from grpo_vqa.reporting.tables import vsr_main_frame, write_table
from grpo_vqa.training.common import COMPLETE_MARKER, latest_complete_checkpoint, target_text

CONFIG = fill_defaults(
    yaml.safe_load(open("config/config.yaml"))
)  # the schema's defaults, as validation fills them


def test_stage_config_applies_experiment_overrides():
    cfg = deep_merge(CONFIG, {"experiments": {"vsr_qwen": {"grpo": {"max_steps": 7, "lora": {"r": 4}}}}})
    grpo = stage_config(cfg, "vsr_qwen", "grpo")
    assert grpo["max_steps"] == 7 and grpo["lora"]["r"] == 4
    assert grpo["lora"]["lora_alpha"] == CONFIG["grpo"]["lora"]["lora_alpha"]
    assert stage_config(cfg, "vsr_smolvlm", "grpo")["max_steps"] == CONFIG["grpo"]["max_steps"]
    assert CONFIG["grpo"]["lora"]["r"] == 16  # the input was not modified


def test_config_hash_is_order_independent_and_sensitive():
    assert config_hash({"a": 1, "b": [1, 2]}) == config_hash({"b": [1, 2], "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})


def test_sidecar_records_provenance(tmp_path):
    out = tmp_path / "table.md"
    out.write_text("x")
    inp = tmp_path / "scores.json"
    inp.write_text("{}")
    path = write_sidecar(out, {"seed": 1}, [inp])
    assert path == sidecar_path(out) and path.name == "table.md.provenance.json"
    rec = json.loads(path.read_text())
    assert rec["config_sha256"] == config_hash({"seed": 1})
    assert rec["packages"]["torch"] and rec["packages"]["trl"] == "1.16.0"
    assert rec["inputs"][str(inp)] == "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
    assert "commit" in rec["git"]


def test_latest_complete_checkpoint_ignores_half_written(tmp_path):
    assert latest_complete_checkpoint(tmp_path / "none") is None
    for step, complete in ((10, True), (20, True), (30, False)):
        d = tmp_path / f"checkpoint-{step}"
        d.mkdir()
        if complete:
            (d / COMPLETE_MARKER).write_text(f'{{"step": {step}}}')
    (tmp_path / "checkpoint-junk").mkdir()
    assert latest_complete_checkpoint(tmp_path).name == "checkpoint-20"


def test_atomic_write_leaves_no_temp_files(tmp_path):
    atomic_write_json(tmp_path / "a.json", {"x": 1})
    assert read_json(tmp_path / "a.json") == {"x": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_atomic_write_removes_a_killed_writers_temp_file(tmp_path):
    # what a writer killed between mkstemp and the rename leaves behind (tests/test_reliability_faults.py once
    # found one beside a rerun's outputs); another file's temp file is not touched
    (tmp_path / ".a.json.k1ll3d.tmp").write_text('{"x": ')
    (tmp_path / ".b.json.other.tmp").write_text("{")
    atomic_write_json(tmp_path / "a.json", {"x": 2})
    assert read_json(tmp_path / "a.json") == {"x": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == [".b.json.other.tmp", "a.json"]


def _record(correct, fmt=True, relation="left of", answer="True"):
    return {
        "correct": correct,
        "format_ok": fmt,
        "parsed_answer": answer,
        "relation": relation,
        "solution": "True",
        "response": f"<think>I see it</think><answer>{answer}</answer>",
    }


def test_split_scores_breakdowns():
    recs = [_record(True), _record(False, relation="above"), _record(True, fmt=False, answer=None)]
    s = split_scores(recs)
    assert s["n"] == 3 and round(s["accuracy"], 2) == 66.67 and round(s["format"], 2) == 66.67
    assert s["by_relation"] == {"above": {"n": 1, "accuracy": 0.0}, "left of": {"n": 2, "accuracy": 100.0}}
    assert round(s["answered"], 2) == 66.67


def test_vsr_main_table_reads_scores(tmp_path):
    scores = {}
    for k, stage in enumerate(("base", "sft", "grpo")):
        for exp in ("vsr_qwen", "vsr_smolvlm"):
            splits = {
                name: {"accuracy": 10.0 * k + len(exp), "format": 50.0}
                for name in ("val", "test", "test-blank")
            }
            scores[(exp, stage)] = {"splits": splits}
    df = vsr_main_frame(CONFIG, ["vsr_qwen", "vsr_smolvlm"], scores)
    assert list(df["stage"])[:3] == ["zero-shot (base)", "SFT", "SFT → GRPO"]
    assert df.loc[2, "test accuracy"] == 28.0 and df.loc[5, "test accuracy"] == 31.0
    write_table(df, tmp_path / "t.md", "T")
    assert "| vsr_qwen" in (tmp_path / "t.md").read_text()
    assert pd.read_csv(tmp_path / "t.csv").shape == (6, 7)
    # the study's two arms (config/paper.yaml): GRPO from the base model is labelled GRPO, not SFT → GRPO
    two_arms = copy.deepcopy(CONFIG)
    two_arms["experiments"]["vsr_qwen"]["grpo_from"] = "base"
    df = vsr_main_frame(two_arms, ["vsr_qwen", "vsr_smolvlm"], scores)
    assert list(df["stage"]) == ["zero-shot (base)", "SFT", "GRPO", "zero-shot (base)", "SFT", "SFT → GRPO"]


def test_sft_target_format():
    assert target_text("I see x.", "True") == "<think>I see x.</think><answer>True</answer>"


def test_checkpoints_are_keyed_on_settings_and_inputs(tmp_path):
    from grpo_vqa.training.common import run_checkpoint_dir

    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"weights")
    first = run_checkpoint_dir(tmp_path / "ck", {"lr": 1}, model)
    assert first == run_checkpoint_dir(tmp_path / "ck", {"lr": 1}, model)  # a retry resumes
    assert first != run_checkpoint_dir(tmp_path / "ck", {"lr": 2}, model)  # a config edit starts afresh
    (model / "model.safetensors").write_bytes(b"retrained")
    assert first != run_checkpoint_dir(tmp_path / "ck", {"lr": 1}, model)  # so does a retrained input


def test_trainer_logging_targets(tmp_path, monkeypatch):
    from grpo_vqa.training.progress import report_to

    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    assert report_to(tmp_path / "tb", {"wandb": {"enabled": False}}) == ["tensorboard"]
    assert str(tmp_path / "tb") == __import__("os").environ["TENSORBOARD_LOGGING_DIR"]
    assert report_to(None, None) == []
