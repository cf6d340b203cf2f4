"""A full disk while a checkpoint is written: the previous checkpoint stays usable, the half-written one is
never resumed from, and once space is back the rerun resumes and ends where an uninterrupted run ends.

The trainer is the real ``transformers.Trainer`` with the pipeline's own settings
(``shared_trainer_kwargs``: a checkpoint every step, two kept), the completion-marker callback and the
train-resume-save routine of ``grpo_vqa.training.common``; only the model is a small linear layer, so a
checkpoint is about a megabyte. The disk is a size-limited tmpfs where the test may mount one (root with
CAP_SYS_ADMIN, as in CI); a second test always runs with the writer failing with ENOSPC half-way instead.
"""

from __future__ import annotations

import errno
import gc
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from config_helpers import train_section  # noqa: E402
from reliability_helpers import case  # noqa: E402

from grpo_vqa.training.common import (  # noqa: E402
    COMPLETE_MARKER,
    TrainJob,
    latest_complete_checkpoint,
    make_complete_marker_callback,
    shared_trainer_kwargs,
    train_resume_save,
)

MAX_STEPS = 4


class Regressor(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(192, 192)

    def forward(self, x, y):
        return {"loss": torch.nn.functional.mse_loss(self.lin(x), y)}


class Processor:
    """What train_resume_save saves beside the model (a processor in the pipeline)."""

    def save_pretrained(self, path):
        Path(path, "processor.json").write_text("{}")


def dataset():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 192, generator=g)
    return [{"x": x[i], "y": x[i].flip(0)} for i in range(32)]


def trainer(ckpt_dir: Path):
    from transformers import Trainer, TrainingArguments

    torch.manual_seed(0)
    cfg = train_section("sft", max_steps=MAX_STEPS, learning_rate=1e-2, per_device_train_batch_size=4)
    cfg |= {"save_steps": 1, "lr_scheduler_type": "cosine"}
    kwargs = shared_trainer_kwargs(TrainJob("m", None, ckpt_dir, ckpt_dir, cfg, seed=0))
    args = TrainingArguments(**kwargs, logging_steps=1)
    return Trainer(
        model=Regressor(),
        args=args,
        train_dataset=dataset(),
        callbacks=[make_complete_marker_callback()],
    )


def final_weights(out: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(out / "model.safetensors"))


def train(ckpt: Path, out: Path) -> dict:
    return train_resume_save(trainer(ckpt), Processor(), ckpt, out, "disk", "loss")


def check_after_full_disk(ckpt: Path, exc: OSError) -> tuple[Path, Path]:
    """The state a full disk left: one complete checkpoint, one broken one, the complete one loadable."""
    assert exc.errno == errno.ENOSPC, exc
    good = latest_complete_checkpoint(ckpt)
    broken = sorted(p for p in ckpt.glob("checkpoint-*") if not (p / COMPLETE_MARKER).exists())
    assert good is not None and good.name == "checkpoint-1", sorted(p.name for p in ckpt.iterdir())
    assert [p.name for p in broken] == ["checkpoint-2"]
    # the previous checkpoint is usable: weights, optimizer and trainer state load
    from safetensors.torch import load_file

    assert set(load_file(str(good / "model.safetensors"))) == {"lin.weight", "lin.bias"}
    assert "state" in torch.load(good / "optimizer.pt", weights_only=True)
    assert json.loads((good / "trainer_state.json").read_text())["global_step"] == 1
    return good, broken[0]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    base = tmp_path_factory.mktemp("disk_ref")
    train(base / "ckpt", base / "out")
    size = sum(
        f.stat().st_size for f in (base / "ckpt" / f"checkpoint-{MAX_STEPS}").rglob("*") if f.is_file()
    )
    return final_weights(base / "out"), size


def mount_tmpfs(where: Path, size: int) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True
    )
    return proc.returncode == 0


