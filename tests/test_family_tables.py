"""The bias, sim2real, shape_counting and math_r1 tables are built from upstream files only: fake score and
response files in a temporary directory, build each table, change one upstream file, see the table change."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pandas as pd
import pytest
import yaml

from grpo_vqa.config import ConfigError, deep_merge, fill_defaults, validate_config
from grpo_vqa.data.relations import BIAS_POSITIVE, DIRECTIONAL, bias_positive, biased_indices, text_prior
from grpo_vqa.evaluation.generate import score_record
from grpo_vqa.reporting import bias_table, math_r1_table, shape_counting_table, sim2real_table
from grpo_vqa.reporting.paper import TABLES, build_table, table_config, table_inputs

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def config() -> dict:
    base = yaml.safe_load((REPO / "config/config.yaml").read_text())
    # the schema's defaults, as validation fills them
    return fill_defaults(deep_merge(base, yaml.safe_load((REPO / "config/full-embedded.yaml").read_text())))


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "results/tables").mkdir(parents=True)  # Snakemake creates output folders
    return tmp_path


def put(path: str, obj) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(obj))


def split(acc: float, **extra) -> dict:
    return {"n": 10, "accuracy": acc, "format": 90.0, "answered": 95.0} | extra


def history() -> list[dict]:
    return [{"step": i + 1, "reward": 0.5 + 0.1 * i, "rewards/format/mean": 0.9} for i in range(4)]


def relation_records(answer_prior: bool) -> list[dict]:
    """Eight test items, two per relation word and label; the model answers the text prior or the truth."""
    recs = []
    for k, rel in enumerate(DIRECTIONAL):
        for sol in ("True", "False"):
            ans = text_prior(rel) if answer_prior else sol
            recs.append(
                {
                    "id": f"r{k}{sol}",
                    "response": f"<think>x</think><answer>{ans}</answer>",
                    "parsed_answer": ans,
                    "solution": sol,
                    "correct": ans == sol,
                    "format_ok": True,
                    "relation": rel,
                }
            )
    return recs


def csv_of(out_md: Path) -> pd.DataFrame:
    return pd.read_csv(out_md.with_suffix(".csv"))


def test_every_family_table_is_registered_and_configured(config):
    for name in ("bias", "sim2real", "shape_counting", "math_r1"):
        assert name in TABLES
        assert name in config["tables"]
        assert table_inputs(name, config)


# --- bias -----------------------------------------------------------------------------------------------


def test_text_reliance_of_a_text_only_model_and_of_a_perfect_one():
    text_only = bias_table.text_reliance(relation_records(answer_prior=True))
    assert text_only == {"consistent": 100.0, "inconsistent": 0.0, "agreement": 100.0}
    perfect = bias_table.text_reliance(relation_records(answer_prior=False))
    assert perfect == {"consistent": 100.0, "inconsistent": 100.0, "agreement": 50.0}
    with pytest.raises(ValueError, match="no relation field"):
        bias_table.text_reliance([{"id": "x", "solution": "True", "correct": True}])


#: the relation-only probe's accuracy written into each bias set's train manifest
PROBED = {"bias_050": 49.5, "bias_080": 79.25, "bias_095": 95.0}


def write_bias_upstream(config) -> None:
    for exp in config["tables"]["bias"]["experiments"]:
        dataset = config["experiments"][exp]["dataset"]
        put(
            f"results/data/{dataset}/manifest.json",
            {"splits": {"train": {"bias_probe": {"accuracy": PROBED[exp], "majority": {}}}}},
        )
        for stage in ("sft", "grpo"):
            put(
                f"results/eval/{exp}/{stage}/scores.json",
                {"splits": {"test": split(60.0), "test-blank": split(50.0)}},
            )
            put(
                f"results/eval/{exp}/{stage}/generated_responses_test.json",
                relation_records(answer_prior=exp == "bias_095"),
            )


def test_bias_table_follows_its_upstream_files(config, workdir):
    write_bias_upstream(config)
    out = workdir / "results/tables/bias.md"
    outputs = build_table("bias", table_config(config, "bias"), str(out), "results/figures/bias")
    df = csv_of(out)
    assert len(df) == 6
    assert list(df["train bias"]) == [0.5, 0.5, 0.8, 0.8, 0.95, 0.95]
    # each set's measured bias (its manifest's probe), beside the configured one
    assert list(df["relation-only probe"]) == [49.5, 49.5, 79.25, 79.25, 95.0, 95.0]
    strong = df[df["experiment"] == "bias_095"].iloc[0]
    assert strong["bias-inconsistent accuracy"] == 0.0 and strong["agreement with text prior"] == 100.0
    assert strong["consistent − inconsistent"] == 100.0
    for path in outputs:
        assert Path(str(path) + ".provenance.json").exists(), path
    assert (workdir / "results/figures/bias/accuracy_vs_bias.png").stat().st_size > 5000
    assert (workdir / "results/figures/bias/vs_study.png.provenance.json").exists()
    ours, study = bias_table.study_comparison(csv_of(out))
    assert study["SFT"] == {
        "bias 0.5 (unbiased)": 82.0,
        "bias 0.8 (biased)": 84.6,
        "bias 0.95 (strongly biased)": 79.9,
    }
    assert study["SFT → GRPO"]["bias 0.95 (strongly biased)"] == 80.7
    assert set(ours["SFT"]) == set(study["SFT"])

    put(
        "results/eval/bias_080/grpo/scores.json", {"splits": {"test": split(71.5), "test-blank": split(52.0)}}
    )
    build_table("bias", table_config(config, "bias"), str(out), "results/figures/bias")
    row = csv_of(out).query("experiment == 'bias_080' and stage == 'SFT → GRPO'").iloc[0]
    assert row["test accuracy"] == 71.5 and row["blank-image accuracy"] == 52.0
    assert "71.50" in out.read_text()


def test_bias_table_labels_grpo_from_base_as_grpo(config, workdir):
    """The study's two arms (config/paper.yaml: GRPO from the base model): the rows and the figures say GRPO."""
    for exp in ("bias_050", "bias_080", "bias_095"):
        config["experiments"][exp]["grpo_from"] = "base"
    write_bias_upstream(config)
    out = workdir / "results/tables/bias.md"
    build_table("bias", table_config(config, "bias"), str(out), "results/figures/bias")
    assert sorted(set(csv_of(out)["stage"])) == ["GRPO", "SFT"]
    config["experiments"]["bias_080"]["grpo_from"] = "sft"
    with pytest.raises(ValueError, match="tables.bias: its experiments mix"):
        build_table("bias", table_config(config, "bias"), str(out), "results/figures/bias")


