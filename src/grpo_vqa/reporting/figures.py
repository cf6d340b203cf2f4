"""Figures (matplotlib, Agg): GRPO training curves and accuracy breakdowns."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..config import stage_config  # noqa: E402
from ..parsing import reasoning_length  # noqa: E402
from ..provenance import write_sidecar  # noqa: E402

STYLE = {
    "figure.dpi": 110,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
}


def _save(fig, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, bbox_inches="tight")  # keeps legends placed outside the axes
    plt.close(fig)


def no_data(ax, why: str) -> None:
    """Mark an empty panel: no axes, ticks or grid, only why it is empty (a blank panel says nothing)."""
    ax.set_axis_off()
    ax.text(0.5, 0.5, why, ha="center", va="center", transform=ax.transAxes, fontsize=9, color="#424242")


def grpo_betas(config: dict, experiments) -> dict[str, float]:
    """The GRPO KL coefficient (``grpo.beta``, experiment overrides included) of each experiment."""
    return {e: float(stage_config(config, e, "grpo")["beta"]) for e in experiments}


def grpo_curves_figure(histories: dict[str, list[dict]], betas: dict[str, float] | None = None):
    """The figure of :func:`grpo_curves` (returned, not saved). A panel with nothing logged says why instead of
    showing empty axes: no KL is logged when ``beta`` is 0 (``betas`` by run; TRL then has no KL term)."""
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
        for name, hist in histories.items():
            steps = [h.get("step", i + 1) for i, h in enumerate(hist)]
            if any("reward" in h for h in hist):
                axes[0].plot(steps, [h.get("reward") for h in hist], label=name)
            for key in sorted(
                {k for h in hist for k in h if k.startswith("rewards/") and k.endswith("/mean")}
            ):
                comp = key.split("/")[1]
                axes[1].plot(steps, [h.get(key) for h in hist], label=f"{name}: {comp}")
            if any("kl" in h for h in hist):
                axes[2].plot(steps, [h.get("kl") for h in hist], label=name)
        axes[0].set(title="mean reward per step", xlabel="GRPO step", ylabel="reward")
        axes[1].set(title="reward components", xlabel="GRPO step", ylabel="mean")
        axes[2].set(title="KL to reference", xlabel="GRPO step", ylabel="KL")
        if betas and histories and all(not betas.get(name) for name in histories):
            kl_why = "beta = 0: no KL term"
        else:
            kl_why = "no KL logged"
        for ax, why in zip(
            axes, ("no GRPO steps logged", "no reward components logged", kl_why), strict=True
        ):
            if ax.lines:
                ax.legend(fontsize=7)
            else:
                no_data(ax, why)
    return fig


def grpo_curves(
    histories: dict[str, list[dict]], path: str | Path, betas: dict[str, float] | None = None
) -> None:
    """Per-step mean reward, each reward component, and KL (when logged) for every GRPO run; an empty panel
    says why (e.g. "beta = 0: no KL term")."""
    with plt.rc_context(STYLE):
        _save(grpo_curves_figure(histories, betas), path)


def grouped_bars(groups: dict[str, dict[str, float]], path: str | Path, title: str, ylabel: str) -> None:
    """Bars per category (x) for each series (legend); ``groups[series][category] = value``."""
    import numpy as np

    cats = sorted({c for g in groups.values() for c in g}, key=lambda c: (len(c), c))
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(max(5, 1.1 * len(cats) + 2), 3.6))
        width = 0.8 / max(1, len(groups))
        for k, (series, vals) in enumerate(groups.items()):
            xs = np.arange(len(cats)) + k * width
            ax.bar(xs, [vals.get(c, 0.0) for c in cats], width, label=series)
        ax.set_xticks(np.arange(len(cats)) + width * (len(groups) - 1) / 2, cats, rotation=20)
        ax.set(title=title, ylabel=ylabel, ylim=(0, 100))
        ax.legend(fontsize=7)
        _save(fig, path)


OURS_COLOR = "#1f77b4"
STUDY_COLOR = "#9e9e9e"
#: Judge verdict columns of ``alignment.csv`` (percent of judged responses) and their colours, stacked in order.
VERDICT_COLUMNS = {
    "aligned_pct": ("aligned", "#2ca02c"),
    "contradiction_pct": ("contradiction", "#d62728"),
    "missing_detail_pct": ("missing detail", "#ff7f0e"),
    "irrelevant_pct": ("irrelevant", "#9467bd"),
    "other_pct": ("other", "#8c564b"),
    "untyped_pct": ("misaligned, untyped", "#e377c2"),
    "unparseable_pct": ("judge reply unparseable", "#7f7f7f"),
}


def _bar_labels(ax, bars, fmt: str = "{:.1f}") -> None:
    for b in bars:
        h = b.get_height()
        if h == h:  # not nan
            ax.annotate(
                fmt.format(h), (b.get_x() + b.get_width() / 2, h), ha="center", va="bottom", fontsize=7
            )


def reasoning_length_bins(records: list[dict], n_bins: int = 6) -> list[dict]:
    """Bin responses by reasoning length (words inside ``<think>``) into at most ``n_bins`` bins of about equal
    size (integer edges from quantiles) and return ``{"lo", "hi", "n", "accuracy"}`` per non-empty bin."""
    import numpy as np

    if not records:
        return []
    lengths = np.array([reasoning_length(r["response"]) for r in records])
    correct = np.array([bool(r["correct"]) for r in records])
    edges = np.unique(np.round(np.quantile(lengths, np.linspace(0, 1, n_bins + 1))).astype(int))
    if len(edges) == 1:
        edges = np.array([edges[0], edges[0]])
    out = []
    for k, (lo, hi) in enumerate(zip(edges[:-1], edges[1:], strict=True)):
        last = k == len(edges) - 2
        mask = (lengths >= lo) & ((lengths <= hi) if last else (lengths < hi))
        if mask.any():
            top = int(hi) if last else int(hi) - 1
            out.append(
                {
                    "lo": int(lo),
                    "hi": max(int(lo), top),
                    "n": int(mask.sum()),
                    "accuracy": 100.0 * correct[mask].mean(),
                }
            )
    return out


def reasoning_length_accuracy(bins_by_run: dict[str, list[dict]], path: str | Path) -> None:
    """Accuracy per reasoning-length bin (line, left axis) with the number of responses per bin (bars, right
    axis), one panel per run; the tutorial expects an inverted U."""
    n = max(1, len(bins_by_run))
    cols = min(n, 2)
    rows = -(-n // cols)
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(rows, cols, figsize=(5.6 * cols, 3.4 * rows), squeeze=False)
        for ax in axes.flat[n:]:
            ax.axis("off")
        for ax, (name, bins) in zip(axes.flat, bins_by_run.items(), strict=False):
            labels = [f"{b['lo']}" if b["lo"] == b["hi"] else f"{b['lo']}–{b['hi']}" for b in bins]
            xs = range(len(bins))
            counts = ax.twinx()
            counts.bar(xs, [b["n"] for b in bins], color=STUDY_COLOR, alpha=0.35, width=0.6)
            counts.set_ylabel("responses", color="#616161")
            counts.grid(False)
            ax.set_zorder(counts.get_zorder() + 1)
            ax.patch.set_visible(False)
            ax.plot(xs, [b["accuracy"] for b in bins], marker="o", color=OURS_COLOR)
            ax.set_xticks(list(xs), labels, rotation=20)
            ax.set(title=name, xlabel="reasoning length (words)", ylabel="accuracy (%)", ylim=(0, 100))
            if not bins:
                ax.text(0.5, 0.5, "no responses", ha="center", va="center", transform=ax.transAxes)
        fig.suptitle("test accuracy by reasoning length", fontsize=10)
        _save(fig, path)


def reference_comparison(
    ours: dict[str, dict[str, float]], study: dict[str, dict[str, float]], path: str | Path
) -> None:
    """Our accuracy beside the study's reported value for each setting; one panel per experiment.

    ``ours[experiment][setting]`` and ``study[experiment][setting]`` (settings such as ``"SFT test"``); a
    setting the study did not report gets no grey bar.
    """
    import numpy as np

    n = max(1, len(ours))
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, n, figsize=(5.2 * n, 3.8), squeeze=False)
        for ax, (exp, vals) in zip(axes[0], ours.items(), strict=False):
            ref = study.get(exp, {})
            settings = list(vals)
            xs = np.arange(len(settings))
            _bar_labels(
                ax, ax.bar(xs - 0.2, [vals[s] for s in settings], 0.4, color=OURS_COLOR, label="ours")
            )
            _bar_labels(
                ax,
                ax.bar(
                    xs + 0.2,
                    [ref.get(s, float("nan")) for s in settings],
                    0.4,
                    color=STUDY_COLOR,
                    hatch="//",
                    label="study (reported)",
                ),
            )
            ax.axhline(50, color="black", lw=0.8, ls=":", label="chance")
            ax.set_xticks(xs, settings, rotation=20)
            ax.set(title=exp, ylabel="accuracy (%)", ylim=(0, 118))
            ax.legend(fontsize=7, loc="upper center", ncol=3, framealpha=0.9)
        fig.suptitle("accuracy: this run vs the study's reported numbers", fontsize=10)
        _save(fig, path)


def judge_verdicts(rows: list[dict], path: str | Path) -> None:
    """Horizontal stacked bars: share (%) of each judge verdict type per run/split/stage of ``alignment.csv``."""
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(9, 1.2 + 0.45 * max(1, len(rows))))
        labels = [f"{r['run']} · {r['split']} · {r['stage']} (n={int(r['n_judged'])})" for r in rows]
        left = [0.0] * len(rows)
        for col, (name, color) in VERDICT_COLUMNS.items():
            vals = [float(r.get(col) or 0.0) if r.get(col) == r.get(col) else 0.0 for r in rows]
            ax.barh(labels, vals, left=left, color=color, label=name)
            left = [a + b for a, b in zip(left, vals, strict=True)]
        ax.invert_yaxis()
        ax.set(xlim=(0, 100), xlabel="% of judged responses", title="LLM-as-judge verdicts by type")
        if not rows:
            ax.text(0.5, 0.5, "no judged responses", ha="center", va="center", transform=ax.transAxes)
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
        _save(fig, path)


def main(argv: list[str] | None = None) -> None:
    """``python -m grpo_vqa.reporting.figures judge-verdicts --csv alignment.csv --out fig.png`` (rule
    judge_verdicts_figure): the verdict figure and its provenance sidecar."""
    import argparse

    import pandas as pd

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("figure", choices=["judge-verdicts"])
    ap.add_argument("--csv", required=True, help="results/tables/alignment.csv")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    rows = pd.read_csv(a.csv).to_dict("records")
    judge_verdicts(rows, a.out)
    write_sidecar(a.out, {"figure": a.figure}, [a.csv])
    print(f"{a.out}: {len(rows)} rows")


if __name__ == "__main__":
    main()