def test_full_tmpfs_during_checkpoint(uninterrupted, tmp_path, capsys, record_property):
    want, ckpt_size = uninterrupted
    mnt = tmp_path / "small_disk"
    size = (int(ckpt_size * 1.5) // 4096 + 1) * 4096  # one checkpoint fits, the second does not
    if not mount_tmpfs(mnt, size):
        pytest.skip("cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN); the ENOSPC test below runs")
    try:
        ckpt, out = mnt / "ckpt", tmp_path / "out"
        with pytest.raises(OSError) as info:
            train(ckpt, out)
        good, broken = check_after_full_disk(ckpt, info.value)
        assert not out.exists()
        # space comes back (the operator frees the disk); the same call resumes from the good checkpoint
        subprocess.run(["mount", "-o", "remount,size=64m", str(mnt)], check=True)
        capsys.readouterr()
        result = train(ckpt, out)
        log = capsys.readouterr().out
        assert f"discarded incomplete checkpoint {broken}" in log
        assert result["resumed_from"] == str(good)
        got = final_weights(out)
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    finally:
        info = None  # the traceback holds the failed writer's open file: release it before unmounting
        gc.collect()
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], check=True)  # lazy: detached now, freed when closed
    case(
        record_property,
        f"disk full (tmpfs of {size // 1024} KiB) while writing checkpoint 2 of {MAX_STEPS}",
        "previous checkpoint usable; half-written one never resumed; rerun resumes and matches",
        f"ENOSPC; resumed from {good.name}, discarded {broken.name}; final weights bit-equal",
    )


def test_enospc_half_way_through_a_checkpoint(uninterrupted, tmp_path, monkeypatch, capsys, record_property):
    """Simulated full disk: the optimizer file of checkpoint 2 is written half-way, then ENOSPC."""
    want, _ = uninterrupted
    real_save = torch.save

    def failing_save(obj, f, *args, **kwargs):
        if str(f).endswith("checkpoint-2/optimizer.pt"):
            Path(f).write_bytes(b"\x80\x02partial")
            raise OSError(errno.ENOSPC, "No space left on device", str(f))
        return real_save(obj, f, *args, **kwargs)

    ckpt, out = tmp_path / "ckpt", tmp_path / "out"
    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError) as info:
        train(ckpt, out)
    good, broken = check_after_full_disk(ckpt, info.value)
    monkeypatch.setattr(torch, "save", real_save)
    capsys.readouterr()
    result = train(ckpt, out)
    assert f"discarded incomplete checkpoint {broken}" in capsys.readouterr().out
    assert result["resumed_from"] == str(good)
    got = final_weights(out)
    assert all(torch.equal(got[k], want[k]) for k in want)
    case(
        record_property,
        "disk full (simulated ENOSPC writer) half-way through checkpoint 2",
        "previous checkpoint usable; half-written one never resumed; rerun resumes and matches",
        f"resumed from {good.name}, discarded {broken.name}; final weights bit-equal",
    )


@pytest.mark.parametrize("marker", ["", '{"st', "{}", '{"step": 7}'])
def test_torn_or_foreign_marker_is_not_complete(tmp_path, marker, record_property):
    """A marker cut short by a full disk (empty, torn) or naming another step does not make a checkpoint."""
    for step, text in ((1, '{"step": 1}'), (2, marker)):
        d = tmp_path / f"checkpoint-{step}"
        d.mkdir()
        (d / COMPLETE_MARKER).write_text(text)
    assert latest_complete_checkpoint(tmp_path).name == "checkpoint-1"
    case(
        record_property,
        f"checkpoint marker {marker!r} (torn or foreign)",
        "not taken as complete",
        "newest complete is checkpoint-1",
        group="torn checkpoint markers",
    )


def test_cli_reports_a_full_disk_in_one_line(tmp_path, record_property):
    """A script that hits ENOSPC ends with exit code 3 and one line naming the file (no traceback)."""
    script = tmp_path / "fill.py"
    script.write_text(
        "import errno\nfrom grpo_vqa import cli\n"
        "def main():\n    raise OSError(errno.ENOSPC, 'No space left on device', 'results/x/checkpoint-2/optimizer.pt')\n"
        "cli.run(main)\n"
    )
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3
    lines = proc.stderr.strip().splitlines()
    assert lines == [
        "error: no space left on device while writing results/x/checkpoint-2/optimizer.pt (No space left on device)"
    ]
    case(record_property, "ENOSPC reaches a script's top level", "exit 3, one line naming the file", lines[0])
