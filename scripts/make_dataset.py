"""Build one task dataset (all splits) into a directory. Called by rule make_dataset."""

from grpo_vqa import cli
from grpo_vqa.data.build import build_dataset
from grpo_vqa.provenance import write_sidecar


def main() -> None:
    p = cli.parser(__doc__)
    p.add_argument("--name", required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    cfg = cli.load_cfg(args)
    manifest = build_dataset(args.name, cfg, args.out, args.seed)
    write_sidecar(f"{args.out}/manifest.json", {"dataset": cfg, "seed": args.seed})
    print({k: v["n"] for k, v in manifest["splits"].items()})


if __name__ == "__main__":
    cli.run(main)
