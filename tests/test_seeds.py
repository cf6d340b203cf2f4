"""`seeds:` runs every experiment once per seed: config expansion, the DAG planned with one and three seeds
(one seed plans exactly what no `seeds` key plans), the README's command, and vsr_main's per-seed columns
with mean and 95 % interval checked against a hand computation."""

from __future__ import annotations

import copy
import json
import math
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from grpo_vqa.config import ConfigError, fill_defaults, validate_config
from grpo_vqa.reporting import paper
from grpo_vqa.reporting.paper import TableSpec, build_table
from grpo_vqa.reporting.tables import seed_summary, write_table
from grpo_vqa.seeds import coerce_seeds, expand_seeds, replicate_name, seed_list

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "workflow" / "Snakefile"
TEST_CONFIG = REPO / "config" / "test.yaml"
CONFIG = fill_defaults(
    yaml.safe_load((REPO / "config" / "config.yaml").read_text())
)  # as validation fills it
#: Student's t quantile t(0.975; 2 degrees of freedom) as printed in t tables to five decimals.
T_975_DF2 = 4.30265


# --- config ---------------------------------------------------------------------------------------------


def test_seeds_default_to_seed_and_one_seed_changes_nothing():
    assert seed_list(CONFIG) == [CONFIG["seed"]]
    expanded, seed_of = expand_seeds(CONFIG)
    assert expanded == CONFIG
    assert seed_of["experiments"] == {"vsr_qwen": CONFIG["seed"], "vsr_smolvlm": CONFIG["seed"]}
    same, _ = expand_seeds(CONFIG | {"seeds": [CONFIG["seed"]]})
    assert same == CONFIG | {"seeds": [CONFIG["seed"]]}
    other, seed_of = expand_seeds(CONFIG | {"seeds": [7]})
    assert other["seed"] == 7 and set(other["experiments"]) == set(CONFIG["experiments"])
    assert seed_of["datasets"] == {"vsr_synth": 7}


def test_replicates_point_at_their_own_seed_copies():
    config = copy.deepcopy(CONFIG)
    config["experiments"]["vsr_qwen_b"] = {"model": "qwen", "dataset": "vsr_synth", "sft_from": "vsr_qwen"}
    config["experiments"]["vsr_qwen"]["eval_datasets"] = ["vsr_synth"]
    expanded, seed_of = expand_seeds(config | {"seeds": [5, 9]})
    assert expanded["seed"] == 5
    rep = expanded["experiments"]["vsr_qwen_b_s9"]
    assert rep == {"model": "qwen_s9", "dataset": "vsr_synth_s9", "sft_from": "vsr_qwen_s9"}
    assert expanded["experiments"]["vsr_qwen_s9"]["eval_datasets"] == ["vsr_synth_s9"]
    assert expanded["experiments"]["vsr_qwen"] == config["experiments"]["vsr_qwen"]  # first seed: as given
    assert expanded["models"]["qwen_s9"] == config["models"]["qwen"]
    assert expanded["datasets"]["vsr_synth_s9"] == config["datasets"]["vsr_synth"]
    assert seed_of["models"] == {"qwen": 5, "smolvlm": 5, "qwen_s9": 9, "smolvlm_s9": 9}
    assert seed_of["experiments"]["vsr_smolvlm_s9"] == 9 and seed_of["experiments"]["vsr_qwen_b"] == 5
    assert replicate_name("vsr_qwen", 5, [5, 9]) == "vsr_qwen"
    assert replicate_name("vsr_qwen", 9, [5, 9]) == "vsr_qwen_s9"


def test_a_taken_replicate_name_is_an_error_naming_the_key():
    config = copy.deepcopy(CONFIG)
    config["datasets"]["vsr_synth_s7"] = config["datasets"]["vsr_synth"]
    with pytest.raises(ConfigError, match=r"^config key datasets\.vsr_synth_s7: the name is taken"):
        expand_seeds(config | {"seeds": [1234, 7]})


