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
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def probe(model_dir: str | Path, pretrain: dict, size: int, n_items: int, seed: int) -> dict:
    """Exact-listing accuracy of a model on ``n_items`` fresh relation scenes, overall and per direction (the
    warm start's gate: grpo_vqa.training.warm_start.listing_probe)."""
    from grpo_vqa.training.warm_start import listing_probe, probe_items

    return listing_probe(model_dir, probe_items(pretrain, size, n_items, seed))


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
        record |= probe(args.model, cfg["pretrain"], cfg["tiny"]["image_size"], args.items, args.seed)
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
        rounds = warm_start(
            root / "init", root / "model", root / "checkpoints", cfg["pretrain"], args.seed, size
        )
        record["warm_start_s"] = round(time.monotonic() - t0, 1)
        record["rounds"] = rounds
        record |= probe(root / "model", cfg["pretrain"], size, args.items, args.seed)
        if not args.keep:
            shutil.rmtree(root)
    print(json.dumps(record))


if __name__ == "__main__":
    main()
