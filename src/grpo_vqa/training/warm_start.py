"""Warm start of a tiny model: full fine-tuning on scene descriptions (see :mod:`grpo_vqa.data.pretrain`),
optionally gated by a listing probe.

The gate (``models.<name>.pretrain.gate``): after the scheduled steps the model lists the shapes of fresh
relation scenes ("Name the shapes from left to right."), greedily; while the share listed exactly is below
``min_listing`` it trains ``extra_steps`` more on the same scenes (a new cosine schedule at the same learning
rate), up to ``max_rounds`` times. The same recipe learns the listing on one machine and stays at chance on
another for some seeds (a 2-layer model's optimisation is that fragile); the gate makes only the draws that need
it pay for more steps. Each round keeps its own checkpoints, model and probe result, so a killed job resumes
inside the round it was in.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from ..data.pretrain import make_pretrain_items, scene_mix
from ..data.schema import prompt_messages
from ..io import atomic_write_json, copy_dir, read_json
from .common import TrainJob
from .sft import run_sft

#: Scenes of the probe: relation listings only, objects apart (the relation datasets' layout), plain backgrounds.
PROBE_SCENES = {"relation_share": 1.0, "proximity_share": 0.0, "textured_share": 0.0, "layout": "apart"}
#: The probe's seed: no warm start draws its scenes with it (a run whose seed is this one gets the next).
PROBE_SEED = 999
#: Tokens a listing needs ("Right to left: the blue circle, the red triangle." is 14-16 tokens) with room.
PROBE_MAX_NEW_TOKENS = 24


def pretrain_rows(n: int, seed: int, size: int, **item_kwargs):
    import datasets

    items = make_pretrain_items(n, seed, size=size, **item_kwargs)
    rows = [
        {
            "prompt": prompt_messages(it["problem"], None),
            "completion": [{"role": "assistant", "content": [{"type": "text", "text": it["text"]}]}],
            "image": it["image"],
        }
        for it in items
    ]
    return datasets.Dataset.from_list(rows)


def train_cfg(steps: int, lr: float, batch_size: int) -> dict:
    """A complete training section in TRL's names (as ``sft_args`` reads one): the warm start's fixed recipe."""
    return {
        "max_steps": int(steps),
        "num_train_epochs": 3.0,  # TRL's default; max_steps wins
        "learning_rate": float(lr),
        "per_device_train_batch_size": int(batch_size),
        "gradient_accumulation_steps": 1,
        "lr_scheduler_type": "cosine",
        "warmup_ratio": 0.03,
        "save_steps": max(50, int(steps) // 4),
        "fp16": False,
        "gradient_checkpointing": False,
    }


def probe_items(cfg: dict, size: int, n_items: int, seed: int) -> list[dict]:
    """``n_items`` listing scenes of the model's own scene mix (``cfg``: its ``pretrain`` block), drawn with a
    seed its warm start (seed ``seed``) does not use."""
    probe_seed = PROBE_SEED if seed != PROBE_SEED else PROBE_SEED + 1
    pool = make_pretrain_items(4 * n_items, probe_seed, size=size, **scene_mix(cfg) | PROBE_SCENES)
    items = [it for it in pool if it["problem"].startswith("Name")][:n_items]
    if len(items) < n_items:
        raise ValueError(f"the listing probe drew {len(items)} listing scenes of {n_items} asked")
    return items


def listing_probe(model_dir: str | Path, items: list[dict], batch_size: int = 32) -> dict:
    """Share of ``items`` whose shapes the model lists exactly (greedy), overall and per direction."""
    from ..models.greedy import greedy_completions, strip_special
    from ..models.loading import load_model, load_processor

    model, processor = load_model(str(model_dir)), load_processor(str(model_dir))
    right, total = Counter(), Counter()
    for start in range(0, len(items), batch_size):
        batch = items[start : start + batch_size]
        messages = [prompt_messages(it["problem"], None) for it in batch]
        outs = greedy_completions(
            model, processor, [it["image"] for it in batch], messages, PROBE_MAX_NEW_TOKENS
        )
        for it, out in zip(batch, outs, strict=True):
            direction = it["text"].split(":")[0]
            total[direction] += 1
            right[direction] += strip_special(out, processor) == it["text"]
    return {
        "listing_exact": round(sum(right.values()) / len(items), 4),
        "by_direction": {d: round(right[d] / total[d], 4) for d in sorted(total)},
        "items": len(items),
    }


def warm_start(
    model_dir: str | Path, out_dir: str | Path, ckpt_dir: str | Path, cfg: dict, seed: int, size: int
) -> list[dict]:
    """Pretrain ``model_dir`` for ``cfg['steps']`` steps (then, with ``cfg['gate']``, more rounds while the
    listing probe is below its bar) and save the full model to ``out_dir``.

    ``cfg`` is a filled ``models.<name>.pretrain`` block (the scene mix included: the schema's defaults).
    Returns one record per round: its steps and, when gated, the probe's result."""
    rows = pretrain_rows(int(cfg["n_images"]), seed, size, **scene_mix(cfg))
    lr, batch = cfg["lr"], cfg["batch_size"]
    gate = cfg.get("gate")
    if not gate:
        run_sft(
            TrainJob(model_dir, rows, out_dir, ckpt_dir, train_cfg(cfg["steps"], lr, batch), seed),
            use_lora=False,
        )
        return [{"round": 0, "steps": int(cfg["steps"])}]

    items = probe_items(cfg, size, int(gate["items"]), seed)
    records, start = [], Path(model_dir)
    for r in range(1 + int(gate["max_rounds"])):
        steps = int(cfg["steps"]) if r == 0 else int(gate["extra_steps"])
        folder = Path(ckpt_dir) / f"round-{r}"
        model_r, probe_file = folder / "model", folder / "listing_probe.json"
        if not probe_file.is_file():
            # run_sft moves its finished output folder into place whole: a folder there is a finished round
            if not model_r.is_dir():
                job = TrainJob(
                    start, rows, model_r, folder / "checkpoints", train_cfg(steps, lr, batch), seed
                )
                run_sft(job, use_lora=False)
            atomic_write_json(probe_file, listing_probe(model_r, items))
        records.append({"round": r, "steps": steps} | read_json(probe_file))
        passed = records[-1]["listing_exact"] >= float(gate["min_listing"])
        print(
            f"[warm_start] round {r} ({steps} steps): lists {records[-1]['listing_exact']:.1%} of "
            f"{len(items)} fresh scenes (bar {float(gate['min_listing']):.0%})"
            + ("" if passed or r == int(gate["max_rounds"]) else f"; {gate['extra_steps']} more steps"),
            flush=True,
        )
        start = model_r
        if passed:
            break
    else:
        print(
            f"[warm_start] the listing stayed below the bar after {len(records)} rounds: the last round's model "
            "is the base model (models.<name>.pretrain.gate)",
            flush=True,
        )
    copy_dir(start, out_dir)  # the round's own folder stays, so a rerun finds every round done
    return records
