"""Seed replicates: ``seeds: [s0, s1, ...]`` runs every experiment once per seed, as independent replicates.

``seeds`` unset (or null) means ``[seed]``: one replicate, today's run. When ``seeds`` is set it replaces
``seed`` (``seed`` is then read as ``seeds[0]``). The FIRST seed is the primary replicate and keeps the plain
names and paths (``results/data/vsr_synth``, ``results/models/qwen``, ``results/eval/vsr_qwen/...``), so a
one-seed run is exactly the run without ``seeds``, and adding seeds to a finished run reuses its outputs. Every
other seed ``k`` adds a copy of each dataset, model and experiment named ``<name>_s<k>`` (``vsr_synth_s7``,
``qwen_s7``, ``vsr_qwen_s7``) whose references (model, dataset, eval_datasets, sft_from) point at the copies of
the same seed, so a replicate regenerates its data, rebuilds and warm-starts its tiny model, and trains and
evaluates with its own seed. Tables, ``judge.runs`` and everything else that names an experiment refer to the
first seed; the ``vsr_main`` table reads every seed.
"""

from __future__ import annotations

import copy

from .config import ConfigError

#: The config sections whose entries are replicated per seed (their names become paths).
REPLICATED = ("datasets", "models", "experiments")


def seed_list(config: dict) -> list[int]:
    """The seeds of the run, first (primary) seed first: ``seeds``, or ``[seed]`` when ``seeds`` is unset."""
    seeds = config.get("seeds")
    if seeds is None:
        return [int(config["seed"])]
    if not isinstance(seeds, list) or not seeds:
        raise ConfigError("config key seeds: a non-empty list of seeds (integers >= 0), e.g. [1234, 7, 42]")
    for i, s in enumerate(seeds):
        if isinstance(s, bool) or not isinstance(s, int) or s < 0:
            raise ConfigError(f"config key seeds.{i}: {s!r} is not an integer >= 0")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"config key seeds: {seeds} repeats a seed (each seed is one replicate)")
    return [int(s) for s in seeds]


def coerce_seeds(config: dict) -> None:
    """``--config 'seeds=[1234,7,42]'`` hands Snakemake's config the seeds as text; read digit strings as
    integers (in place) so the schema sees numbers. Anything else is left for validation to refuse."""
    seeds = config.get("seeds")
    if isinstance(seeds, list):
        config["seeds"] = [int(s) if isinstance(s, str) and s.strip().isdigit() else s for s in seeds]


def replicate_name(name: str, seed: int, seeds: list[int]) -> str:
    """The name of ``name``'s replicate for ``seed``: itself for the first seed, else ``<name>_s<seed>``."""
    return name if seed == seeds[0] else f"{name}_s{seed}"


def _replicate_experiment(exp: dict, seed: int, seeds: list[int]) -> dict:
    out = copy.deepcopy(exp)
    out["model"] = replicate_name(exp["model"], seed, seeds)
    out["dataset"] = replicate_name(exp["dataset"], seed, seeds)
    if "eval_datasets" in exp:
        out["eval_datasets"] = [replicate_name(d, seed, seeds) for d in exp["eval_datasets"]]
    if exp.get("sft_from"):
        out["sft_from"] = replicate_name(exp["sft_from"], seed, seeds)
    return out


def expand_seeds(config: dict) -> tuple[dict, dict[str, dict[str, int]]]:
    """The config with every dataset, model and experiment replicated per extra seed, and the seed of every
    (replicated or primary) entry by section: ``seed_of["experiments"]["vsr_qwen_s7"] == 7``.

    With one seed the config comes back equal to the input (nothing added), so outputs stay as they were.
    A replicate name that is already taken is an error naming the key."""
    seeds = seed_list(config)
    out = copy.deepcopy(config)
    if out.get("seeds") is not None:
        out["seed"] = seeds[0]
    seed_of: dict[str, dict[str, int]] = {sec: dict.fromkeys(config[sec], seeds[0]) for sec in REPLICATED}
    for seed in seeds[1:]:
        for sec in REPLICATED:
            for name, entry in config[sec].items():
                rep = replicate_name(name, seed, seeds)
                if rep in config[sec]:
                    raise ConfigError(
                        f"config key {sec}.{rep}: the name is taken by the seed-{seed} replicate of {name!r} "
                        "(seeds: every seed after the first adds <name>_s<seed>); rename the entry"
                    )
                out[sec][rep] = (
                    _replicate_experiment(entry, seed, seeds)
                    if sec == "experiments"
                    else copy.deepcopy(entry)
                )
                seed_of[sec][rep] = seed
    return out, seed_of


def replicate_table_cfg(table_cfg: dict, seed: int, seeds: list[int]) -> dict:
    """A table's config pointed at the replicates of one seed (its experiments renamed)."""
    return {**table_cfg, "experiments": [replicate_name(e, seed, seeds) for e in table_cfg["experiments"]]}
