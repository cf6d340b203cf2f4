"""A figure panel with nothing to draw says why instead of showing empty axes."""

from __future__ import annotations

import copy
from pathlib import Path

import matplotlib.pyplot as plt
import yaml

from grpo_vqa.reporting.figures import grpo_betas, grpo_curves, grpo_curves_figure

REPO = Path(__file__).resolve().parents[1]
CONFIG = yaml.safe_load((REPO / "config/config.yaml").read_text())


def history(kl: bool) -> list[dict]:
    """TRL's GRPO log entries: KL only when beta > 0; the last entry is the run summary."""
    steps = [
        {
            "step": i + 1,
            "reward": 1.0 + 0.1 * i,
            "rewards/accuracy/mean": 0.5,
            **({"kl": 0.01 * i} if kl else {}),
        }
        for i in range(4)
    ]
    return [*steps, {"step": 4, "train_runtime": 12.0}]


def panel_texts(ax) -> list[str]:
    return [t.get_text() for t in ax.texts]


def test_beta_zero_kl_panel_says_there_is_no_kl_term():
    fig = grpo_curves_figure({"a": history(kl=False), "b": history(kl=False)}, {"a": 0.0, "b": 0.0})
    reward, comps, kl = fig.axes
    assert reward.lines and comps.lines and reward.axison and not panel_texts(reward)
    assert not kl.lines and not kl.axison and panel_texts(kl) == ["beta = 0: no KL term"]
    plt.close(fig)


def test_kl_is_drawn_when_logged_and_missing_kl_with_beta_is_not_blamed_on_beta():
    fig = grpo_curves_figure({"a": history(kl=True), "b": history(kl=False)}, {"a": 0.04, "b": 0.0})
    assert len(fig.axes[2].lines) == 1 and fig.axes[2].axison and not panel_texts(fig.axes[2])
    plt.close(fig)
    fig = grpo_curves_figure({"a": history(kl=False)}, {"a": 0.04})
    assert panel_texts(fig.axes[2]) == ["no KL logged"]
    plt.close(fig)
    fig = grpo_curves_figure({"a": [{"step": 1, "train_runtime": 3.0}]}, {"a": 0.0})
    assert [panel_texts(ax) for ax in fig.axes] == [
        ["no GRPO steps logged"],
        ["no reward components logged"],
        ["beta = 0: no KL term"],
    ]
    plt.close(fig)


def test_betas_come_from_the_config_with_experiment_overrides(tmp_path):
    config = copy.deepcopy(CONFIG)
    config["experiments"]["vsr_smolvlm"]["grpo"] = {"beta": 0.04}
    assert grpo_betas(config, ["vsr_qwen", "vsr_smolvlm"]) == {
        "vsr_qwen": CONFIG["grpo"]["beta"],
        "vsr_smolvlm": 0.04,
    }
    out = tmp_path / "f.png"
    grpo_curves({"vsr_qwen": history(kl=False)}, out, grpo_betas(config, ["vsr_qwen"]))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
