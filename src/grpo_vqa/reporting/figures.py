"""Figures (matplotlib, Agg): GRPO training curves and accuracy breakdowns."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

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
    fig.savefig(path)
    plt.close(fig)


def grpo_curves(histories: dict[str, list[dict]], path: str | Path) -> None:
    """Per-step mean reward, each reward component, and KL (when logged) for every GRPO run."""
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
        for name, hist in histories.items():
            steps = [h.get("step", i + 1) for i, h in enumerate(hist)]
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
        for ax in axes:
            if ax.lines:
                ax.legend(fontsize=7)
        _save(fig, path)


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
