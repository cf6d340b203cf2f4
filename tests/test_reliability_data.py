"""Bad data: every case either skips the row and counts it in the manifest's data-quality record, or stops
the stage with one line naming the file and row. Built through the real stage function (``build_dataset``
with the VSR loader on a local copy in VSR's format) and checked on the saved dataset.

Policy (``grpo_vqa.data.real.common.DataQuality``): a defect confined to one row (missing, truncated,
corrupt, 0x0 or decompression-bomb image; missing or empty column; a non-UTF-8 or non-JSON line) is
skipped and counted; duplicate ids, labels outside the allowed set, unreadable whole files and more than
``max_skipped_fraction`` of the rows skipped stop the build.
"""

from __future__ import annotations

import io
import json
import resource
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from reliability_helpers import case, env  # noqa: E402

from grpo_vqa.data.build import build_dataset  # noqa: E402
from grpo_vqa.data.images import DataError, ImageError, load_image  # noqa: E402
from grpo_vqa.data.real.common import read_json  # noqa: E402

N_GOOD = 12


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` pixels, with one tiny IDAT (a decompression bomb's
    header; decoding it would allocate width * height * 3 bytes)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00"))
        + chunk(b"IEND", b"")
    )


def good_png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 24), (seed * 20 % 256, 80, 160)).save(buf, format="PNG")
    return buf.getvalue()


def row(i: int, **kw) -> dict:
    r = {
        "image": f"{i:012d}.png",
        "caption": f"The cat {i} is left of the dog.",
        "label": i % 2,
        "relation": "left of",
        "subj": "cat",
        "obj": "dog",
    }
    r.update(kw)
    return {k: v for k, v in r.items() if v is not ...}


# name -> (row fields, image bytes or None for no file, expected skip reason)
SKIPPED_CASES = {
    "missing image file": ({}, None, "missing_image"),
    "truncated PNG": ({}, good_png(1)[:60], "unreadable_image"),
    "corrupt image (random bytes)": ({}, bytes(range(256)) * 4, "unreadable_image"),
    "0x0 image": ({}, png_header_only(0, 0), "unreadable_image"),
    "50000x50000 image (decompression bomb)": ({}, png_header_only(50_000, 50_000), "image_too_large"),
    "8000x8000 image (above the 40 MP limit)": ({}, png_header_only(8_000, 8_000), "image_too_large"),
    "row without caption": ({"caption": ...}, good_png(2), "missing_column"),
    "row with empty caption": ({"caption": "  "}, good_png(3), "empty_column"),
    "row with null label": ({"label": None}, good_png(4), "missing_column"),
}


def write_vsr(root: Path, rows: list[dict], images: dict[str, bytes], extra_lines: list[bytes] = ()) -> None:
    (root / "images").mkdir(parents=True, exist_ok=True)
    for name, data in images.items():
        (root / "images" / name).write_bytes(data)
    lines = [json.dumps(r).encode() for r in rows] + list(extra_lines)
    (root / "train.jsonl").write_bytes(b"\n".join(lines) + b"\n")


def cfg_for(root: Path, max_skipped: float = 0.6) -> dict:
    return {
        "kind": "relation",
        "source": "local",
        "loader": "vsr",
        "splits": {"train": None},
        "real": {"local_dir": str(root), "splits": {"train": "train"}, "max_skipped_fraction": max_skipped},
    }


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One build over N_GOOD good rows, one row per skip case and one non-UTF-8 line."""
    root = tmp_path_factory.mktemp("vsr_bad")
    rows = [row(i) for i in range(N_GOOD)]
    images = {f"{i:012d}.png": good_png(i) for i in range(N_GOOD)}
    for k, (fields, data, _) in enumerate(SKIPPED_CASES.values()):
        r = row(100 + k, **fields)
        rows.append(r)
        if data is not None:
            images[r["image"]] = data
    bad_utf8 = json.dumps(row(200)).encode().replace(b"The cat", b"The caf\xe9")
    images[row(200)["image"]] = good_png(5)
    write_vsr(root / "src", rows, images, [bad_utf8])
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    manifest = build_dataset("vsr_bad", cfg_for(root / "src"), root / "out", seed=7)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    return root / "out", manifest, grown_mb


@pytest.mark.parametrize("name", list(SKIPPED_CASES))
def test_bad_row_is_skipped_and_counted(built, name, record_property):
    out, manifest, _ = built
    reason = SKIPPED_CASES[name][2]
    q = manifest["splits"]["train"]["quality"]
    expected = {}
    for _, _, r in SKIPPED_CASES.values():
        expected[r] = expected.get(r, 0) + 1
    expected["not_utf8"] = 1
    assert q["skipped"] == expected
    assert q["rows_in"] == N_GOOD + len(SKIPPED_CASES) + 1 and q["rows_kept"] == N_GOOD
    k = list(SKIPPED_CASES).index(name)
    image = row(100 + k)["image"]
    # the skipped row is reported by file and row, and is not in the saved dataset
    lineno = N_GOOD + k + 1
    lines = [e for e in q["skipped_examples"] if e.startswith(f"vsr train.jsonl row {lineno}:")]
    assert len(lines) == 1, q["skipped_examples"]
    import datasets

    saved = datasets.load_from_disk(str(out / "train"))
    assert len(saved) == N_GOOD and not any(p.endswith(image) for p in saved["image_path"])
    assert (out / "manifest.json").is_file()
    case(
        record_property,
        f"data: {name}",
        f"skip the row, count it as {reason} in manifest quality",
        f"skipped ({reason}); {q['rows_kept']}/{q['rows_in']} rows kept; logged: {lines[0][:90]}",
    )


def test_non_utf8_line_is_skipped_and_counted(built, record_property):
    _, manifest, _ = built
    q = manifest["splits"]["train"]["quality"]
    line = [e for e in q["skipped_examples"] if "not UTF-8" in e]
    offset = json.dumps(row(200)).encode().index(b"The cat") + len(b"The caf")
    assert q["skipped"]["not_utf8"] == 1 and line == [
        f"vsr train.jsonl row {N_GOOD + len(SKIPPED_CASES) + 1}: not UTF-8 (byte {offset}: b'\\xe9')"
    ]
    case(
        record_property,
        "data: non-UTF-8 caption (JSON Lines row)",
        "skip the row, count it as not_utf8",
        line[0],
    )


def test_decompression_bomb_is_refused_without_allocating(built, tmp_path, record_property):
    _, _, grown_mb = built
    assert grown_mb < 300, f"peak memory grew by {grown_mb:.0f} MB while building"  # decoding: 7,500 MB
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header_only(50_000, 50_000))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ImageError) as info:
        load_image(bomb)
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024 < 50
    assert info.value.reason == "image_too_large" and str(info.value).startswith(f"{bomb}: ")
    case(
        record_property,
        "data: 50000x50000 PNG header (decompression bomb) in load_image",
        "refused from the header, no pixel buffer allocated",
        f"ImageError, peak RSS growth {grown_mb:.0f} MB for the whole build",
    )


STOP_CASES = {
    "label outside {0, 1}": (
        lambda rows: rows.__setitem__(3, row(3, label=2)),
        r"^vsr train\.jsonl row 4: label 2 not in \{0, 1\}$",
    ),
    "duplicate id (same image and caption twice)": (
        lambda rows: rows.__setitem__(5, row(2)),
        r"^vsr train\.jsonl row 6: duplicate id 'vsr-000000000002-\w+' \(first seen at vsr train\.jsonl row 3\)$",
    ),
}


@pytest.mark.parametrize("name", list(STOP_CASES))
def test_bad_row_that_stops_the_build(tmp_path, name, record_property):
    edit, pattern = STOP_CASES[name]
    rows = [row(i) for i in range(N_GOOD)]
    edit(rows)
    write_vsr(tmp_path / "src", rows, {f"{i:012d}.png": good_png(i) for i in range(N_GOOD)})
    with pytest.raises(DataError, match=pattern) as info:
        build_dataset("vsr_bad", cfg_for(tmp_path / "src"), tmp_path / "out", seed=7)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out" / "train").exists() and not (tmp_path / "out" / "manifest.json").exists()
    case(
        record_property,
        f"data: {name}",
        "stop: one line naming file and row; nothing written",
        str(info.value),
    )


def test_too_many_skipped_rows_stop_the_build(tmp_path, record_property):
    rows = [row(i) for i in range(10)]
    write_vsr(tmp_path / "src", rows, {f"{i:012d}.png": good_png(i) for i in range(8)})  # 2 images missing
    with pytest.raises(DataError) as info:
        build_dataset("vsr_bad", cfg_for(tmp_path / "src", max_skipped=0.1), tmp_path / "out", seed=7)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(
        "vsr split train: 2 of 10 rows skipped (missing_image 2), more than max_skipped_fraction 0.1; "
        "first: vsr train.jsonl row 9: image file not found:"
    ), msg
    case(
        record_property,
        "data: 2 of 10 images missing, max_skipped_fraction 0.1",
        "stop: a systematic problem, not a bad row",
        msg[:120],
    )


def test_non_utf8_json_file_stops_naming_the_file(tmp_path, record_property):
    f = tmp_path / "annotations.json"
    f.write_bytes(b'[{"caption": "caf\xe9"}]')
    with pytest.raises(DataError) as info:
        read_json(f, "rel3d")
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"rel3d {f}: not valid JSON") and "0xe9" in msg, msg
    case(
        record_property,
        "data: non-UTF-8 byte in a whole-file JSON dataset",
        "stop: one line naming the file",
        msg,
    )


def test_direct_loader_call_stays_strict(tmp_path):
    """Outside a build (no data-quality record) a bad row still raises, naming it."""
    from grpo_vqa.config import entry_defaults
    from grpo_vqa.data.real import load_items, loader_config

    write_vsr(
        tmp_path / "src", [row(0), row(1, caption="")], {f"{i:012d}.png": good_png(i) for i in range(2)}
    )
    real = loader_config(entry_defaults("datasets", cfg_for(tmp_path / "src")), "train", None)
    with pytest.raises(DataError, match=r"^vsr train\.jsonl row 2: empty column\(s\) caption$"):
        load_items("vsr", real, "train", tmp_path / "img", 0)


def test_training_job_stops_on_a_missing_image_in_a_built_dataset(built, tmp_path, record_property):
    """A built dataset whose image went missing afterwards: the training/eval loader stops with one line."""
    import shutil

    import datasets

    out, _, _ = built
    copy = tmp_path / "data"
    shutil.copytree(out, copy)
    ds = datasets.load_from_disk(str(copy / "train"))
    gone = Path(ds[3]["image_path"])
    script = tmp_path / "job.py"
    script.write_text(
        "import sys\nfrom grpo_vqa import cli\nfrom grpo_vqa.data.build import load_split\n"
        "from grpo_vqa.training.common import with_images\n"
        "def main():\n    with_images(load_split(sys.argv[1], 'train'))\n    print('ok')\ncli.run(main)\n"
    )
    backup = gone.read_bytes()
    gone.unlink()
    try:
        proc = subprocess.run(
            [sys.executable, str(script), str(copy)], capture_output=True, text=True, env=env(), timeout=300
        )
    finally:
        gone.write_bytes(backup)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert lines == [f"error: {gone}: image file not found"], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    case(
        record_property,
        "train/eval: image deleted after the dataset was built",
        "stop: exit 2, one line naming the file",
        lines[0],
    )
