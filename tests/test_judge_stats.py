"""Alignment statistics, Cohen's kappa, human labels, the table CLI and the Snakemake rules (offline)."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parent))
from fake_openai_server import make_responses  # noqa: E402

from grpo_vqa.judge.stats import (  # noqa: E402
    agreement,
    alignment_table,
    cohen_kappa,
    label_template,
    load_human_labels,
)

REPO = Path(__file__).resolve().parents[1]
SEEDS = {("base", "val"): 0, ("base", "test"): 1, ("grpo", "val"): 2, ("grpo", "test"): 3}


def test_cohen_kappa_known_values():
    assert cohen_kappa([1, 1, 0, 0], [1, 0, 0, 0]) == pytest.approx(0.5)
    assert cohen_kappa([1, 0, 1, 0], [1, 0, 1, 0]) == 1.0
    assert cohen_kappa([1, 0, 1, 0], [0, 1, 0, 1]) == pytest.approx(-1.0)
    assert math.isnan(cohen_kappa([], []))
    assert cohen_kappa([1, 1], [1, 1]) == 1.0


@given(st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=60))
def test_cohen_kappa_matches_contingency_formula(pairs):
    a = np.array([p[0] for p in pairs])
    b = np.array([p[1] for p in pairs])
    k = cohen_kappa(a, b)
    cm = pd.crosstab(a, b).reindex(index=[False, True], columns=[False, True], fill_value=0).to_numpy()
    n = cm.sum()
    po = np.trace(cm) / n
    pe = (cm.sum(0) * cm.sum(1)).sum() / n**2
    if pe == 1:
        assert k == 1.0
    else:
        assert k == pytest.approx((po - pe) / (1 - pe))
        assert k == pytest.approx(cohen_kappa(b, a))


def frame():
    rows = []
    for stage, verdicts in {
        "base": [("ok", True, None, True), ("ok", False, "contradiction", False), ("unparseable", None, None, True), ("failed", None, None, False)],
        "grpo": [("ok", True, None, True), ("ok", False, "missing_detail", True), ("ok", False, "contradiction", True), ("ok", False, None, False)],
    }.items():  # fmt: skip
        for i, (status, aligns, typ, correct) in enumerate(verdicts):
            rows.append({"id": f"i{i}", "run": "r", "stage": stage, "split": "test", "status": status,
                         "aligns": aligns, "type": typ, "correct": correct})  # fmt: skip
    return pd.DataFrame(rows)


def test_alignment_table_percentages_count_unparseable_and_failed():
    t = alignment_table(frame()).set_index("stage")
    b, g = t.loc["base"], t.loc["grpo"]
    assert (b["n_judged"], b["n_failed"], b["n_unparseable"]) == (3, 1, 1)
    assert b["accuracy_pct"] == pytest.approx(66.67) and b["aligned_pct"] == pytest.approx(33.33)
    assert b["misaligned_pct"] == pytest.approx(33.33) and b["contradiction_pct"] == pytest.approx(33.33)
    assert b["unparseable_pct"] == pytest.approx(33.33)
    assert b["aligned_pct"] + b["misaligned_pct"] + b["unparseable_pct"] == pytest.approx(100, abs=0.02)
    assert (g["misaligned_pct"], g["contradiction_pct"], g["missing_detail_pct"], g["untyped_pct"]) == (
        75,
        25,
        25,
        25,
    )
    assert (b["study_accuracy_pct"], g["study_misaligned_pct"]) == (72.29, 17.14)


def test_human_labels_join_kappa_and_errors(tmp_path):
    df = frame()
    p = tmp_path / "h.csv"
    p.write_text("# labels\nid,stage,human_aligns,note\ni0,base,yes,\ni1,base,true,\ni2,base,0,\ni0,grpo,1,\n"
                 "i1,grpo,false,\ni3,grpo,,unlabelled\ni9,grpo,no,\n")  # fmt: skip
    human = load_human_labels(p)
    assert len(human) == 6 and human["human_aligns"].tolist() == [True, True, False, True, False, False]
    a = agreement(df, human)
    # compared: base i0 (T,T), base i1 (T,F), grpo i0 (T,T), grpo i1 (F,F); i2 unparseable; i9 unmatched
    assert (a["n_compared"], a["n_unparseable"], a["n_unmatched"]) == (4, 1, 1)
    assert a["confusion"] == [[2, 1], [0, 1]] and a["raw_agreement"] == 0.75
    assert a["kappa"] == pytest.approx(cohen_kappa([1, 1, 1, 0], [1, 0, 1, 0]))
    with pytest.raises(ValueError, match="run/stage/split"):
        agreement(df, human.drop(columns="stage").iloc[:1])
    bad = tmp_path / "bad.csv"
    bad.write_text("id,human_aligns\ni0,maybe\n")
    with pytest.raises(ValueError, match="not a boolean"):
        load_human_labels(bad)


def test_label_template_is_blind_seeded_sample():
    items = make_responses(20)
    t1, t2 = (
        label_template(items, 5, 0, "r", "grpo", "test"),
        label_template(items, 5, 0, "r", "grpo", "test"),
    )
    assert t1.equals(t2) and len(t1) == 5 and set(t1["human_aligns"]) == {""}
    assert "aligns" not in t1.columns and t1["reasoning"].str.len().min() > 0


def test_snakemake_alignment_table_offline(tmp_path):
    """`snakemake results/tables/alignment.md` on synthetic responses with the rules backend."""
    for d in ("scripts", "src", "envs"):
        (tmp_path / d).symlink_to(REPO / d)
    shutil.copytree(REPO / "config" / "judge_prompts", tmp_path / "config" / "judge_prompts")
    for stage in ("base", "grpo"):
        for split in ("val", "test"):
            p = tmp_path / f"results/eval/vsr_qwen/{stage}/generated_responses_{split}.json"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(json.dumps(make_responses(30, seed=SEEDS[stage, split])))
    labels = tmp_path / "config/human_labels/h.csv"
    labels.parent.mkdir(parents=True)
    items = make_responses(30, seed=SEEDS["grpo", "test"])
    lines = ["id,stage,split,human_aligns"]
    lines += [f"{it['id']},grpo,test,{i % 4 != 0}" for i, it in enumerate(items[:12])]
    labels.write_text("\n".join(lines) + "\n")
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    config["judge"]["human_labels"] = str(labels.relative_to(tmp_path))
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(config))
    # The workflow's own helpers (common.smk, report.smk) with the judge rules, on hand-made eval outputs.
    (tmp_path / "Snakefile").write_text(
        'configfile: "cfg.yaml"\n'
        + "".join(f'include: "{REPO}/workflow/rules/{name}.smk"\n' for name in ("common", "report", "judge"))
    )
    cmd = [sys.executable, "-m", "snakemake", "-c2", "results/tables/alignment.md", "--quiet"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    md = (tmp_path / "results/tables/alignment.md").read_text()
    order = [ln.split(" | ")[1:3] for ln in md.splitlines() if ln.startswith("| vsr_qwen")]
    assert order == [["val", "base"], ["val", "grpo"], ["test", "base"], ["test", "grpo"]]
    assert md.count("| vsr_qwen |") == 4 and "rules-v1 (taxonomy.v1)" in md and "Cohen's kappa" in md
    csv = pd.read_csv(tmp_path / "results/tables/alignment.csv")
    assert set(csv["stage"]) == {"base", "grpo"} and (csv["n_judged"] == 30).all()
    assert (tmp_path / "results/figures/alignment_confusion.png").stat().st_size > 1000
    assert (tmp_path / "results/tables/alignment.md.provenance.json").exists()
    judged = tmp_path / "results/judge/vsr_qwen/grpo/test.taxonomy.jsonl"
    assert len(judged.read_text().splitlines()) == 30
    assert (tmp_path / "results/judge/.cache/vsr_qwen/grpo/test/taxonomy.v1__rules__rules-v1.jsonl").exists()
