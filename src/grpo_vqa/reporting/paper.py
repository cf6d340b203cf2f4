"""One builder per paper table. Each reads upstream files only and writes the table, its CSV, its figures,
and provenance sidecars."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..io import read_json
from ..provenance import write_sidecar
from ..seeds import replicate_name, replicate_table_cfg, seed_list
from . import (
    bias_table,
    figures,
    grounding_table,
    math_r1_table,
    prompt_tuning_table,
    shape_counting_table,
    sim2real_table,
)
from .tables import append_note, load_scores, vsr_main_frame, vsr_main_seeds_frame, write_table

#: The study's reported VSR accuracies (%), by model architecture and (stage, split), drawn beside ours in
#: ``results/figures/vsr_main/vs_study.png``. Source: ../shared/reference/study-facts.md, "The study's
#: reported numbers". Qwen's zero-shot and GRPO values are fractions of 340 items, so the dev split (our val):
#: 70.59 = 240/340, 86.18 = 293/340 (a second GRPO figure, 83.53 = 284/340, is listed in the table's notes);
#: SmolVLM's 67.59 = 826/1,222 is the test split. Qwen's SFT 80.24 is a fraction of neither split size (its
#: split is not known), so it is only listed in the notes.
STUDY_VSR_REFERENCE: dict[str, dict[tuple[str, str], float]] = {
    "qwen2_5_vl": {("base", "val"): 70.59, ("grpo", "val"): 86.18},  # Qwen2.5-VL-3B-Instruct
    "idefics3": {("sft", "test"): 67.59},  # SmolVLM-500M-Instruct
}
#: Every reported VSR value with its split and source, for the table's notes.
STUDY_VSR_NOTES = (
    "The study (VSR zeroshot): Qwen2.5-VL-3B zero-shot 70.59 (dev, 240/340), SFT 80.24 (split not known; the "
    "stored scores.json says 84.12), GRPO 86.18 and 83.53 (both dev, 293/340 and 284/340; the project page "
    "says 86.47); SmolVLM-500M SFT 67.59 (test, 826/1,222)."
)
SETTING_LABELS = {"base": "zero-shot", "sft": "SFT", "grpo": "GRPO"}


def build_vsr_main(config: dict, table_cfg: dict, out_md: str, fig_dir: str) -> list[Path]:
    exps = list(table_cfg["experiments"])
    score_paths = {(e, s): f"results/eval/{e}/{s}/scores.json" for e in exps for s in ("base", "sft", "grpo")}
    scores = load_scores(score_paths)
    notes = [
        "val/test: held-out splits; format: share of responses matching <think>…</think><answer>…</answer>.",
        "blank image: the test split with every image replaced by grey — chance is 50 %.",
        STUDY_VSR_NOTES,
    ]
    seeds = seed_list(config)
    seed_paths = vsr_main_seed_scores(exps, seeds)
    if len(seeds) == 1:
        df = vsr_main_frame(config, exps, scores)
    else:
        df = vsr_main_seeds_frame(config, exps, seeds, load_scores(seed_paths))
        notes.append(
            f"seeds {', '.join(map(str, seeds))}: one independent replicate each (data, model, SFT, GRPO, "
            f"evaluation; experiment <name>_s<seed> after the first); mean and 95 % t-interval (n - 1 = "
            f"{len(seeds) - 1} degrees of freedom) over seeds; figures show the first seed ({seeds[0]})."
        )
    write_table(df, out_md, "VSR-style spatial relations: accuracy (%) by model and training stage", notes)
    hist_paths = {e: f"results/runs/{e}/grpo/adapter/train_history.json" for e in exps}
    outputs = [Path(out_md), Path(out_md).with_suffix(".csv")]
    rewards_png = Path(fig_dir) / "grpo_rewards.png"
    figures.grpo_curves(
        {e: read_json(p) for e, p in hist_paths.items()}, rewards_png, figures.grpo_betas(config, exps)
    )
    rel_png = Path(fig_dir) / "accuracy_by_relation.png"
    groups = {
        f"{e} {s}": {
            k: v["accuracy"] for k, v in scores[(e, s)]["splits"]["test"].get("by_relation", {}).items()
        }
        for e in exps
        for s in ("sft", "grpo")
    }
    figures.grouped_bars(groups, rel_png, "test accuracy by relation", "accuracy (%)")
    resp_paths = {
        (e, s): f"results/eval/{e}/{s}/generated_responses_test.json" for e in exps for s in ("sft", "grpo")
    }
    length_png = Path(fig_dir) / "reasoning_length_accuracy.png"
    figures.reasoning_length_accuracy(
        {f"{e} {s}": figures.reasoning_length_bins(read_json(p)) for (e, s), p in resp_paths.items()},
        length_png,
    )
    study_png = Path(fig_dir) / "vs_study.png"
    ours, study = {}, {}
    for e in exps:
        arch = config["models"][config["experiments"][e]["model"]]["arch"]
        ours[e], study[e] = {}, {}
        for s in ("base", "sft", "grpo"):
            for split in ("val", "test"):
                label = f"{SETTING_LABELS[s]} {split}"
                ours[e][label] = scores[(e, s)]["splits"].get(split, {}).get("accuracy", float("nan"))
                if (s, split) in STUDY_VSR_REFERENCE.get(arch, {}):
                    study[e][label] = STUDY_VSR_REFERENCE[arch][(s, split)]
    figures.reference_comparison(ours, study, study_png)
    outputs += [rewards_png, rel_png, length_png, study_png]
    inputs = list(score_paths.values()) + list(hist_paths.values()) + list(resp_paths.values())
    inputs += [p for p in seed_paths.values() if p not in inputs]
    for out in outputs:
        write_sidecar(out, {"table": table_cfg, "seed": config["seed"]}, inputs)
    return outputs


def vsr_main_seed_scores(exps: list[str], seeds: list[int]) -> dict[tuple[str, int, str], str]:
    """scores.json of every seed's replicate of ``exps``, by (experiment, seed, stage)."""
    return {
        (e, seed, s): f"results/eval/{replicate_name(e, seed, seeds)}/{s}/scores.json"
        for e in exps
        for seed in seeds
        for s in ("base", "sft", "grpo")
    }


