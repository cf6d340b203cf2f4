"""Make a model's "base" checkpoint: a tiny real-architecture model (built + warm-started; rule build_model)
or a pretrained model (rule fetch_model, on the submit host): a local directory is referenced as it is, a hub
id is downloaded into ``--model-dir`` so that the compute jobs read local files only. Writes ``--ref`` (JSON
with the path later stages load)."""

import shutil
from pathlib import Path

from grpo_vqa import cli
from grpo_vqa.config import check_model_path
from grpo_vqa.io import atomic_write_json, copy_dir
from grpo_vqa.provenance import write_sidecar


def local_copy(path: str, model_dir: str) -> str:
    """``path`` if it is a local model directory, else the hub model downloaded (resumably) into ``model_dir``."""
    if Path(path).is_dir():
        return path
    from huggingface_hub import snapshot_download

    print(f"[build_model] downloading {path} into {model_dir}", flush=True)
    return snapshot_download(repo_id=path, local_dir=model_dir)


def main() -> None:
    p = cli.parser(__doc__)
    p.add_argument("--name", required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--ref", required=True, help="output JSON naming the base model path")
    p.add_argument("--model-dir", required=True, help="where a tiny model is saved")
    p.add_argument("--ckpt", required=True, help="checkpoint folder for the warm start (kept across retries)")
    args = p.parse_args()
    cfg = cli.load_cfg(args)
    rounds = None  # a tiny model's warm-start rounds (grpo_vqa.training.warm_start.warm_start)
    if cfg["source"] == "pretrained":
        check_model_path(f"models.{args.name}.path", cfg["path"])
        path = local_copy(cfg["path"], args.model_dir)
    else:
        from grpo_vqa.data.pretrain import tokenizer_corpus
        from grpo_vqa.models.tiny import build_tiny_model
        from grpo_vqa.training.common import setup_runtime
        from grpo_vqa.training.warm_start import warm_start

        setup_runtime(args.seed, args.threads)
        from grpo_vqa.training.common import run_checkpoint_dir

        ckpt = run_checkpoint_dir(args.ckpt, {"model": cfg, "seed": args.seed})
        init_dir = ckpt / "init"
        if not (init_dir / "config.json").exists():
            if init_dir.exists():
                shutil.rmtree(init_dir)
            corpus = tokenizer_corpus(args.seed, cfg["system_prompt"])
            build_tiny_model(cfg["arch"], cfg["tiny"], corpus, init_dir, args.seed)
        pre = cfg["pretrain"]  # a tiny model's tiny: and pretrain: are filled with the schema's defaults
        if int(pre["steps"]) > 0:
            rounds = warm_start(
                init_dir,
                args.model_dir,
                ckpt / "warm_start",
                pre,
                args.seed,
                cfg["tiny"]["image_size"],
            )
        else:
            copy_dir(init_dir, args.model_dir)
        path = args.model_dir
    ref = {"name": args.name, "path": path, "source": cfg["source"], "arch": cfg["arch"]}
    if cfg["source"] == "tiny":
        # its rounds: steps, and the listing probe's result when gated (None: no warm start)
        ref["warm_start"] = rounds
    atomic_write_json(args.ref, ref)
    write_sidecar(args.ref, {"model": cfg, "seed": args.seed})


if __name__ == "__main__":
    cli.run(main)
