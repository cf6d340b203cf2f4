"""Merge a LoRA adapter into its base model and save a full model directory. Called by rule merge_lora."""

from grpo_vqa import cli
from grpo_vqa.models.merge import merge_adapter
from grpo_vqa.provenance import write_sidecar
from grpo_vqa.training.common import setup_runtime


def main() -> None:
    p = cli.parser(__doc__)
    p.add_argument("--adapter", required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    cfg = cli.load_cfg(args)
    setup_runtime(cfg["seed"], args.threads)
    merge_adapter(args.adapter, args.out, dtype=cfg["dtype"])
    write_sidecar(f"{args.out}/config.json", cfg, [args.adapter])


if __name__ == "__main__":
    cli.run(main)
