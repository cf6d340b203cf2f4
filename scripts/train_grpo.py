"""GRPO with LoRA from a (merged) model; rewards by name; resumes from --ckpt. Called by rule grpo."""

from grpo_vqa import cli
from grpo_vqa.data.build import load_split
from grpo_vqa.models.refs import resolve_model
from grpo_vqa.provenance import write_sidecar
from grpo_vqa.training.common import is_main_process, run_checkpoint_dir, setup_runtime
from grpo_vqa.training.grpo import grpo_rows, run_grpo


def main() -> None:
    args = cli.training_parser(__doc__).parse_args()
    cfg = cli.load_cfg(args)
    setup_runtime(cfg["seed"], args.threads)
    model = resolve_model(args.model)
    rows = grpo_rows(load_split(args.data, "train"), cfg["system_prompt"])
    result = run_grpo(
        model,
        rows,
        args.out,
        # logging targets do not change the training, so they do not change the checkpoint key
        run_checkpoint_dir(args.ckpt, {k: v for k, v in cfg.items() if k != "logging"}, model, args.data),
        cfg["grpo"],
        cfg["seed"],
        log_dir=args.log_dir,
        dtype=cfg["dtype"],
        logging_cfg=cfg["logging"],
    )
    if is_main_process():  # the other ranks of a data-parallel run write nothing
        write_sidecar(f"{args.out}/train_history.json", cfg, [args.model, args.data])
        print(f"[grpo] done: {len(result['history'])} steps logged, resumed from {result['resumed_from']}")


if __name__ == "__main__":
    cli.run(main)
