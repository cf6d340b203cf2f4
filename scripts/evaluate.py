"""Batched generation on val/test (+ blank-image probe, + extra test sets); writes generated responses and
scores.json. Called by rule evaluate."""

from grpo_vqa import cli
from grpo_vqa.evaluation.run import evaluate_model
from grpo_vqa.models.refs import resolve_model
from grpo_vqa.provenance import write_sidecar
from grpo_vqa.training.common import setup_runtime


def main() -> None:
    p = cli.parser(__doc__)
    p.add_argument("--model", required=True, help="model ref JSON or model directory")
    p.add_argument("--data", required=True, help="dataset directory")
    p.add_argument("--extra", nargs="*", default=[], help="NAME=DIR extra datasets (their test split)")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--cache-dir", required=True, help="per-split JSONL caches (kept across retries)")
    args = p.parse_args()
    cfg = cli.load_cfg(args)
    setup_runtime(cfg["seed"], args.threads)
    extra = dict(x.split("=", 1) for x in args.extra)
    scores = evaluate_model(resolve_model(args.model), args.data, args.out_dir, args.cache_dir, cfg, extra)
    write_sidecar(f"{args.out_dir}/scores.json", cfg, [args.model, args.data, *extra.values()])
    for name, s in scores["splits"].items():
        print(f"[eval] {name}: accuracy {s['accuracy']:.2f} format {s['format']:.2f} (n={s['n']})")


if __name__ == "__main__":
    cli.run(main)