def vsr_main_inputs(config: dict, table_cfg: dict) -> list[str]:
    exps = list(table_cfg["experiments"])
    first = (
        [f"results/eval/{e}/{s}/scores.json" for e in exps for s in ("base", "sft", "grpo")]
        + [f"results/runs/{e}/grpo/adapter" for e in exps]
        + [f"results/eval/{e}/{s}/generated_responses_test.json" for e in exps for s in ("sft", "grpo")]
    )
    return first + [p for p in vsr_main_seed_scores(exps, seed_list(config)).values() if p not in first]


@dataclass(frozen=True)
class TableSpec:
    """A paper table: ``build(config, table_cfg, out_md, fig_dir) -> outputs`` and the upstream files it reads,
    ``inputs(config, table_cfg) -> paths`` (the Snakemake rule's inputs)."""

    build: Callable[[dict, dict, str, str], list[Path]]
    inputs: Callable[[dict, dict], list[str]]


#: Every table by its name under ``tables:`` in the config.
TABLES: dict[str, TableSpec] = {
    "vsr_main": TableSpec(build_vsr_main, vsr_main_inputs),
    "bias": TableSpec(bias_table.build, bias_table.inputs),
    "sim2real": TableSpec(sim2real_table.build, sim2real_table.inputs),
    "shape_counting": TableSpec(shape_counting_table.build, shape_counting_table.inputs),
    "math_r1": TableSpec(math_r1_table.build, math_r1_table.inputs),
    "grounding": TableSpec(grounding_table.build, grounding_table.inputs),
    "prompt_tuning": TableSpec(prompt_tuning_table.build, prompt_tuning_table.inputs),
}


def table_spec(name: str) -> TableSpec:
    if name not in TABLES:
        raise KeyError(f"tables.{name}: no builder for this table; known: {', '.join(TABLES)}")
    return TABLES[name]


def table_inputs(name: str, config: dict) -> list[str]:
    """Upstream files a table reads (for the Snakemake rule)."""
    return table_spec(name).inputs(config, config["tables"][name])


#: Tables that read every seed's replicates; the others show the first seed (and say so under the table).
PER_SEED_TABLES = ("vsr_main",)


def table_config(config: dict, name: str) -> dict:
    """The part of ``config`` that table ``name`` reads (rule table's params, so that an edit elsewhere in the
    config does not rerun it): the seeds, the table's own section, its experiments (with every seed's
    replicate), their models and datasets, and the GRPO section (the tables show its rewards and beta)."""
    table = config["tables"][name]
    seeds = seed_list(config)
    names = [replicate_name(e, s, seeds) for e in table["experiments"] for s in seeds]
    exps = {e: config["experiments"][e] for e in dict.fromkeys(names) if e in config["experiments"]}
    models = {x["model"] for x in exps.values()}
    datasets = {d for x in exps.values() for d in (x["dataset"], *x["eval_datasets"])}
    return {
        "seed": config["seed"],
        "seeds": seed_list(config),  # resolved: seeds: [seed] and no seeds key give the same params
        "tables": {name: table},
        "experiments": exps,
        "models": {m: c for m, c in config["models"].items() if m in models},
        "datasets": {d: c for d, c in config["datasets"].items() if d in datasets},
        "grpo": config["grpo"],
    }


def build_table(name: str, config: dict, out_md: str, fig_dir: str) -> list[Path]:
    outputs = table_spec(name).build(config, config["tables"][name], out_md, fig_dir)
    seeds = seed_list(config)
    if len(seeds) > 1 and name not in PER_SEED_TABLES:
        append_note(
            out_md,
            f"seeds: this table shows the first seed ({seeds[0]}) of {', '.join(map(str, seeds))}; the other "
            f"seeds' runs are <experiment>_s<seed> (vsr_main reports every seed with its mean and 95 % interval).",
        )
    return outputs


def seed_replicate_targets(config: dict) -> list[str]:
    """What the tables that show only the first seed read, for every later seed's replicates: `all` requests
    these so that every experiment of every table runs once per seed."""
    seeds = seed_list(config)
    out: list[str] = []
    for name, table_cfg in config["tables"].items():
        if name in PER_SEED_TABLES:
            continue
        for seed in seeds[1:]:
            out += table_spec(name).inputs(config, replicate_table_cfg(table_cfg, seed, seeds))
    return list(dict.fromkeys(out))
