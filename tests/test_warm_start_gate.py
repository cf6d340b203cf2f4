"""The warm start's listing gate (grpo_vqa.training.warm_start): rounds, resume, the probe's scoring, and one
real round trip on a tiny Qwen2.5-VL."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from grpo_vqa.config import entry_defaults
from grpo_vqa.models import loading
from grpo_vqa.training import warm_start as ws

SIZE = 112


def pretrain_cfg(**gate) -> dict:
    """A filled ``pretrain`` block: a few steps on a few scenes, with ``gate`` (none when empty)."""
    model = entry_defaults(
        "models", {"source": "tiny", "pretrain": {"steps": 3, "lr": 1e-3, "batch_size": 4}}
    )
    pre = model["pretrain"] | {"n_images": 8}
    if gate:
        pre["gate"] = {"items": 8, "extra_steps": 2, "max_rounds": 2} | gate
    return pre


class FakeTraining:
    """Stands in for run_sft (records what each round starts from) and the probe (scripted listings)."""

    def __init__(self, listings: list[float], fail_on_round: int | None = None):
        self.listings, self.fail_on_round = listings, fail_on_round
        self.trained: list[tuple[str, str, int]] = []  # (start model, out dir, steps)
        self.probed: list[str] = []

    def run_sft(self, job, use_lora):
        assert use_lora is False
        rnd = len(self.trained)
        if self.fail_on_round == rnd:
            self.fail_on_round = None
            raise RuntimeError("killed")
        self.trained.append((str(job.model_path), str(job.out_dir), job.cfg["max_steps"]))
        out = Path(job.out_dir)
        out.mkdir(parents=True)
        (out / "weights.txt").write_text(f"trained by {out.parent.name} from {Path(job.model_path).name}")
        (out / "train_history.json").write_text("[]")

    def probe(self, model_dir, items):
        self.probed.append(Path(model_dir).parent.name)
        return {"listing_exact": self.listings[len(self.probed) - 1], "by_direction": {}, "items": len(items)}


@pytest.fixture
def fake(monkeypatch):
    def make(listings, fail_on_round=None):
        f = FakeTraining(listings, fail_on_round)
        monkeypatch.setattr(ws, "run_sft", f.run_sft)
        monkeypatch.setattr(ws, "listing_probe", f.probe)
        return f

    return make


def test_rounds_continue_from_the_last_model_until_the_bar(fake, tmp_path):
    f = fake([0.5, 0.7, 0.95])
    records = ws.warm_start(
        tmp_path / "init", tmp_path / "out", tmp_path / "ck", pretrain_cfg(min_listing=0.8), 7, SIZE
    )
    assert [(r["round"], r["steps"], r["listing_exact"]) for r in records] == [
        (0, 3, 0.5),
        (1, 2, 0.7),
        (2, 2, 0.95),
    ]
    starts = [Path(s).name if Path(s).name != "model" else Path(s).parent.name for s, _, _ in f.trained]
    assert starts == ["init", "round-0", "round-1"]
    assert (tmp_path / "out" / "weights.txt").read_text() == "trained by round-2 from model"


def test_a_round_that_passes_ends_the_warm_start(fake, tmp_path):
    f = fake([0.81])
    records = ws.warm_start(
        tmp_path / "init", tmp_path / "out", tmp_path / "ck", pretrain_cfg(min_listing=0.8), 7, SIZE
    )
    assert len(records) == len(f.trained) == 1
    assert (tmp_path / "out" / "weights.txt").read_text() == "trained by round-0 from init"


def test_the_last_round_is_kept_when_the_bar_is_never_reached(fake, tmp_path, capsys):
    f = fake([0.1, 0.2, 0.3])
    cfg = pretrain_cfg(min_listing=0.9, max_rounds=2)
    records = ws.warm_start(tmp_path / "init", tmp_path / "out", tmp_path / "ck", cfg, 7, SIZE)
    assert len(records) == len(f.trained) == 3
    assert "stayed below the bar after 3 rounds" in capsys.readouterr().out
    assert (tmp_path / "out" / "weights.txt").read_text() == "trained by round-2 from model"


def test_a_killed_gated_warm_start_resumes_in_the_round_it_was_in(fake, tmp_path):
    cfg = pretrain_cfg(min_listing=0.8)
    f = fake([0.5, 0.9], fail_on_round=1)
    with pytest.raises(RuntimeError, match="killed"):
        ws.warm_start(tmp_path / "init", tmp_path / "out", tmp_path / "ck", cfg, 7, SIZE)
    assert not (tmp_path / "out").exists() and f.probed == ["round-0"]
    records = ws.warm_start(tmp_path / "init", tmp_path / "out", tmp_path / "ck", cfg, 7, SIZE)
    # round 0 is neither trained nor probed again; round 1 trains from round 0's model
    assert [Path(o).parent.name for _, o, _ in f.trained] == ["round-0", "round-1"]
    assert f.probed == ["round-0", "round-1"] and [r["listing_exact"] for r in records] == [0.5, 0.9]
    # a finished warm start run again does nothing and reports the same rounds
    again = ws.warm_start(tmp_path / "init", tmp_path / "out", tmp_path / "ck", cfg, 7, SIZE)
    assert again == records and len(f.trained) == 2 and len(f.probed) == 2


def test_without_a_gate_one_run_writes_the_output(fake, tmp_path):
    f = fake([])
    records = ws.warm_start(tmp_path / "init", tmp_path / "out", tmp_path / "ck", pretrain_cfg(), 7, SIZE)
    assert records == [{"round": 0, "steps": 3}] and f.probed == []
    assert [(Path(o), s) for _, o, s in f.trained] == [(tmp_path / "out", 3)]


def test_probe_items_are_listings_of_a_seed_no_warm_start_uses():
    cfg = pretrain_cfg()
    items = ws.probe_items(cfg, SIZE, 12, seed=7)
    assert len(items) == 12 and all(it["problem"].startswith("Name the shapes from") for it in items)
    assert [it["text"] for it in ws.probe_items(cfg, SIZE, 12, seed=1234)] == [it["text"] for it in items]
    # a run whose seed is the probe's gets other scenes than its own warm start's
    own = [it["text"] for it in ws.probe_items(cfg, SIZE, 12, seed=ws.PROBE_SEED)]
    assert own != [it["text"] for it in items]


class FakeProcessor:
    class tokenizer:  # noqa: N801 (the attribute a processor has)
        all_special_tokens = ["<|im_end|>", "<|endoftext|>"]


@pytest.mark.parametrize("wrong", [set(), {0, 3}, set(range(8))])
def test_the_probe_counts_exact_listings(monkeypatch, wrong):
    items = ws.probe_items(pretrain_cfg(), SIZE, 8, seed=7)
    monkeypatch.setattr(loading, "load_model", lambda path: None)
    monkeypatch.setattr(loading, "load_processor", lambda path: FakeProcessor())
    from grpo_vqa.models import greedy

    answers = [it["text"] if i not in wrong else it["text"].replace("the", "a") for i, it in enumerate(items)]
    # end-of-turn tokens around an exact listing do not make it wrong
    batches = iter([[a + "<|im_end|>" for a in answers[:5]], [a + "<|im_end|>" for a in answers[5:]]])
    monkeypatch.setattr(greedy, "greedy_completions", lambda *a, **k: next(batches))
    result = ws.listing_probe("unused", items, batch_size=5)
    assert result["listing_exact"] == pytest.approx((8 - len(wrong)) / 8, abs=1e-4) and result["items"] == 8
    directions = [it["text"].split(":")[0] for it in items]
    for d, share in result["by_direction"].items():
        of_d = [i for i, x in enumerate(directions) if x == d]
        assert share == pytest.approx(sum(i not in wrong for i in of_d) / len(of_d), abs=1e-4)
    assert set(result["by_direction"]) == set(directions)


@pytest.mark.slow
def test_a_real_gated_warm_start_on_a_tiny_qwen(tmp_path):
    """Two real rounds (bar 1.0 is out of reach after a few steps): round 1 starts from round 0's weights and
    the base model is round 1's; the probe's record is what the rounds' files say."""
    import torch

    from grpo_vqa.data.pretrain import tokenizer_corpus
    from grpo_vqa.models.tiny import build_tiny_model

    torch.manual_seed(0)
    torch.set_num_threads(1)
    init = build_tiny_model(
        "qwen2_5_vl", {"image_size": SIZE}, tokenizer_corpus(7, None), tmp_path / "init", 7
    )
    cfg = pretrain_cfg(min_listing=1.0, max_rounds=1, items=6)
    records = ws.warm_start(init, tmp_path / "out", tmp_path / "ck", cfg, 7, SIZE)
    assert [r["steps"] for r in records] == [3, 2]
    for r in records:
        saved = json.loads((tmp_path / "ck" / f"round-{r['round']}" / "listing_probe.json").read_text())
        assert {k: r[k] for k in saved} == saved and 0.0 <= r["listing_exact"] <= 1.0 and r["items"] == 6
    out = loading.load_model(str(tmp_path / "out"))
    r1 = loading.load_model(str(tmp_path / "ck" / "round-1" / "model"))
    r0 = loading.load_model(str(tmp_path / "ck" / "round-0" / "model"))
    same = [
        torch.equal(a, b) for a, b in zip(out.state_dict().values(), r1.state_dict().values(), strict=True)
    ]
    moved = [
        torch.equal(a, b) for a, b in zip(r0.state_dict().values(), r1.state_dict().values(), strict=True)
    ]
    assert all(same) and not all(moved)
