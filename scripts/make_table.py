"""Render one paper table (Markdown + CSV + figures + provenance) from upstream files. Called by rule table."""

from grpo_vqa import cli
from grpo_vqa.reporting.paper import build_table


def main() -> None:
    p = cli.parser(__doc__)
    p.add_argument("--name", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--fig-dir", default="results/figures")
    args = p.parse_args()
    config = cli.load_cfg(args)
    outputs = build_table(args.name, config, args.out, args.fig_dir)
    print("\n".join(str(o) for o in outputs))


if __name__ == "__main__":
    cli.run(main)