def test_bias_positive_splits_our_words_and_hashes_others():
    assert [bias_positive(r) for r in DIRECTIONAL] == [r in BIAS_POSITIVE for r in DIRECTIONAL]
    words = [f"word {i}" for i in range(200)]
    share = sum(map(bias_positive, words)) / len(words)
    assert 0.35 < share < 0.65
    assert [bias_positive(w) for w in words] == [bias_positive(w.upper()) for w in words]


@pytest.mark.parametrize("bias", [0.8, 0.95])
def test_biased_subset_of_real_items_has_the_asked_bias(bias):
    rng = random.Random(0)
    rels = [rng.choice(["on top of", "behind", "left of", "above", "near", "under"]) for _ in range(3000)]
    labels = [rng.randint(0, 1) for _ in rels]
    idx = biased_indices(rels, labels, 400, bias, seed=1)
    assert len(idx) == 400 and idx == sorted(set(idx))
    pos = [labels[i] for i in idx if bias_positive(rels[i])]
    neg = [labels[i] for i in idx if not bias_positive(rels[i])]
    assert abs(sum(pos) / len(pos) - bias) < 0.01
    assert abs(sum(neg) / len(neg) - (1 - bias)) < 0.01
    assert idx == biased_indices(rels, labels, 400, bias, seed=1)
    with pytest.raises(ValueError, match="the pool has"):
        biased_indices(rels[:100], labels[:100], 100, bias, seed=1)


# --- sim2real -------------------------------------------------------------------------------------------


def write_sim2real_upstream() -> None:
    for stage, (src, tgt) in {"base": (50.0, 50.0), "sft": (80.0, 55.0), "grpo": (82.0, 58.0)}.items():
        put(
            f"results/eval/sim2real_source/{stage}/scores.json",
            {"splits": {"test": split(src), "sim2real_target-test": split(tgt)}},
        )
    put(
        "results/eval/sim2real_ceiling/sft/scores.json",
        {"splits": {"test": split(77.0), "sim2real_source-test": split(61.0)}},
    )
    put(
        "results/eval/sim2real_ceiling/grpo/scores.json",
        {"splits": {"test": split(93.0), "sim2real_source-test": split(64.0)}},
    )


