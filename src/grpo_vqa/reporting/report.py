"""Helpers for Snakemake's native report (workflow/rules/report.smk): categories and provenance labels."""

from __future__ import annotations

import json
from pathlib import Path

from ..provenance import sidecar_path

#: Report category (experiment family) of each paper table; unknown tables are listed under their own name.
TABLE_FAMILIES = {
    "vsr_main": "VSR spatial relations",
    "bias": "Text-bias mitigation",
    "sim2real": "Sim-to-real transfer",
    "shape_counting": "Shape counting (tutorial)",
    "math_r1": "Multimodal math (TRL recipe)",
    "grounding": "Grounded reasoning (DrivingVQA-style)",
    "prompt_tuning": "Soft-prompt tuning",
}
JUDGE_FAMILY = "LLM-as-judge alignment"
#: Packages whose versions label every report item.
LABEL_PACKAGES = ("torch", "transformers", "trl", "peft")


def table_family(wildcards) -> str:
    return TABLE_FAMILIES.get(wildcards.table, wildcards.table)


def report_targets(config: dict) -> list[str]:
    """Report-only outputs (needed by no table): the judge verdict figure when the judge runs."""
    return ["results/figures/alignment_verdicts.png"] if config["judge"]["runs"] else []


def sidecar_labels(path: str | Path) -> dict[str, str]:
    """Report labels for ``path``: its name, then config hash, git commit, package versions and creation time
    from its ``*.provenance.json`` sidecar (``"no sidecar"`` when there is none)."""
    path = Path(path)
    side = sidecar_path(path)
    if not side.exists():
        return {"item": path.name, "config": "no sidecar", "commit": "-", "packages": "-", "created": "-"}
    rec = json.loads(side.read_text())
    git = rec.get("git") or {}
    commit = (git.get("commit") or "none")[:10] + (" (dirty)" if git.get("dirty") else "")
    pkgs = rec.get("packages") or {}
    versions = ", ".join(f"{p} {pkgs[p]}" for p in LABEL_PACKAGES if pkgs.get(p))
    return {
        "item": path.name,
        "config": str(rec.get("config_sha256", ""))[:12],
        "commit": commit,
        "packages": versions or "-",
        "created": str(rec.get("created_utc", "-")),
    }


def provenance_labels(key, pattern: str | None = None):
    """``report(labels=...)`` for the rule output ``key`` (name or index), or for the files matching
    ``pattern`` (e.g. ``"{name}.png"``) inside that output directory."""

    def labels(wildcards, output):
        path = Path(output[key])
        if pattern is not None:
            path = path / pattern.format(**dict(wildcards.items()))
        return sidecar_labels(path)

    return labels


def register_embedded_figure(name: str = "embedded-figure") -> None:
    """Register the reST directive ``.. embedded-figure:: <path>``: a figure whose image is inlined as a data
    URI, so the report stays one self-contained file. (Snakemake's own ``embeddedfigure`` keeps the file path:
    its mixin comes after ``Figure`` in the bases, so its ``run`` is never called.)"""
    from docutils.parsers.rst import directives
    from docutils.parsers.rst.directives.images import Figure
    from snakemake.report.common import data_uri_from_file

    class EmbeddedFigure(Figure):
        def run(self):
            self.arguments[0] = data_uri_from_file(self.arguments[0])
            return super().run()

    directives.register_directive(name, EmbeddedFigure)
