"""Test launch script for tests/test_distributed.py: the real SFT then GRPO training scripts in one process
(one rank of ``accelerate launch``), with a GRPO reward that records which dataset rows each rank scored.

    dist_probe.py <ids.jsonl prefix> -- <train_sft.py args> [-- <train_grpo.py args>]

The recorder reward ``record_ids`` (weight 0 in the test config) appends ``{"rank", "step", "ids"}`` lines to
``<prefix>.rank<R>.jsonl``; it needs the rows' ``id`` column, added to the columns GRPO keeps.
"""

from __future__ import annotations

import json
import os
import runpy
import sys
from pathlib import Path

from grpo_vqa import rewards
from grpo_vqa.training import grpo

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def main() -> None:
    prefix, rest = sys.argv[1], sys.argv[2:]
    cut = [i for i, a in enumerate(rest) if a == "--"] + [len(rest)]
    sft_args, grpo_args = rest[cut[0] + 1 : cut[1]], rest[cut[1] + 1 :]
    rank = int(os.environ.get("RANK", "0"))

    def record_ids(completions, id, trainer_state, **kwargs):  # noqa: A002 (the dataset column's name)
        with open(f"{prefix}.rank{rank}.jsonl", "a") as fh:
            fh.write(json.dumps({"rank": rank, "step": trainer_state.global_step, "ids": list(id)}) + "\n")
        return [0.0] * len(completions)

    rewards.REWARDS["record_ids"] = record_ids
    grpo.REWARD_COLUMNS = (*grpo.REWARD_COLUMNS, "id")
    for script, args in (("train_sft.py", sft_args), ("train_grpo.py", grpo_args)):
        if not args:  # SFT only
            continue
        sys.argv = [str(SCRIPTS / script), *args]
        runpy.run_path(str(SCRIPTS / script), run_name="__main__")


if __name__ == "__main__":
    main()
