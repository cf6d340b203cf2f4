"""GRPO with LoRA from a (merged) model; rewards by name; resumes from --ckpt. Called by rule grpo."""

from grpo_vqa import cli
from grpo_vqa.training.grpo import grpo_rows, run_grpo


def rows(train_split, cfg, _args):
    return grpo_rows(train_split, cfg["system_prompt"]), [], {}


def main() -> None:
    cli.run_training_script(__doc__, "grpo", rows, run_grpo)


if __name__ == "__main__":
    cli.run(main)
