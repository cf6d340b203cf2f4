"""No block of six or more repeated lines in the package and its scripts: pylint's duplicate-code checker
(R0801) with its default notion of "the same text" (comments, docstrings, imports and function signatures
left out). Run it by hand with

    python -m pylint --disable=all --enable=duplicate-code --min-similarity-lines=6 src/grpo_vqa scripts/*.py
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MIN_LINES = 6


def duplicates(*paths: str | Path, cwd: Path = REPO) -> str:
    """pylint's R0801 reports for ``paths`` ('' when there are none)."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pylint",
            "--disable=all",
            "--enable=duplicate-code",
            f"--min-similarity-lines={MIN_LINES}",
            "--score=n",
            *map(str, paths),
        ],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
    )
    assert "No module named pylint" not in out.stderr, "pylint is a test dependency: pip install -e '.[test]'"
    return out.stdout.strip()


def test_no_repeated_block_in_src_and_scripts():
    found = duplicates("src/grpo_vqa", *sorted(REPO.glob("scripts/*.py")))
    assert found == "", f"repeated blocks of {MIN_LINES}+ lines (merge them):\n{found}"


def test_the_check_finds_a_repeated_block(tmp_path):
    block = "".join(f"    total = total + {i} * value\n" for i in range(MIN_LINES))
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    for name in ("a", "b"):
        (pkg / f"{name}.py").write_text(f"def {name}(value):\n    total = 0\n{block}    return total\n")
    assert "R0801" in duplicates("pkg", cwd=tmp_path)