def test_sim2real_table_follows_its_upstream_files(config, workdir):
    write_sim2real_upstream()
    out = workdir / "results/tables/sim2real.md"
    build_table("sim2real", table_config(config, "sim2real"), str(out), "results/figures/sim2real")
    df = csv_of(out).set_index("setting")
    assert list(df.index) == [
        "zero-shot",
        "SFT on source",
        "SFT → GRPO on source",
        "SFT on target (ceiling)",
        "SFT → GRPO on target (ceiling)",
    ]
    assert df.loc["SFT on source", "target test accuracy"] == 55.0
    assert df.loc["SFT on target (ceiling)", "target test accuracy"] == 77.0
    assert df.loc["SFT → GRPO on target (ceiling)", "target test accuracy"] == 93.0
    assert df.loc["SFT → GRPO on target (ceiling)", "source test accuracy"] == 64.0
    assert df.loc["SFT on target (ceiling)", "source test accuracy"] == 61.0
    assert df.loc["SFT → GRPO on source", "target − source"] == pytest.approx(-24.0)
    assert df.loc["SFT on source", "study: target (reported)"] == 50.8
    assert (workdir / "results/figures/sim2real/source_vs_target.png.provenance.json").exists()
    assert (workdir / "results/figures/sim2real/vs_study.png").stat().st_size > 5000

    put(
        "results/eval/sim2real_ceiling/sft/scores.json",
        {"splits": {"test": split(90.25), "sim2real_source-test": split(61.0)}},
    )
    build_table("sim2real", table_config(config, "sim2real"), str(out), "results/figures/sim2real")
    assert csv_of(out).set_index("setting").loc["SFT on target (ceiling)", "target test accuracy"] == 90.25


def test_sim2real_ceiling_stages_pick_the_ceiling_rows(config, workdir):
    """The study's table has the ceiling's SFT row only (schema default); its GRPO stage is then not an input."""
    study = deep_merge(config, {"tables": {"sim2real": {"ceiling_stages": ["sft"]}}})
    table = study["tables"]["sim2real"]
    assert "results/eval/sim2real_ceiling/grpo/scores.json" not in sim2real_table.inputs(study, table)
    assert "results/eval/sim2real_ceiling/grpo/scores.json" in sim2real_table.inputs(
        config, config["tables"]["sim2real"]
    )
    filled = fill_defaults({"tables": {"sim2real": {"experiments": ["e"]}, "t": {"experiments": ["e"]}}})
    assert filled["tables"]["sim2real"]["ceiling_stages"] == ["sft"]
    assert "ceiling_stages" not in filled["tables"]["t"]  # a sim2real setting only
    elsewhere = deep_merge(
        config, {"tables": {"bias": {"experiments": ["vsr_qwen"], "ceiling_stages": ["sft"]}}}
    )
    with pytest.raises(ConfigError, match=r"tables\.bias.*ceiling_stages"):
        validate_config(elsewhere)
    write_sim2real_upstream()
    out = workdir / "results/tables/sim2real.md"
    build_table("sim2real", table_config(study, "sim2real"), str(out), "results/figures/sim2real")
    assert csv_of(out)["setting"].tolist()[-1] == "SFT on target (ceiling)"


def test_sim2real_roles_come_from_the_datasets(config):
    assert sim2real_table.roles(config, config["tables"]["sim2real"]) == (
        "sim2real_source",
        "sim2real_target",
        [("sim2real_source", "source"), ("sim2real_ceiling", "target")],
    )
    bad = deep_merge(config, {"tables": {"sim2real": {"experiments": ["sim2real_source", "bias_050"]}}})
    with pytest.raises(ValueError, match=r"tables\.sim2real\.experiments\.1: bias_050 trains on 'bias_050'"):
        sim2real_table.inputs(bad, bad["tables"]["sim2real"])
    no_target = deep_merge(config, {"experiments": {"sim2real_source": {"eval_datasets": []}}})
    with pytest.raises(ValueError, match=r"experiments\.sim2real_source\.eval_datasets"):
        sim2real_table.inputs(no_target, no_target["tables"]["sim2real"])


# --- shape_counting -------------------------------------------------------------------------------------


