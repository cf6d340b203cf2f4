#!/usr/bin/env python
"""Alignment table (markdown + CSV) and judge-vs-human confusion figure from judge JSONL files.

With ``--label-template OUT`` it instead writes a blind, seeded sample of responses to label by hand.
"""

from __future__ import annotations

import argparse
import json
import sys

from grpo_vqa.io import atomic_write_text, read_json
from grpo_vqa.judge.stats import (
    agreement,
    alignment_table,
    label_template,
    load_calibration,
    load_human_labels,
    load_judged,
    no_response_warning,
    plot_confusion,
    render_markdown,
)
from grpo_vqa.provenance import write_sidecar


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--judged", nargs="+", help="judge JSONL files")
    ap.add_argument("--human-labels", default=None, help="CSV with response_sha256, human_aligns[, id, ...]")
    ap.add_argument(
        "--calibration", default=None, help="calibration set: JSONL of responses with human_aligns"
    )
    ap.add_argument("--calibration-judged", default=None, help="the judge's JSONL of the calibration set")
    ap.add_argument("--out-md")
    ap.add_argument("--out-csv")
    ap.add_argument("--out-fig")
    ap.add_argument("--config-json", default="{}", help="the `judge` config section as JSON")
    lt = ap.add_argument_group("label template")
    lt.add_argument("--label-template", default=None, help="write a CSV of responses to label here")
    lt.add_argument("--responses", help="generated_responses_<split>.json to sample from")
    lt.add_argument("--run")
    lt.add_argument("--stage")
    lt.add_argument("--split")
    lt.add_argument("--n", type=int, default=30)
    lt.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)

    if a.label_template:
        if not (a.responses and a.run and a.stage and a.split):
            ap.error("--label-template needs --responses, --run, --stage and --split")
        df = label_template(read_json(a.responses), a.n, a.seed, a.run, a.stage, a.split)
        atomic_write_text(a.label_template, df.to_csv(index=False))
        print(f"wrote {len(df)} rows to label to {a.label_template}")
        return 0
    if not (a.judged and a.out_md and a.out_csv and a.out_fig):
        ap.error("--judged, --out-md, --out-csv and --out-fig are required")

    cfg = json.loads(a.config_json)
    judged = load_judged(a.judged)
    table = alignment_table(judged, cfg["splits"], cfg["stages"])
    if bool(a.calibration) != bool(a.calibration_judged):
        ap.error("--calibration and --calibration-judged go together")
    agree = agreement(judged, load_human_labels(a.human_labels)) if a.human_labels else None
    calib = None
    if a.calibration:
        calib = agreement(load_judged([a.calibration_judged]), load_calibration(a.calibration)[1])
    for result, source in ((agree, a.human_labels), (calib, a.calibration)):
        warning = no_response_warning(result, source) if result else None
        if warning:
            print(warning, file=sys.stderr)
    models = sorted({f"{m} ({p})" for m, p in zip(judged["model"], judged["prompt_version"], strict=True)})
    desc = ", ".join(models) or "none"
    sources = {"calibration": a.calibration, "labels": a.human_labels}
    atomic_write_text(a.out_csv, table.to_csv(index=False))
    atomic_write_text(a.out_md, render_markdown(table, agree, desc, calib, sources))
    if calib is not None:  # the figure shows what means the same on every machine
        plot_confusion(calib, a.out_fig, f"judge vs human, calibration set: {desc}")
    else:
        plot_confusion(agree, a.out_fig, f"judge vs human: {desc}")
    inputs = [*a.judged, *([a.human_labels] if a.human_labels else [])]
    inputs += [a.calibration, a.calibration_judged] if a.calibration else []
    for out in (a.out_md, a.out_csv, a.out_fig):
        write_sidecar(out, {"judge": cfg}, inputs)
    print(json.dumps({"rows": len(table), "agreement": agree, "calibration": calib}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