@pytest.mark.parametrize(
    ("seeds", "expected"),
    [([7, 7], r"config key seeds: .*non-unique"), ([], r"config key seeds: .*"), ([1, -2], r"seeds\.1")],
)
def test_bad_seeds_fail_with_one_line_naming_the_key(seeds, expected):
    with pytest.raises(ConfigError, match=expected) as err:
        validate_config(CONFIG | {"seeds": seeds})
    assert "\n" not in str(err.value)


def test_command_line_seeds_are_read_as_integers():
    config = {"seeds": ["1234", "7", "42"]}  # what `--config 'seeds=[1234,7,42]'` gives Snakemake
    coerce_seeds(config)
    assert config["seeds"] == [1234, 7, 42]
    config = {"seeds": ["x"]}
    coerce_seeds(config)
    with pytest.raises(ConfigError, match=r"seeds\.0"):
        seed_list(config)


# --- DAG ------------------------------------------------------------------------------------------------


def plan(tmp_path: Path, *args: str, smoke: bool = True) -> str:
    """`snakemake -n -p [--cores 2 all --configfile config/test.yaml] ARGS` in a fresh directory (stdout)."""
    workdir = tmp_path / f"w{len(list(tmp_path.iterdir()))}"
    workdir.mkdir()
    cmd = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "-d", str(workdir), "-n", "-p"]
    if smoke:
        cmd += ["--cores", "2", "all", "--configfile", str(TEST_CONFIG)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def job_counts(out: str) -> dict[str, int]:
    stats = out.split("Job stats:")[1].split("Reasons:")[0]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", stats, re.M)}


def planned_jobs(out: str) -> list[str]:
    """Every planned job's rule, outputs, wildcards and shell command (no dates, job ids or reasons)."""
    jobs = []
    for block in re.split(r"^\[[^\]]+\]\n", out, flags=re.M)[1:]:
        keep = re.findall(
            r"^(?:(?:local)?rule \w+:|    (?:output|wildcards): .*|Shell command: .*)$", block, re.M
        )
        jobs.append("\n".join(keep))
    return sorted(jobs)


def test_one_seed_plans_exactly_what_no_seeds_key_plans(tmp_path):
    plain = plan(tmp_path)
    seeds_file = tmp_path / "one_seed.yaml"
    seeds_file.write_text("seeds: [1234]\n")
    one = plan(tmp_path, str(seeds_file))
    # no rule passes the whole config on: the table rule gets the resolved seed list, so the plans are the same
    assert '"seeds":[1234],' in one
    assert planned_jobs(one) == planned_jobs(plain)
    assert any("Shell command: python" in j and "make_dataset.py" in j for j in planned_jobs(plain))
    assert len(planned_jobs(plain)) == sum(job_counts(plain)[r] for r in job_counts(plain) if r != "total")
    assert "_s1234" not in plain and not re.search(r"_s\d+", plain)


def test_three_seeds_plan_every_experiment_per_seed(tmp_path):
    one = job_counts(plan(tmp_path))
    out = plan(tmp_path, "--config", "seeds=[1234,7,42]")
    three = job_counts(out)
    for rule in ("make_dataset", "build_model", "sft", "merge_lora", "grpo", "evaluate"):
        assert three[rule] == 3 * one[rule], rule
    # one table, one judge (first seed only)
    assert three["table"] == one["table"] == 1
    assert three["judge_responses"] == one["judge_responses"]
    for seed, suffix in ((1234, ""), (7, "_s7"), (42, "_s42")):
        assert f"--name vsr_synth{suffix} --seed {seed} " in out
        assert f"--name qwen{suffix} --seed {seed} " in out
        assert f"results/eval/vsr_smolvlm{suffix}/grpo/scores.json" in out
        assert re.search(
            rf"train_grpo\.py --config-json '[^']*\"seed\":{seed}[,}}][^']*' .*"
            rf"--data results/data/vsr_synth{suffix} --out results/runs/vsr_qwen{suffix}/grpo",
            out,
        )
    table = re.search(r"rule table:\n    input: ([^\n]+)", out).group(1)
    assert "results/eval/vsr_qwen_s42/base/scores.json" in table
    judged = [j for j in re.findall(r"output: (results/judge/\S+)", out) if "/calibration/" not in j]
    assert judged and all(re.match(r"results/judge/vsr_qwen/", j) for j in judged)


def test_every_family_experiment_runs_per_seed_while_its_table_reads_the_first(tmp_path):
    families = str(REPO / "config/full-embedded.yaml")
    one = job_counts(plan(tmp_path, "--cores", "2", "all", "--configfile", families, smoke=False))
    out = plan(
        tmp_path, "--cores", "2", "all", "--configfile", families, "--config", "seeds=[1234,7]", smoke=False
    )
    two = job_counts(out)
    for rule in ("make_dataset", "build_model", "sft", "merge_lora", "grpo", "prompt_tuning", "evaluate"):
        assert two[rule] == 2 * one[rule], rule
    assert two["table"] == one["table"] == 7
    bias = re.search(r"rule table:\n    input: ([^\n]+)\n(?:    .*\n)*?    wildcards: table=bias\n", out)
    assert bias and "bias_050/" in bias.group(1) and "_s7/" not in bias.group(1)
    assert "results/eval/bias_050_s7/grpo/scores.json" in out


def test_the_readme_commands_for_three_seeds_plan(tmp_path):
    readme = (REPO / "README.md").read_text()
    commands = re.findall(r"^(snakemake .*seeds.*?)(?:\s+#.*)?$", readme, re.M)
    assert len(commands) == 2, commands
    outs = []
    for line in commands:
        args = shlex.split(line)[1:]
        args = [str(REPO / a) if a.startswith("config/") else a for a in args]
        outs.append(job_counts(plan(tmp_path, *args, smoke=False)))  # plans the embedded default
    assert outs[0] == outs[1]
    assert outs[0]["grpo"] == 3 * job_counts(plan(tmp_path, "--cores", "2", "all", smoke=False))["grpo"]


# --- vsr_main ---------------------------------------------------------------------------------------------


def test_seed_summary_matches_a_hand_computed_t_interval():
    mean, low, high = seed_summary([60.0, 70.0, 80.0])
    # sd = 10, standard error 10 / sqrt(3), half width t(0.975; 2) * 10 / sqrt(3) = 24.84
    half = T_975_DF2 * 10.0 / math.sqrt(3.0)
    assert mean == pytest.approx(70.0)
    assert low == pytest.approx(70.0 - half, abs=1e-3) and high == pytest.approx(70.0 + half, abs=1e-3)
    assert seed_summary([55.0, None, 55.0]) == (55.0, 55.0, 55.0)
    assert seed_summary([42.0]) == (42.0, None, None)
    assert seed_summary([None]) == (None, None, None)


def put(path: str, obj) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(obj))


