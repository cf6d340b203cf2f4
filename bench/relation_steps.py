"""Which reasoning step a relation model gets wrong (grpo_vqa.evaluation.relation_steps), per responses file.

    python bench/relation_steps.py results/eval/vsr_qwen/sft/generated_responses_test.json
    python bench/relation_steps.py results/eval/vsr_*/{sft,grpo}/generated_responses_test.json

Prints one JSON line per file: the share of responses with the claim's header, a right listing, and a verdict
that follows the model's own listing (the comparison).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from grpo_vqa.evaluation.relation_steps import relation_steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+", help="generated_responses_<split>.json files of relation runs")
    for name in ap.parse_args().files:
        print(json.dumps({"file": name} | relation_steps(json.loads(Path(name).read_text()))))


if __name__ == "__main__":
    main()
