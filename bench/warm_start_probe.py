"""How well a tiny model's warm start sees: build + warm-start it, then list the shapes of fresh scenes.

    python bench/warm_start_probe.py smolvlm --seed 7                                  # config/config.yaml
    python bench/warm_start_probe.py qwen --seed 7 --set pretrain.steps=2500 --set tiny.rope_theta=100
    python bench/warm_start_probe.py qwen --model results/models/qwen/base_model       # probe a built model

The probe asks "Name the shapes from <direction>." on ``--items`` relation scenes drawn with a seed no warm
start uses, greedily, and prints the share of exact listings overall and per direction (JSON on stdout's
last line). A listing right on about half of the scenes of a direction is at chance on the objects' order.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
PROBE_SEED = 999  # the probe's scenes: a seed of their own, so no warm start trained on them


def probe(model_dir: str | Path, n_items: int, threads: int = 1) -> dict:
    """Exact-listing accuracy of a model on ``n_items`` fresh relation scenes, overall and per direction."""
    import torch

    from grpo_vqa.data.pretrain import default_warm_start, make_pretrain_items, scene_mix
    from grpo_vqa.evaluation.generate import generate_batch, strip_special
    from grpo_vqa.models.loading import load_model, load_processor

    torch.set_num_threads(threads)
    model, processor = load_model(str(model_dir)), load_processor(str(model_dir))
    pretrain, size = default_warm_start()  # the schema's scene mix, as relation listings on plain backgrounds
    only_listings = {"relation_share": 1.0, "proximity_share": 0.0, "textured_share": 0.0, "layout": "apart"}
    pool = make_pretrain_items(4 * n_items, PROBE_SEED, size=size, **scene_mix(pretrain) | only_listings)
    items = [it for it in pool if it["problem"].startswith("Name")][:n_items]
    right, total = Counter(), Counter()
    for start in range(0, len(items), 32):
        batch = items[start : start + 32]
        outs = generate_batch(
            model, processor, [it["image"] for it in batch], [it["problem"] for it in batch], None, 24
        )
        for it, out in zip(batch, outs, strict=True):
            direction = it["text"].split(":")[0]
            total[direction] += 1
            right[direction] += strip_special(out, processor).strip() == it["text"]
    return {
        "listing_exact": sum(right.values()) / len(items),
        "by_direction": {d: right[d] / total[d] for d in sorted(total)},
        "items": len(items),
    }


def apply_sets(cfg: dict, sets: list[str]) -> dict:
    """``--set pretrain.lr=1.5e-3`` style overrides (values parsed as YAML) on a model's config section."""
    for item in sets:
        key, _, value = item.partition("=")
        node = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = yaml.safe_load(value)
    return cfg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name", help="a model of the config (qwen, smolvlm)")
    ap.add_argument("--config", default=str(REPO / "config" / "config.yaml"))
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--set", action="append", default=[], help="override, e.g. pretrain.steps=2500")
    ap.add_argument("--items", type=int, default=160)
    ap.add_argument("--model", help="probe this built model instead of building one")
    ap.add_argument("--keep", help="keep the built model in this folder")
    args = ap.parse_args()

    cfg = apply_sets(yaml.safe_load(Path(args.config).read_text())["models"][args.name], args.set)
    from grpo_vqa.config import entry_defaults

    cfg = entry_defaults("models", cfg)  # the schema's defaults, as validate_config fills them
    record = {"model": args.name, "seed": args.seed, "sets": args.set}
    if args.model:
        record |= probe(args.model, args.items)
    else:
        from grpo_vqa.data.pretrain import tokenizer_corpus
        from grpo_vqa.models.tiny import build_tiny_model
        from grpo_vqa.training.common import setup_runtime
        from grpo_vqa.training.warm_start import warm_start

        setup_runtime(args.seed, 1)
        root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="warm_start_probe-"))
        t0 = time.monotonic()
        build_tiny_model(
            cfg["arch"], cfg["tiny"], tokenizer_corpus(args.seed, None), root / "init", args.seed
        )
        size = cfg["tiny"]["image_size"]
        warm_start(root / "init", root / "model", root / "checkpoints", cfg["pretrain"], args.seed, size)
        record["warm_start_s"] = round(time.monotonic() - t0, 1)
        record |= probe(root / "model", args.items)
        if not args.keep:
            shutil.rmtree(root)
    print(json.dumps(record))


if __name__ == "__main__":
    main()
