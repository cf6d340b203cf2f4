"""Soft-prompt tuning of the frozen base model (PEFT prompt tuning); resumes from --ckpt. Called by rule
prompt_tuning."""

from grpo_vqa import cli
from grpo_vqa.data.build import load_split
from grpo_vqa.io import read_json
from grpo_vqa.models.refs import resolve_model
from grpo_vqa.provenance import write_sidecar
from grpo_vqa.training.common import run_checkpoint_dir, setup_runtime
from grpo_vqa.training.prompt_tuning import TARGETS, prompt_tuning_rows, run_prompt_tuning


def main() -> None:
    p = cli.training_parser(__doc__)
    p.add_argument("--target", required=True, choices=TARGETS, help="what the prompt is trained to produce")
    p.add_argument(
        "--responses", nargs="*", default=[], help="generated responses (completion: grpo_responses)"
    )
    args = p.parse_args()
    cfg = cli.load_cfg(args)
    setup_runtime(cfg["seed"], args.threads)
    model = resolve_model(args.model)
    responses = [r for path in args.responses for r in read_json(path)]
    rows = prompt_tuning_rows(
        load_split(args.data, "train"), cfg["system_prompt"], args.target, cfg["prompt_tuning"], responses
    )
    key_cfg = {k: v for k, v in cfg.items() if k != "logging"} | {"target": args.target}
    result = run_prompt_tuning(
        model,
        rows,
        args.out,
        run_checkpoint_dir(args.ckpt, key_cfg, model, args.data, *args.responses),
        cfg["prompt_tuning"],
        cfg["seed"],
        log_dir=args.log_dir,
        dtype=cfg["dtype"],
        logging_cfg=cfg["logging"],
    )
    write_sidecar(
        f"{args.out}/train_history.json",
        cfg | {"target": args.target},
        [args.model, args.data, *args.responses],
    )
    print(
        f"[prompt_tuning] done: {len(result['history'])} log entries, resumed from {result['resumed_from']}"
    )


if __name__ == "__main__":
    cli.run(main)