def counting_records(correct: int, n: int = 6) -> list[dict]:
    recs = []
    for i in range(n):
        sol = str(1 + i % 5)
        ans = sol if i < correct else "9"
        recs.append(
            {
                "id": f"c{i}",
                "response": f"<think>I see blue circles. So the answer is {ans}.</think><answer>{ans}</answer>",
                "parsed_answer": ans,
                "solution": sol,
                "correct": ans == sol,
                "format_ok": True,
                "target_shape": "circles",
                "count": int(sol),
            }
        )
    return recs


def test_counting_helpers():
    by_count = {
        "5": {"n": 10, "accuracy": 50.0},
        "6": {"n": 10, "accuracy": 40.0},
        "7": {"n": 30, "accuracy": 20.0},
    }
    assert shape_counting_table.accuracy_beyond(by_count, 5) == pytest.approx(25.0)
    assert shape_counting_table.accuracy_beyond(by_count, 7) is None
    # each item: +0.5 (names circles) +0.2 ("so"), +1.0 when right
    assert shape_counting_table.tutorial_reward(counting_records(3)) == pytest.approx(0.7 + 0.5)


def write_counting_upstream(config, gen_by_count: dict) -> None:
    for stage, acc in {"base": 0.0, "sft": 40.0, "grpo": 60.0}.items():
        splits = {
            "val": split(acc),
            "test": split(acc),
            "test-blank": split(20.0),
            "shapes_general-test": split(acc - 10, by_count=gen_by_count),
        }
        put(f"results/eval/shapes_qwen/{stage}/scores.json", {"splits": splits})
        put(f"results/eval/shapes_qwen/{stage}/generated_responses_test.json", counting_records(3))
    put("results/runs/shapes_qwen/grpo/adapter/train_history.json", history())


def test_shape_counting_table_follows_its_upstream_files(config, workdir):
    write_counting_upstream(config, {str(c): {"n": 30, "accuracy": 10.0 * c} for c in range(1, 8)})
    out = workdir / "results/tables/shape_counting.md"
    outputs = build_table(
        "shape_counting", table_config(config, "shape_counting"), str(out), "results/figures/shape_counting"
    )
    df = csv_of(out)
    assert list(df["stage"]) == ["zero-shot (base)", "SFT", "SFT → GRPO"]
    assert df["accuracy, counts > 5"].tolist() == [65.0, 65.0, 65.0]
    assert df["test accuracy (counts ≤ 5)"].tolist() == [0.0, 40.0, 60.0]
    assert df["test reward (0–1.7)"].tolist() == pytest.approx([1.2] * 3)
    names = {p.name for p in outputs}
    assert {"accuracy_by_count.png", "reasoning_length_accuracy.png", "grpo_rewards.png"} <= names

    write_counting_upstream(config, {"6": {"n": 10, "accuracy": 100.0}, "7": {"n": 10, "accuracy": 0.0}})
    build_table(
        "shape_counting", table_config(config, "shape_counting"), str(out), "results/figures/shape_counting"
    )
    assert csv_of(out)["accuracy, counts > 5"].tolist() == [50.0, 50.0, 50.0]


# --- math_r1 --------------------------------------------------------------------------------------------


def math_record(answer: str, solution: str) -> dict:
    response = f"<think>t</think><answer>{answer}</answer>"
    return score_record({"id": f"m{answer}", "task": "math", "problem": "p", "solution": solution}, response)


def test_math_items_are_judged_by_math_verify():
    assert math_record("0.5", "$\\frac{1}{2}$")["correct"] is True
    assert math_record("$\\frac{2}{4}$", "$\\frac{1}{2}$")["correct"] is True
    assert math_record("7", "$6$")["correct"] is False
    # relation items keep the plain accuracy reward
    rel = score_record(
        {"id": "r", "problem": "p", "solution": "True"}, "<think>t</think><answer>yes</answer>"
    )
    assert rel["correct"] is True and rel["task"] == "relation"
    recs = [math_record("0.5", "$\\frac{1}{2}$"), math_record("6", "$6$"), math_record("", "$6$")]
    assert math_r1_table.exact_match(recs) == pytest.approx(100 / 3)


