"""SFT with LoRA on <think>/<answer> targets; resumes from --ckpt. Called by rule sft."""

from grpo_vqa import cli
from grpo_vqa.training.sft import run_sft, sft_rows


def rows(train_split, cfg, _args):
    return sft_rows(train_split, cfg["system_prompt"], target=cfg["sft"]["target"]), [], {}


def main() -> None:
    cli.run_training_script(__doc__, "sft", rows, run_sft)


if __name__ == "__main__":
    cli.run(main)
