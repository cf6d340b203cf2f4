"""Every fixture under tests/fixtures works on any machine: no absolute paths, no references to missing files.

A fixture that stores an image as a path into the temporary folder of the machine that generated it passes
there and fails everywhere else (it happened: the mm_open_r1 parquet). This scan reads every fixture file —
JSON, JSON Lines and parquet cell by cell, anything else byte by byte — and fails on any absolute path, on an
embedded image without bytes, and on an image file name that no file of the fixture's group (tests/fixtures/<group>) has.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest

FIXTURES = Path(__file__).resolve().parent / "fixtures"
IMAGE_NAME = re.compile(r"^[^:]*\.(?:jpe?g|png|gif|bmp|webp)$", re.IGNORECASE)
# An absolute POSIX path (/x/y) or a Windows one (C:\ or C:/), not a URL (scheme://host/...).
ABSOLUTE = re.compile(r"^(?:/[^/\s]+/|[A-Za-z]:[\\/])")
# Inside binary files: a path into a machine's own folders.
ABSOLUTE_BYTES = re.compile(
    rb"(?<![A-Za-z0-9:/])/(?:tmp|root|home|Users|var|work|mnt|private)/[A-Za-z0-9_.-]+"
)


def strings_in(value) -> list[str]:
    """Every string held anywhere in a parsed JSON / parquet value."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in strings_in(k) + strings_in(v)]
    if isinstance(value, list | tuple):
        return [s for v in value for s in strings_in(v)]
    return []


def records(path: Path) -> list:
    """The parsed content of a structured fixture file (a list of top-level values)."""
    if path.suffix == ".json":
        return [json.loads(path.read_text())]
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if path.suffix == ".parquet":
        return pq.read_table(path).to_pylist()
    raise ValueError(path)


def fixture_group(path: Path) -> Path:
    """The fixture's group folder (tests/fixtures/<group>), where its images live (a dataset's fixture may
    reuse another's images, e.g. vsr_zeroshot the COCO files of vsr)."""
    rel = path.relative_to(FIXTURES).parts
    return FIXTURES / rel[0] if len(rel) > 1 else path.parent


def problems_in(path: Path) -> list[str]:
    """What makes one fixture file machine-specific (empty when it is self-contained)."""
    found = []
    if path.suffix in (".json", ".jsonl", ".parquet"):
        rows = records(path)
        available = {p.name for p in fixture_group(path).rglob("*") if p.is_file()}
        for row in rows:
            for s in strings_in(row):
                if ABSOLUTE.match(s):
                    found.append(f"absolute path {s!r}")
                elif IMAGE_NAME.match(s) and "://" not in s and Path(s).name not in available:
                    found.append(f"image {s!r} is referenced but no such file is in {fixture_group(path)}")
        if path.suffix == ".parquet":
            for i, row in enumerate(rows):
                for col, v in row.items():
                    if isinstance(v, dict) and set(v) == {"bytes", "path"} and not v["bytes"]:
                        found.append(f"row {i} column {col!r}: image without embedded bytes")
    else:
        found += [f"absolute path {m.group().decode()!r}" for m in ABSOLUTE_BYTES.finditer(path.read_bytes())]
    return found


FILES = sorted(p for p in FIXTURES.rglob("*") if p.is_file())


def test_there_are_fixtures_to_scan():
    assert len(FILES) >= 20
    assert {p.suffix for p in FILES} >= {".json", ".jsonl", ".parquet", ".jpg"}


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(FIXTURES)) for p in FILES])
def test_fixture_is_self_contained(path):
    found = problems_in(path)
    assert not found, f"{path.relative_to(FIXTURES)}: " + "; ".join(found[:5])


def test_the_scan_catches_what_it_is_for(tmp_path, monkeypatch):
    """A parquet image stored as an absolute path without bytes, and a JSON row naming a missing image."""
    import pyarrow as pa

    monkeypatch.setattr(__import__(__name__), "FIXTURES", tmp_path)
    data = tmp_path / "real" / "ds" / "data"
    data.mkdir(parents=True)
    table = pa.Table.from_pylist([{"image": {"bytes": None, "path": "/tmp/fixgen/mm/0.png"}, "problem": "p"}])
    pq.write_table(table, data / "train.parquet")
    (tmp_path / "real" / "ds" / "rows.jsonl").write_text(json.dumps({"image": "gone.jpg"}) + "\n")
    (tmp_path / "real" / "ds" / "blob.bin").write_bytes(b"\x00\x01/home/someone/file\x00")
    parquet = problems_in(data / "train.parquet")
    assert any("absolute path" in p for p in parquet) and any("without embedded bytes" in p for p in parquet)
    assert any("'gone.jpg' is referenced" in p for p in problems_in(tmp_path / "real" / "ds" / "rows.jsonl"))
    assert problems_in(tmp_path / "real" / "ds" / "blob.bin") == ["absolute path '/home/someone'"]
    (tmp_path / "real" / "ds" / "gone.jpg").write_bytes(b"x")
    assert problems_in(tmp_path / "real" / "ds" / "rows.jsonl") == []
