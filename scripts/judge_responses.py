#!/usr/bin/env python
"""Judge generated responses (reasoning vs answer alignment) into one JSONL record per response."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from grpo_vqa.judge.backends import RedactingFilter, Redactor
from grpo_vqa.judge.prompts import resolve_prompt_path
from grpo_vqa.judge.runner import judge_file
from grpo_vqa.provenance import write_sidecar


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--responses", required=True, help="generated_responses_<split>.json")
    ap.add_argument("--output", required=True, help="output JSONL")
    ap.add_argument("--cache-dir", required=True, help="resumable verdict cache folder")
    ap.add_argument("--config-json", required=True, help="the `judge` config section as JSON (every key)")
    ap.add_argument("--prompt", default=None, help="prompt name or version (default: config judge.prompt)")
    ap.add_argument("--prompt-dir", default=None, help="folder of <name>.v<N>.txt prompts")
    ap.add_argument("--run", default=None)
    ap.add_argument("--stage", default=None)
    ap.add_argument("--split", default=None)
    a = ap.parse_args(argv)

    redact = Redactor([os.environ.get("OPENAI_API_KEY")])
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactingFilter(redact))
    logging.basicConfig(
        level=logging.INFO, handlers=[handler], format="%(asctime)s %(levelname)s %(message)s"
    )
    for noisy in ("httpx", "httpx2", "httpcore", "openai"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    cfg = json.loads(a.config_json)
    try:
        summary = judge_file(
            a.responses,
            a.output,
            a.cache_dir,
            cfg,
            run=a.run,
            stage=a.stage,
            split=a.split,
            prompt_name=a.prompt,
            prompt_dir=a.prompt_dir,
        )
    except Exception as exc:  # noqa: BLE001 - report without a traceback that could carry the key
        print(redact(f"judge failed: {type(exc).__name__}: {exc}"), file=sys.stderr)
        return 1
    print(json.dumps(summary), flush=True)
    frac = summary["failed"] / summary["items"] if summary["items"] else 0.0
    if frac > float(cfg["max_failed_fraction"]):
        print(
            f"{summary['failed']} of {summary['items']} items failed (> max_failed_fraction); "
            "rerun to judge only the missing ones",
            file=sys.stderr,
        )
        return 2
    prompt_path = resolve_prompt_path(a.prompt or cfg["prompt"], a.prompt_dir)
    write_sidecar(a.output, {"judge": cfg}, [a.responses, prompt_path])
    return 0


if __name__ == "__main__":
    sys.exit(main())