def test_math_r1_table_follows_its_upstream_files(config, workdir):
    for stage, acc in {"base": 0.0, "sft": 30.0, "grpo": 45.0}.items():
        put(
            f"results/eval/math_qwen/{stage}/scores.json", {"splits": {"val": split(acc), "test": split(acc)}}
        )
        put(
            f"results/eval/math_qwen/{stage}/generated_responses_test.json",
            [math_record("0.5", "$\\frac{1}{2}$"), math_record("6", "$6$")],
        )
    put("results/runs/math_qwen/grpo/adapter/train_history.json", history())
    out = workdir / "results/tables/math_r1.md"
    build_table("math_r1", table_config(config, "math_r1"), str(out), "results/figures/math_r1")
    df = csv_of(out)
    assert df["test accuracy"].tolist() == [0.0, 30.0, 45.0]
    assert df["test exact match"].tolist() == [50.0, 50.0, 50.0]
    assert "format, math_accuracy" in out.read_text()
    assert (workdir / "results/figures/math_r1/grpo_rewards.png").stat().st_size > 5000

    put("results/eval/math_qwen/grpo/scores.json", {"splits": {"val": split(45.0), "test": split(12.5)}})
    build_table("math_r1", table_config(config, "math_r1"), str(out), "results/figures/math_r1")
    assert csv_of(out)["test accuracy"].tolist() == [0.0, 30.0, 12.5]


def test_grpo_from_base_drops_the_sft_row(config, workdir):
    cfg = deep_merge(config, {"experiments": {"math_qwen": {"grpo_from": "base"}}})
    assert not any("/sft/" in p for p in math_r1_table.inputs(cfg, cfg["tables"]["math_r1"]))
    for stage, acc in {"base": 10.0, "grpo": 20.0}.items():
        put(
            f"results/eval/math_qwen/{stage}/scores.json", {"splits": {"val": split(acc), "test": split(acc)}}
        )
        put(f"results/eval/math_qwen/{stage}/generated_responses_test.json", [math_record("6", "$6$")])
    put("results/runs/math_qwen/grpo/adapter/train_history.json", history())
    out = workdir / "results/tables/math_r1.md"
    build_table("math_r1", table_config(cfg, "math_r1"), str(out), "results/figures/math_r1")
    df = csv_of(out)
    assert df["stage"].tolist() == ["zero-shot (base)", "GRPO"]
    assert df["test accuracy"].tolist() == [10.0, 20.0]


def test_real_relation_data_gets_a_biased_training_subset(tmp_path):
    """`bias` on a real (local VSR-format) dataset draws a training subset with that bias; test stays as is."""
    import shutil

    from grpo_vqa.data.build import build_dataset, load_split
    from grpo_vqa.data.images import DataError

    root = tmp_path / "vsr"
    shutil.copytree(REPO / "tests/fixtures/real/vsr", root)
    rows = [json.loads(line) for line in (root / "train.jsonl").read_text().splitlines() if line.strip()]
    rng = random.Random(0)
    pool = []
    for i in range(240):
        rel = rng.choice(["behind", "left of", "above", "on top of", "near", "under"])
        pool.append(
            rows[i % len(rows)]
            | {"relation": rel, "subj": f"cat{i}", "obj": "dog", "caption": f"The cat{i} is {rel} the dog."}
            | {"label": rng.randint(0, 1)}
        )
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pool))
    cfg = {
        "kind": "relation",
        "source": "local",
        "loader": "vsr",
        "splits": {"train": 60, "test": 4},
        "bias": 0.9,
        "real": {"local_dir": str(root), "splits": {"train": "train", "test": "test"}},
    }
    build_dataset("vsr_biased", cfg, tmp_path / "out", seed=1)
    train = load_split(tmp_path / "out", "train")
    assert len(train) == 60
    pos = [lab for rel, lab in zip(train["relation"], train["label"], strict=True) if bias_positive(rel)]
    neg = [lab for rel, lab in zip(train["relation"], train["label"], strict=True) if not bias_positive(rel)]
    assert pos and neg
    assert abs(sum(pos) / len(pos) - 0.9) < 0.05 and abs(sum(neg) / len(neg) - 0.1) < 0.05
    test = load_split(tmp_path / "out", "test")
    plain = build_dataset("vsr_biased", cfg | {"bias": 0.5}, tmp_path / "plain", seed=1)
    assert list(test["id"]) == list(load_split(tmp_path / "plain", "test")["id"])
    assert plain["splits"]["train"]["n"] == 60
    too_small = cfg | {"splits": {"train": 239}}
    with pytest.raises(DataError, match="vsr config: bias 0.9: needs .* the pool has"):
        build_dataset("vsr_biased", too_small, tmp_path / "small", seed=1)
