"""Alignment statistics, Cohen's kappa, human labels, the table CLI and the Snakemake rules (offline)."""

from __future__ import annotations

import hashlib
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

sys.path.insert(0, str(Path(__file__).parents[1] / "scripts"))
from alignment_table import main as alignment_main  # noqa: E402

from grpo_vqa.judge.backends import rules_verdict  # noqa: E402
from grpo_vqa.judge.runner import judge_file, response_sha256  # noqa: E402
from grpo_vqa.judge.stats import (  # noqa: E402
    agreement,
    alignment_table,
    cohen_kappa,
    label_template,
    load_calibration,
    load_human_labels,
    no_response_warning,
    render_markdown,
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
                         "aligns": aligns, "type": typ, "correct": correct,
                         "response_sha256": text_hash(f"{stage} response {i}")})  # fmt: skip
    return pd.DataFrame(rows)


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


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


def test_human_labels_join_on_the_response_text_and_report_what_matches_nothing(tmp_path):
    df = frame()
    p = tmp_path / "h.csv"
    rows = [
        ("i0", "base", "yes"),  # judge T
        ("i1", "base", "true"),  # judge F
        ("i2", "base", "0"),  # judge unparseable
        ("i3", "base", "1"),  # judge failed
        ("i0", "grpo", "1"),  # judge T
        ("i1", "grpo", "false"),  # judge F
        ("i3", "grpo", ""),  # unlabelled: skipped
    ]
    lines = ["# labels", "id,stage,response_sha256,human_aligns,note"]
    lines += [f"{i},{st},{text_hash(f'{st} response {i[1]}')},{v}," for i, st, v in rows]
    # the id and stage of a judged response, but a label given for another text: matches nothing
    lines.append(f"i2,grpo,{text_hash('an older run wrote this')},no,")
    p.write_text("\n".join(lines) + "\n")
    human = load_human_labels(p)
    assert len(human) == 7 and human["human_aligns"].tolist() == [True, True, False, True, True, False, False]
    a = agreement(df, human)
    # compared: base i0 (T,T), base i1 (T,F), grpo i0 (T,T), grpo i1 (F,F)
    assert (a["n_compared"], a["n_unparseable"], a["n_failed"], a["n_no_response"]) == (4, 1, 1, 1)
    assert a["confusion"] == [[2, 1], [0, 1]] and a["raw_agreement"] == 0.75
    assert a["kappa"] == pytest.approx(cohen_kappa([1, 1, 1, 0], [1, 0, 1, 0]))
    warning = no_response_warning(a, "h.csv")
    assert warning.startswith("warning: 1 of 7 human labels in h.csv match no judged response")
    assert "\n" not in warning and no_response_warning(agreement(df, human.iloc[:6]), "h.csv") is None
    md = render_markdown(alignment_table(df), a, "rules", None, {"labels": "h.csv"})
    assert "labels matching no judged response: 1" in md and "h.csv" in md
    # identical texts share one verdict, whatever their ids
    twin = pd.concat([df, df.iloc[[0]].assign(id="other")], ignore_index=True)
    assert agreement(twin, human)["confusion"] == a["confusion"]


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("id,human_aligns\ni0,1\n", "missing columns \\['response_sha256'\\]"),
        (f"response_sha256,human_aligns\n{'a' * 64},maybe\n", "not a boolean"),
        ("response_sha256,human_aligns\nabc,1\n", "not a SHA-256"),
        (f"response_sha256,human_aligns\n{'a' * 64},1\n{'a' * 64},0\n", "both labels"),
    ],
)
def test_bad_human_label_files_are_refused(tmp_path, text, error):
    bad = tmp_path / "bad.csv"
    bad.write_text(text)
    with pytest.raises(ValueError, match=error):
        load_human_labels(bad)


