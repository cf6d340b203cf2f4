"""Soft-prompt tuning of the frozen base model (PEFT prompt tuning); resumes from --ckpt. Called by rule
prompt_tuning."""

from grpo_vqa import cli
from grpo_vqa.io import read_json
from grpo_vqa.training.prompt_tuning import TARGETS, prompt_tuning_rows, run_prompt_tuning


def arguments(p) -> None:
    p.add_argument("--target", required=True, choices=TARGETS, help="what the prompt is trained to produce")
    p.add_argument(
        "--responses", nargs="*", default=[], help="generated responses (completion: grpo_responses)"
    )


def rows(train_split, cfg, args):
    responses = [r for path in args.responses for r in read_json(path)]
    made = prompt_tuning_rows(train_split, cfg["system_prompt"], args.target, cfg["prompt_tuning"], responses)
    return made, list(args.responses), {"target": args.target}


def main() -> None:
    cli.run_training_script(__doc__, "prompt_tuning", rows, run_prompt_tuning, add_arguments=arguments)


if __name__ == "__main__":
    cli.run(main)
