"""The run's report: figures, provenance labels, progress lines, and Snakemake's HTML report seen in Chromium.

The browser test runs the test-config DAG (one experiment; targets vsr_main.md, alignment.md and the judge
verdict figure, which only `all` and the report need) in a temporary directory, builds `snakemake --report report.html` with the default target
(`all`, as the README's command does), then uses headless Chromium three ways:

1. ``--screenshot`` of the report's landing page (the workflow description, which embeds every figure and every
   CSV table) — kept at ``<run dir>/report_screenshot.png`` for a human to look at;
2. ``--dump-dom`` after the report's JavaScript ran (``--virtual-time-budget``): the React app rendered, the
   landing page holds one ``<img>`` per report figure and one ``<table>`` per report table;
3. every ``<img>`` of that DOM copied into a small page whose script records ``complete && naturalWidth > 0``
   for each, dumped again: no figure of the rendered report is a broken image.

Chromium is Debian's ``chromium`` (``apt-get install -y chromium``). Without it the test is skipped, unless
``GRPO_VQA_REQUIRE_CHROMIUM=1`` (CI), where it fails. ``GRPO_VQA_REPORT_RUN_DIR`` reuses a directory where the
DAG already ran (the report and screenshots are written there).
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from grpo_vqa.progress import format_seconds, progress
from grpo_vqa.provenance import write_sidecar
from grpo_vqa.reporting import figures
from grpo_vqa.reporting.paper import STUDY_VSR_NOTES, STUDY_VSR_REFERENCE
from grpo_vqa.reporting.report import provenance_labels, sidecar_labels
from grpo_vqa.training.progress import LogProgress, RolloutRate, report_to

REPO = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
REPORT_FIGURES = {
    "grpo_rewards.png",
    "accuracy_by_relation.png",
    "reasoning_length_accuracy.png",
    "vs_study.png",
    "alignment_confusion.png",
    "alignment_verdicts.png",
}
REPORT_TABLES = {"vsr_main.md", "vsr_main.csv", "alignment.md", "alignment.csv"}
CATEGORIES = ("VSR spatial relations", "LLM-as-judge alignment")


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path} is not a PNG"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


# ---- figures -----------------------------------------------------------------------------------------


def rec(words: int, correct: bool) -> dict:
    return {"response": f"<think>{' '.join(['w'] * words)}</think><answer>True</answer>", "correct": correct}


def test_reasoning_length_bins_count_every_response_and_show_the_inverted_u():
    # short (2 words): 1/4 right; medium (10): 4/4; long (30): 1/4
    records = [rec(2, i == 0) for i in range(4)] + [rec(10, True)] * 4 + [rec(30, i == 0) for i in range(4)]
    bins = figures.reasoning_length_bins(records, n_bins=3)
    assert sum(b["n"] for b in bins) == len(records)
    assert [b["accuracy"] for b in bins] == [25.0, 100.0, 25.0]
    assert bins[0]["lo"] == 2 and bins[-1]["hi"] == 30
    assert all(b["lo"] <= b["hi"] for b in bins)
    # no <think>: length 0; all equal lengths: one bin
    same = figures.reasoning_length_bins([{"response": "<answer>True</answer>", "correct": True}] * 3)
    assert same == [{"lo": 0, "hi": 0, "n": 3, "accuracy": 100.0}]
    assert figures.reasoning_length_bins([]) == []


def test_study_reference_values_are_the_reported_ones():
    qwen, smol = STUDY_VSR_REFERENCE["qwen2_5_vl"], STUDY_VSR_REFERENCE["idefics3"]
    # each value on the split it was measured on: Qwen's are fractions of the 340-item dev split (our val)
    assert qwen == {("base", "val"): 70.59, ("grpo", "val"): 86.18}
    assert [round(100 * k / 340, 2) for k in (240, 293, 284)] == [70.59, 86.18, 83.53]
    assert smol == {("sft", "test"): 67.59} and round(100 * 826 / 1222, 2) == 67.59
    for value in ("70.59 (dev", "80.24 (split not known", "83.53 (both dev", "67.59 (test"):
        assert value in STUDY_VSR_NOTES


def test_new_figures_render(tmp_path):
    records = [rec(n, n % 3 == 0) for n in range(1, 40)]
    figures.reasoning_length_accuracy(
        {"a sft": figures.reasoning_length_bins(records), "b": []}, tmp_path / "len.png"
    )
    figures.reference_comparison(
        {"vsr_qwen": {"zero-shot test": 55.0, "SFT test": 70.0}},
        {"vsr_qwen": {"SFT test": 80.24}},
        tmp_path / "ref.png",
    )
    rows = [
        {
            "run": "r",
            "split": "test",
            "stage": s,
            "n_judged": 10,
            "aligned_pct": 70.0,
            "contradiction_pct": 30.0,
        }
        for s in ("base", "grpo")
    ]
    figures.judge_verdicts(rows, tmp_path / "verdicts.png")
    figures.judge_verdicts([], tmp_path / "empty.png")
    for name in ("len", "ref", "verdicts", "empty"):
        w, h = png_size(tmp_path / f"{name}.png")
        assert w > 300 and h > 100


def test_judge_verdicts_cli_writes_figure_and_sidecar(tmp_path):
    csv = tmp_path / "alignment.csv"
    csv.write_text("run,split,stage,n_judged,aligned_pct,contradiction_pct\nr,test,base,4,75.0,25.0\n")
    out = tmp_path / "fig" / "v.png"
    figures.main(["judge-verdicts", "--csv", str(csv), "--out", str(out)])
    png_size(out)
    side = json.loads((tmp_path / "fig" / "v.png.provenance.json").read_text())
    assert str(csv) in side["inputs"] and side["config_sha256"]


# ---- provenance labels -------------------------------------------------------------------------------


def test_provenance_labels_read_the_sidecar(tmp_path):
    fig_dir = tmp_path / "figs"
    fig_dir.mkdir()
    (fig_dir / "a.png").write_bytes(PNG_MAGIC)
    write_sidecar(fig_dir / "a.png", {"k": 1}, [])
    side = json.loads((fig_dir / "a.png.provenance.json").read_text())
    labels = provenance_labels("figures", "{name}.png")(
        {"name": "a", "table": "t"}, {"figures": str(fig_dir)}
    )
    assert labels["item"] == "a.png"
    assert labels["config"] == side["config_sha256"][:12]
    assert f"torch {side['packages']['torch']}" in labels["packages"]
    assert labels["commit"].startswith((side["git"]["commit"] or "none")[:10])
    missing = sidecar_labels(tmp_path / "nothing.csv")
    assert missing["config"] == "no sidecar" and missing["item"] == "nothing.csv"


# ---- progress ----------------------------------------------------------------------------------------


class FakeState:
    def __init__(self, step: int, max_steps: int, main: bool = True):
        self.global_step, self.max_steps = step, max_steps
        self.is_world_process_zero = main


def test_trainer_progress_prints_one_line_per_interval_with_eta():
    out, now = io.StringIO(), [100.0]
    cb = LogProgress("grpo", stream=out, clock=lambda: now[0])
    state = FakeState(10, 50)  # resumed at step 10: the ETA uses this process's speed only
    cb.on_train_begin(None, state, None)
    assert cb.every == 2
    for step in range(11, 51):
        now[0] += 3.0
        state.global_step = step
        cb.on_log(None, state, None, logs={"reward": 0.5, "kl": 0.01, "note": "text"})
        cb.on_step_end(None, state, None)
    cb.on_train_end(None, state, None)
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert lines[0] == "[grpo] start at step 10/50"
    assert len(lines) == 1 + 20  # steps 12, 14, ..., 50; the end adds no duplicate
    assert lines[1] == "[grpo] step 12/50 (24%) | reward 0.5 | kl 0.01 | elapsed 0m06s | ETA 1m54s"
    assert lines[-1].endswith("ETA 0m00s") and "step 50/50 (100%)" in lines[-1]
    assert format_seconds(3725) == "1h02m05s"

    quiet, other_rank = io.StringIO(), FakeState(0, 50, main=False)  # rank > 0 of a multi-process run
    cb = LogProgress("grpo", stream=quiet, clock=lambda: now[0])
    cb.on_train_begin(None, other_rank, None)
    for step in range(1, 51):
        other_rank.global_step = step
        cb.on_log(None, other_rank, None, logs={"reward": 0.5})
        cb.on_step_end(None, other_rank, None)
    cb.on_train_end(None, other_rank, None)
    assert quiet.getvalue() == ""


def test_rollout_rate_logs_each_step_and_a_summary_line():
    from collections import defaultdict
    from types import SimpleNamespace

    out, now = io.StringIO(), [50.0]
    rate = RolloutRate("grpo", "fast", "auto: CUDA device", stream=out, clock=lambda: now[0])
    trainer = SimpleNamespace(_metrics={"train": defaultdict(list), "eval": defaultdict(list)})
    assert rate.attach(trainer) is rate and trainer.rollout_rate is rate
    state = FakeState(0, 4)
    rate.on_train_begin(None, state, None)
    for step, seconds in zip(range(1, 5), (10.0, 2.0, 2.0, 4.0), strict=True):
        rate.add(4)  # the trainer's generations of this step
        now[0] += seconds
        state.global_step = step
        rate.on_step_end(None, state, None)
    rate.on_train_end(None, state, None)
    assert trainer._metrics["train"]["rollouts_per_second"] == [0.4, 2.0, 2.0, 1.0]
    summary = rate.summary()
    assert summary["engine"] == "fast" and summary["engine_reason"] == "auto: CUDA device"
    assert (summary["steps"], summary["first_step"], summary["last_step"], summary["rollouts"]) == (
        4,
        1,
        4,
        16,
    )
    assert summary["train_s"] == 18.0 and summary["rollouts_per_s"] == 16 / 18
    assert summary["steady_rollouts_per_s"] == 12 / 8 and summary["first_step_s"] == 10.0
    assert summary["median_step_s"] == 4.0 and summary["rollouts_per_step"] == 4.0
    assert out.getvalue() == (
        "[grpo] rate: 16 rollouts in 4 steps, 18.0 s: 0.889 rollouts/s"
        " (after the first step: 1.5 rollouts/s; first step 10.0 s) | engine fast\n"
    )

    # a resumed run that finds training finished runs no step: no summary, no line; other ranks print nothing
    idle, quiet = RolloutRate(stream=io.StringIO()), io.StringIO()
    idle.on_train_end(None, FakeState(4, 4), None)
    assert idle.summary() is None and idle.stream.getvalue() == ""
    other = RolloutRate(stream=quiet, clock=lambda: now[0])
    other.on_train_begin(None, FakeState(0, 1, main=False), None)
    other.add(8)
    other.on_step_end(None, FakeState(1, 1, main=False), None)
    other.on_train_end(None, FakeState(1, 1, main=False), None)
    assert quiet.getvalue() == "" and other.summary()["rollouts"] == 8


def test_progress_in_a_log_file_is_plain_lines():
    out = io.StringIO()  # not a TTY
    for _ in progress(range(1000), desc="eval test", stream=out, interval=3600):
        pass
    text = out.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert 1 <= len(lines) <= 3, lines  # the first refresh and the final one, not one per item
    assert lines[-1].startswith("eval test: 100%") and "1000/1000" in lines[-1]


def test_report_to_tensorboard_and_optional_wandb(tmp_path, monkeypatch):
    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    assert report_to(tmp_path / "tb") == ["tensorboard"]
    assert os.environ["TENSORBOARD_LOGGING_DIR"] == str(tmp_path / "tb")
    assert report_to(None, {"wandb": {"enabled": False}}) == []
    try:
        import wandb  # noqa: F401
    except ImportError:
        with pytest.raises(RuntimeError, match="wandb"):
            report_to(None, {"wandb": {"enabled": True}})
    else:
        monkeypatch.delenv("WANDB_MODE", raising=False)
        on = {"enabled": True, "project": "grpo-vqa", "entity": None, "mode": "offline"}
        assert report_to(None, {"wandb": on}) == ["wandb"]
        assert os.environ["WANDB_MODE"] == "offline"


# ---- the HTML report in headless Chromium -------------------------------------------------------------


def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe:
        return exe
    if os.environ.get("GRPO_VQA_REQUIRE_CHROMIUM") == "1":
        pytest.fail("GRPO_VQA_REQUIRE_CHROMIUM=1 but chromium is not installed (apt-get install -y chromium)")
    pytest.skip(
        "chromium not installed (apt-get install -y chromium); set GRPO_VQA_REQUIRE_CHROMIUM=1 to fail"
    )


def run_chromium(exe: str, *args: str, timeout: int = 180) -> str:
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        cmd = [
            exe,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            f"--user-data-dir={profile}",
            *args,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def snakemake(workdir: Path, *args: str, timeout: int = 1500) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", *args, "--configfile", str(REPO / "config/test.yaml")]
    cmd += [
        "--config",
        "tables={vsr_main: {experiments: [vsr_qwen]}}",
        "-s",
        str(REPO / "workflow/Snakefile"),
    ]
    cmd += ["-d", str(workdir), "--cores", "2"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def report_html(tmp_path_factory) -> Path:
    exe = chromium()  # skip before running the DAG when there is no browser
    assert exe
    given = os.environ.get("GRPO_VQA_REPORT_RUN_DIR")
    workdir = Path(given) if given else tmp_path_factory.mktemp("report_run")
    snakemake(
        workdir,
        "results/tables/vsr_main.md",
        "results/tables/alignment.md",
        "results/figures/alignment_verdicts.png",
    )
    proc = snakemake(workdir, "--report", "report.html")  # default target `all`, as in the README
    assert "Report created" in proc.stdout + proc.stderr
    return workdir / "report.html"


def report_results(report: Path) -> dict:
    text = report.read_text(encoding="utf-8")
    m = re.search(r"var results = (\{.*?\});\n", text, re.S)
    assert m, "no results in the report"
    return json.loads(m.group(1))


@pytest.mark.slow
def test_report_lists_every_table_and_figure_with_caption_and_provenance(report_html):
    results = report_results(report_html)
    names = {r["name"] for r in results.values()}
    assert REPORT_FIGURES | REPORT_TABLES <= names, sorted(names)
    cats = report_html.read_text(encoding="utf-8")
    assert all(c in cats for c in CATEGORIES)
    for r in results.values():
        assert r["caption"].strip(), f"{r['name']}: no caption"
        assert re.fullmatch(r"[0-9a-f]{12}", r["labels"]["config"]), r["labels"]
        assert "torch" in r["labels"]["packages"]
        if r["name"] in REPORT_FIGURES:
            assert r["data_uri"].startswith("data:image/png;") and ";base64," in r["data_uri"]
            assert base64.b64decode(r["data_uri"].split(",", 1)[1])[:8] == PNG_MAGIC
    csv = next(r for r in results.values() if r["name"] == "vsr_main.csv")
    assert (
        "<table" in csv["caption"] and "test accuracy" in csv["caption"]
    )  # the table itself, in the caption


@pytest.mark.slow
def test_report_renders_in_chromium_without_broken_images(report_html):
    exe = chromium()
    shot = report_html.with_name("report_screenshot.png")
    shot.unlink(missing_ok=True)
    budget = "--virtual-time-budget=20000"
    run_chromium(
        exe,
        f"--screenshot={shot}",
        "--window-size=1400,3000",
        "--hide-scrollbars",
        budget,
        report_html.as_uri(),
    )
    w, h = png_size(shot)
    assert (w, h) == (1400, 3000)
    assert shot.stat().st_size > 50_000, "screenshot looks blank"

    dom = run_chromium(exe, "--dump-dom", budget, report_html.as_uri())
    assert re.search(r'id="loading-screen"[^>]*style="display: none', dom), "the report's scripts did not run"
    assert all(html.escape(c) in dom for c in CATEGORIES), "categories missing from the menu"
    imgs = re.findall(r'<img [^>]*src="(data:image/png;[^"]+)"', dom)
    n_figures = sum(1 for r in report_results(report_html).values() if r["mime_type"] == "image/png")
    assert len(imgs) >= n_figures >= len(REPORT_FIGURES), "the landing page does not show every figure"
    tables = re.findall(r"<table[^>]*>\s*<caption>([^<]*)", dom)
    assert {t.split()[0] for t in tables} >= {"vsr_main.csv", "alignment.csv"}, tables

    # Chromium decodes each image of the rendered report: a broken one has naturalWidth 0.
    page = report_html.with_name("report_images_check.html")
    tags = "\n".join(f'<img id="i{k}" src="{src}">' for k, src in enumerate(imgs))
    page.write_text(
        f"<!doctype html><html><body>{tags}<pre id='out'>pending</pre><script>"
        "window.addEventListener('load', () => { document.getElementById('out').textContent = JSON.stringify("
        "[...document.images].map(i => [i.id, i.complete && i.naturalWidth > 0 ? i.naturalWidth : 0])); });"
        "</script></body></html>"
    )
    checked = run_chromium(exe, "--dump-dom", budget, page.as_uri())
    m = re.search(r"<pre id=\"out\">(.*?)</pre>", checked, re.S)
    assert m and m.group(1) != "pending", "the image check did not run"
    widths = dict(json.loads(html.unescape(m.group(1))))
    broken = [k for k, w in widths.items() if w <= 0]
    assert len(widths) == len(imgs) and not broken, f"broken images: {broken}"
    print(f"screenshot: {shot}")