def test_the_shipped_labels_carry_the_hash_of_their_response_text():
    """embedded_default.csv and calibration.jsonl label the same 30 responses; each CSV hash is the judge
    cache's hash of the calibration record with that id."""
    items, calib = load_calibration(REPO / "config/human_labels/calibration.jsonl")
    assert len(items) == 30 and not any(k.startswith("human_") for it in items for k in it)
    assert all(it["question"] and it["reasoning"] and it["parsed_answer"] and it["solution"] for it in items)
    csv = load_human_labels(REPO / "config/human_labels/embedded_default.csv")
    by_id = {it["id"]: it for it in items}
    assert [response_sha256(by_id[i]) for i in csv["id"]] == csv["response_sha256"].tolist()
    assert csv.set_index("id")["human_aligns"].to_dict() == calib.set_index("id")["human_aligns"].to_dict()


def test_label_template_is_blind_seeded_sample():
    items = make_responses(20)
    t1, t2 = (
        label_template(items, 5, 0, "r", "grpo", "test"),
        label_template(items, 5, 0, "r", "grpo", "test"),
    )
    assert t1.equals(t2) and len(t1) == 5 and set(t1["human_aligns"]) == {""}
    assert "aligns" not in t1.columns and t1["reasoning"].str.len().min() > 0
    by_id = {str(it["id"]): it for it in items}
    assert [response_sha256(by_id[i]) for i in t1["id"]] == t1["response_sha256"].tolist()


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
    lines = ["id,stage,split,response_sha256,human_aligns"]
    lines += [f"{it['id']},grpo,test,{response_sha256(it)},{i % 4 != 0}" for i, it in enumerate(items[:12])]
    lines.append(f"stale,grpo,test,{'0' * 64},true")  # a label for a text this run did not produce
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
    # the shipped calibration set is judged too, and the stale label is reported, not joined
    assert len((tmp_path / "results/judge/calibration/taxonomy.jsonl").read_text().splitlines()) == 30
    assert "### Calibration set" in md and "calibration.jsonl" in md
    assert "labels matching no judged response: 1" in md
    log = (tmp_path / "results/logs/judge/alignment_table.log").read_text()
    assert "warning: 1 of 13 human labels in config/human_labels/h.csv match no judged response" in log


def test_calibration_agreement_is_the_same_whatever_the_run_produced(tmp_path):
    """Two runs with different responses: their own-label sections differ, the calibration section does not,
    and it is what the rules judge says about each calibration response compared with the human label."""
    calibration = REPO / "config/human_labels/calibration.jsonl"
    items, labels = load_calibration(calibration)
    from config_helpers import judge_section

    cfg = judge_section(backend="rules", prompt="taxonomy", max_items_per_split=None)
    sections = []
    for run in (0, 1):
        d = tmp_path / f"run{run}"
        responses = d / "generated_responses_test.json"
        responses.parent.mkdir()
        responses.write_text(json.dumps(make_responses(20, seed=10 + run)))
        judge_file(responses, d / "test.jsonl", d / "cache", cfg, run="r", stage="grpo", split="test")
        judge_file(calibration, d / "calib.jsonl", d / "cache_c", cfg, run="calibration", stage="calibration")
        out = d / "alignment.md"
        args = ["--judged", str(d / "test.jsonl"), "--calibration", str(calibration)]
        args += ["--calibration-judged", str(d / "calib.jsonl"), "--out-md", str(out)]
        args += [
            "--out-csv",
            str(d / "a.csv"),
            "--out-fig",
            str(d / "a.png"),
            "--config-json",
            json.dumps(cfg),
        ]
        assert alignment_main(args) == 0
        md = out.read_text()
        sections.append(md[md.index("### Calibration set") :].replace(str(calibration), "CAL"))
        assert json.loads((d / "calib.jsonl").read_text().splitlines()[0]).get("human_aligns") is None
    assert sections[0] == sections[1]
    judge_says = [rules_verdict(it)["aligns"] for it in items]
    human = labels["human_aligns"].tolist()
    agree = sum(a == b for a, b in zip(judge_says, human, strict=True)) / len(human)
    kappa = cohen_kappa(np.array(human), np.array(judge_says))
    assert f"- raw agreement: {agree:.2f}, Cohen's kappa: {kappa:.2f}" in sections[0]
    assert "labelled: 30, compared: 30, judge unparseable: 0, judge failed: 0" in sections[0]