def write_vsr_upstream(exps: list[str], seeds: list[int], test_acc) -> None:
    """Fake score, response and history files of every replicate; test accuracy ``test_acc(exp, seed, stage)``."""
    for exp in exps:
        for i, seed in enumerate(seeds):
            rep = replicate_name(exp, seed, seeds)
            for stage in ("base", "sft", "grpo"):
                splits = {
                    "val": {"accuracy": 50.0 + i, "format": 90.0},
                    "test": {"accuracy": test_acc(exp, seed, stage), "format": 80.0 + 2 * i},
                    "test-blank": {"accuracy": 49.0 + i},
                }
                put(f"results/eval/{rep}/{stage}/scores.json", {"splits": splits})
                put(
                    f"results/eval/{rep}/{stage}/generated_responses_test.json",
                    [{"id": "a", "response": "<think>x y</think><answer>True</answer>", "correct": True}],
                )
            put(f"results/runs/{rep}/grpo/adapter/train_history.json", [{"step": 1, "reward": 1.0}])


def test_vsr_main_reports_each_seed_with_mean_and_interval(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    seeds = [1234, 7, 42]
    exps = ["vsr_qwen", "vsr_smolvlm"]
    acc = {1234: 60.0, 7: 70.0, 42: 80.0}
    write_vsr_upstream(exps, seeds, lambda e, s, st: acc[s] + (5.0 if st == "grpo" else 0.0))
    config, _ = expand_seeds(CONFIG | {"seeds": seeds})
    assert set(paper.vsr_main_inputs(config, config["tables"]["vsr_main"])) >= {
        f"results/eval/{replicate_name(e, s, seeds)}/{st}/scores.json"
        for e in exps
        for s in seeds
        for st in ("base", "sft", "grpo")
    }
    out = tmp_path / "results/tables/vsr_main.md"
    out.parent.mkdir(parents=True)  # Snakemake creates output folders
    build_table("vsr_main", config, str(out), "results/figures/vsr_main")
    df = pd.read_csv(out.with_suffix(".csv"))
    assert len(df) == 6
    row = df[(df["experiment"] == "vsr_qwen") & (df["stage"] == "SFT → GRPO")].iloc[0]
    assert [row[f"test accuracy, seed {s}"] for s in seeds] == [65.0, 75.0, 85.0]
    half = T_975_DF2 * 10.0 / math.sqrt(3.0)
    assert row["test accuracy, mean"] == pytest.approx(75.0)
    assert row["test accuracy, 95 % CI low"] == pytest.approx(75.0 - half, abs=1e-3)
    assert row["test accuracy, 95 % CI high"] == pytest.approx(75.0 + half, abs=1e-3)
    assert row["val accuracy, mean"] == pytest.approx(51.0)  # 50, 51, 52
    assert row["test format, mean"] == pytest.approx(82.0)  # 80, 82, 84
    text = out.read_text()
    assert "seeds 1234, 7, 42" in text and "95 % t-interval" in text
    # one seed's score file changes the mean: the table reads every seed
    put(
        "results/eval/vsr_qwen_s42/grpo/scores.json",
        {"splits": {"val": {"accuracy": 50.0}, "test": {"accuracy": 55.0}, "test-blank": {"accuracy": 50.0}}},
    )
    build_table("vsr_main", config, str(out), "results/figures/vsr_main")
    df = pd.read_csv(out.with_suffix(".csv"))
    row = df[(df["experiment"] == "vsr_qwen") & (df["stage"] == "SFT → GRPO")].iloc[0]
    assert row["test accuracy, mean"] == pytest.approx((65.0 + 75.0 + 55.0) / 3)


def test_one_seed_vsr_main_is_byte_identical_to_no_seeds_key(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exps = ["vsr_qwen", "vsr_smolvlm"]
    write_vsr_upstream(exps, [1234], lambda e, s, st: {"base": 50.0, "sft": 70.0, "grpo": 75.5}[st])
    texts = []
    for config in (CONFIG, expand_seeds(CONFIG | {"seeds": [1234]})[0]):
        out = tmp_path / f"t{len(texts)}/vsr_main.md"
        out.parent.mkdir()
        build_table("vsr_main", config, str(out), str(tmp_path / "figures"))
        texts.append((out.read_bytes(), out.with_suffix(".csv").read_bytes()))
    assert texts[0] == texts[1]
    assert b"seed" not in texts[0][0] and list(pd.read_csv(tmp_path / "t0/vsr_main.csv").columns) == [
        "experiment",
        "model",
        "stage",
        "val accuracy",
        "test accuracy",
        "test format",
        "test accuracy, blank image",
    ]


def test_first_seed_tables_say_so_under_the_table(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    def build(config, table_cfg, out_md, fig_dir):
        write_table(pd.DataFrame([{"a": 1.0}]), out_md, "t", notes=["n"])
        return [Path(out_md)]

    monkeypatch.setitem(paper.TABLES, "fake", TableSpec(build, lambda c, t: []))
    base = CONFIG | {"tables": {"fake": {"experiments": ["vsr_qwen"]}}}
    build_table("fake", base, "one.md", "f")
    assert Path("one.md").read_text().endswith("- n\n")
    build_table("fake", expand_seeds(base | {"seeds": [3, 4]})[0], "two.md", "f")
    lines = Path("two.md").read_text().splitlines()
    assert lines[-2] == "- n" and lines[-1].startswith("- seeds: this table shows the first seed (3) of 3, 4")
