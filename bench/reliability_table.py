"""The reliability table: "input or fault -> expected -> outcome" for every case of tests/test_reliability_*.py.

Each reliability test records its row as JUnit XML properties (``rel_case``, ``rel_expected``,
``rel_outcome``, optionally ``rel_group`` to fold many inputs into one line; tests/reliability_helpers.py).
This script renders those rows, with each test's result, as a Markdown table (and a provenance sidecar):

    python bench/reliability_table.py --run                      # run the suite, then render
    python -m pytest tests/test_reliability_*.py --junitxml=r.xml -o junit_family=xunit1
    python bench/reliability_table.py r.xml

Output: results/tables/reliability.md (``--out``). A test that failed before recording its row is listed
under its test name with the failure message.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections import OrderedDict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SECTIONS = OrderedDict(
    [
        ("test_reliability_config", "Bad config"),
        ("test_reliability_data", "Bad data"),
        ("test_reliability_outputs", "Hostile model outputs (rewards and parsers)"),
        ("test_reliability_faults", "Faults: SIGKILL and stale outputs"),
        ("test_reliability_disk", "Faults: full disk while checkpointing"),
        ("test_reliability_security", "Security"),
    ]
)


def _result(tc: ET.Element) -> tuple[str, str]:
    for tag, word in (("failure", "FAILED"), ("error", "ERROR"), ("skipped", "skipped")):
        el = tc.find(tag)
        if el is not None:
            msg = (el.get("message") or el.text or "").strip().splitlines()
            return word, msg[0][:160] if msg else ""
    return "passed", ""


def read_rows(paths: list[Path]) -> list[dict]:
    """One dict per reliability test case: section, tried, expected, outcome, result, group."""
    rows = []
    for path in paths:
        for tc in ET.parse(path).getroot().iter("testcase"):
            module = (tc.get("classname") or "").split(".")[-1]
            if module not in SECTIONS:
                continue
            props: dict[str, str] = {}
            for p in tc.iter("property"):
                props[p.get("name")] = p.get("value") or ""  # the last value of a repeated name wins
            result, message = _result(tc)
            rows.append(
                {
                    "section": module,
                    "tried": props.get("rel_case") or tc.get("name"),
                    "expected": props.get("rel_expected", "see test"),
                    "outcome": props.get("rel_outcome") or message,
                    "result": result,
                    "message": message,
                    "group": props.get("rel_group"),
                    "seconds": float(tc.get("time") or 0.0),
                }
            )
    return rows


def fold(rows: list[dict]) -> list[dict]:
    """Rows of one ``group`` become one line: how many inputs, how many passed, the failing ones named."""
    out, groups = [], OrderedDict()
    for r in rows:
        if r["group"]:
            groups.setdefault((r["section"], r["group"]), []).append(r)
        else:
            out.append(r)
    for (section, group), members in groups.items():
        passed = [m for m in members if m["result"] == "passed"]
        failed = [m for m in members if m["result"] != "passed"]
        expected = {m["expected"] for m in members}
        outcome = f"{len(passed)}/{len(members)} as expected"
        if failed:
            outcome += "; not: " + "; ".join(f"{m['tried']} ({m['message']})" for m in failed[:5])
        out.append(
            {
                "section": section,
                "tried": f"{group} ({len(members)} inputs)",
                "expected": expected.pop() if len(expected) == 1 else "see tests",
                "outcome": outcome,
                "result": "passed" if not failed else "FAILED",
                "group": group,
                "seconds": sum(m["seconds"] for m in members),
            }
        )
    order = list(SECTIONS)
    return sorted(out, key=lambda r: order.index(r["section"]))  # stable: test order within a section


_TMP = re.compile(r"/tmp/pytest-of-[^/]+/pytest-\d+/")


def _cell(text: str) -> str:
    """One table cell: one line, pipes escaped, pytest's temporary folders shortened to <tmp>/."""
    return _TMP.sub("<tmp>/", " ".join(str(text).split())).replace("|", "\\|")


def render(rows: list[dict]) -> str:
    folded = fold(rows)
    n_pass = sum(r["result"] == "passed" for r in rows)
    lines = [
        "# Reliability: bad inputs, faults and secrets",
        "",
        f"{len(rows)} test cases, {n_pass} passed, {len(rows) - n_pass} not "
        f"({sum(r['seconds'] for r in rows):.0f} s of test time). Rendered by bench/reliability_table.py "
        "from pytest's JUnit XML.",
        "",
    ]
    for module, title in SECTIONS.items():
        section = [r for r in folded if r["section"] == module]
        if not section:
            continue
        lines += [
            f"## {title}",
            "",
            "| # | input / fault | expected | outcome | result |",
            "|---|---|---|---|---|",
        ]
        for i, r in enumerate(section, 1):
            cells = (str(i), r["tried"], r["expected"], r["outcome"], r["result"])
            lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
        lines.append("")
    return "\n".join(lines)


def run_suite(xml: Path, extra: list[str]) -> int:
    tests = sorted(str(p) for p in (REPO / "tests").glob("test_reliability_*.py"))
    # xunit1: the JUnit flavour that carries record_property (xunit2 warns about it)
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        *tests,
        f"--junitxml={xml}",
        "-o",
        "junit_family=xunit1",
        *extra,
    ]
    return subprocess.call(cmd, cwd=REPO)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("junitxml", nargs="*", type=Path, help="pytest --junitxml files (default: --run)")
    ap.add_argument("--run", action="store_true", help="run tests/test_reliability_*.py first")
    ap.add_argument("--pytest-args", default="", help="extra pytest arguments for --run")
    ap.add_argument("--out", type=Path, default=REPO / "results" / "tables" / "reliability.md")
    args = ap.parse_args(argv)
    paths = list(args.junitxml)
    rc = 0
    if args.run or not paths:
        xml = Path(tempfile.mkdtemp(prefix="reliability-")) / "junit.xml"
        rc = run_suite(xml, args.pytest_args.split())
        paths.append(xml)
    for p in paths:
        if not p.is_file():
            print(f"error: {p}: JUnit XML file not found", file=sys.stderr)
            return 2
    rows = read_rows(paths)
    if not rows:
        print(
            f"error: {', '.join(map(str, paths))}: no reliability test cases in the JUnit XML",
            file=sys.stderr,
        )
        return 2
    text = render(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    sys.path.insert(0, str(REPO / "src"))
    from grpo_vqa.provenance import write_sidecar

    write_sidecar(args.out, {"table": "reliability", "junitxml": [str(p) for p in paths]}, paths)
    print(text)
    return rc


if __name__ == "__main__":
    sys.exit(main())
