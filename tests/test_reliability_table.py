"""bench/reliability_table.py: JUnit XML properties -> the Markdown reliability table."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("reliability_table", REPO / "bench" / "reliability_table.py")
table = importlib.util.module_from_spec(spec)
spec.loader.exec_module(table)

XML = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" tests="6">
 <testcase classname="tests.test_reliability_config" name="test_a[x]" time="0.5">
  <properties><property name="rel_case" value="config: a | b"/><property name="rel_expected" value="stop"/>
  <property name="rel_outcome" value="config key a: bad"/></properties></testcase>
 <testcase classname="tests.test_reliability_outputs" name="test_r[1]" time="0.1">
  <properties><property name="rel_case" value="reward acc: empty"/><property name="rel_expected" value="in [0, 1]"/>
  <property name="rel_outcome" value="0"/><property name="rel_group" value="reward acc: hostile"/></properties></testcase>
 <testcase classname="tests.test_reliability_outputs" name="test_r[2]" time="0.1">
  <properties><property name="rel_case" value="reward acc: None"/><property name="rel_expected" value="in [0, 1]"/>
  <property name="rel_outcome" value="0"/><property name="rel_group" value="reward acc: hostile"/></properties>
  <failure message="AssertionError: 2.0 out of range">trace</failure></testcase>
 <testcase classname="tests.test_reliability_faults" name="test_kill" time="30">
  <failure message="AssertionError: the rerun did not resume&#10;more">trace</failure></testcase>
 <testcase classname="tests.test_reliability_faults" name="test_hyp" time="1">
  <properties><property name="rel_case" value="first"/><property name="rel_case" value="last"/>
  <property name="rel_expected" value="e"/><property name="rel_outcome" value="o"/></properties></testcase>
 <testcase classname="tests.test_other" name="test_unrelated" time="1"/>
</testsuite></testsuites>
"""


def test_table_renders_rows_folds_groups_and_reports_failures(tmp_path):
    xml = tmp_path / "junit.xml"
    xml.write_text(XML)
    out = tmp_path / "reliability.md"
    assert table.main([str(xml), "--out", str(out)]) == 0
    md = out.read_text()
    assert "5 test cases, 3 passed, 2 not" in md  # the unrelated test is not a reliability case
    assert "| 1 | config: a \\| b | stop | config key a: bad | passed |" in md
    # two hostile inputs folded into one line, the failing one named with its message
    assert (
        "| 1 | reward acc: hostile (2 inputs) | in [0, 1] | 1/2 as expected; not: reward acc: None "
        "(AssertionError: 2.0 out of range) | FAILED |"
    ) in md
    # a test that failed before recording its row shows its name and first message line
    assert "| 1 | test_kill | see test | AssertionError: the rerun did not resume | FAILED |" in md
    assert "| 2 | last | e | o | passed |" in md  # repeated properties: the last wins
    assert md.index("## Bad config") < md.index("## Hostile model outputs") < md.index("## Faults: SIGKILL")
    side = json.loads((tmp_path / "reliability.md.provenance.json").read_text())
    assert side["config"]["table"] == "reliability" and str(xml) in side["inputs"]


def test_table_refuses_xml_without_reliability_cases(tmp_path, capsys):
    xml = tmp_path / "junit.xml"
    xml.write_text(
        '<testsuites><testsuite><testcase classname="tests.test_core" name="t"/></testsuite></testsuites>'
    )
    assert table.main([str(xml), "--out", str(tmp_path / "r.md")]) == 2
    assert "no reliability test cases" in capsys.readouterr().err
    assert table.main([str(tmp_path / "missing.xml"), "--out", str(tmp_path / "r.md")]) == 2
