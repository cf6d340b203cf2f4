"""SFT with LoRA on <think>/<answer> targets; resumes from --ckpt. Called by rule sft."""

from grpo_vqa import cli
from grpo_vqa.data.build import load_split
from grpo_vqa.models.refs import resolve_model
from grpo_vqa.provenance import write_sidecar
from grpo_vqa.training.common import is_main_process, run_checkpoint_dir, setup_runtime
from grpo_vqa.training.sft import run_sft, sft_rows


def main() -> None:
    args = cli.training_parser(__doc__).parse_args()
    cfg = cli.load_cfg(args)
    setup_runtime(cfg["seed"], args.threads)
    model = resolve_model(args.model)
    rows = sft_rows(
        load_split(args.data, "train"),
        cfg["system_prompt"],
        target=cfg["sft"]["target"],
    )
    result = run_sft(
        model,
        rows,
        args.out,
        # logging targets do not change the training, so they do not change the checkpoint key
        run_checkpoint_dir(args.ckpt, {k: v for k, v in cfg.items() if k != "logging"}, model, args.data),
        cfg["sft"],
        cfg["seed"],
        use_lora=True,
        log_dir=args.log_dir,
        dtype=cfg["dtype"],
        logging_cfg=cfg["logging"],
    )
    if is_main_process():  # the other ranks of a data-parallel run write nothing
        write_sidecar(f"{args.out}/train_history.json", cfg, [args.model, args.data])
        print(f"[sft] done: {len(result['history'])} log entries, resumed from {result['resumed_from']}")


if __name__ == "__main__":
    cli.run(main)
