"""Judge stage against a real fake chat-completions server on 127.0.0.1: retries, reasks, resume, secrets."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from config_helpers import judge_section  # noqa: E402
from fake_openai_server import FakeOpenAIServer, make_responses  # noqa: E402

from grpo_vqa.judge.backends import Redactor  # noqa: E402
from grpo_vqa.judge.runner import VerdictCache, judge_file  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
KEY = "sk-test-DO-NOT-LEAK-7f3a9c1e"


def cfg(srv, **kw):
    base = {
        "backend": "openai",
        "model": "o4-mini",
        "base_url": srv.base_url,
        "prompt": "taxonomy",
        "concurrency": 4,
        "max_items_per_split": None,
        "temperature": None,
        "timeout_s": 1.0,
        "max_retries": 3,
        "backoff_s": 0.01,
        "backoff_max_s": 0.05,
    }
    return judge_section(**(base | kw))


@pytest.fixture
def env_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)


def write_items(tmp_path, n, seed=0):
    path = tmp_path / "generated_responses_test.json"
    path.write_text(json.dumps(make_responses(n, seed)))
    return path


def read_jsonl(path):
    return [json.loads(x) for x in Path(path).read_text().splitlines() if x.strip()]


def test_ok_run_writes_one_record_per_item_in_order(tmp_path, env_key):
    resp = write_items(tmp_path, 12)
    with FakeOpenAIServer() as srv:
        s = judge_file(
            resp, tmp_path / "out.jsonl", tmp_path / "cache", cfg(srv), run="r", stage="base", split="test"
        )
        assert srv.total == 12 and "temperature" not in srv.last_body
        assert srv.auth_headers[-1] == f"Bearer {KEY}"
    recs = read_jsonl(tmp_path / "out.jsonl")
    assert [r["id"] for r in recs] == [it["id"] for it in make_responses(12)]
    assert all(r["status"] == "ok" and r["aligns"] is True for r in recs)
    r = recs[0]
    assert (r["model"], r["prompt_version"], r["run"], r["stage"], r["split"]) == (
        "o4-mini",
        "taxonomy.v1",
        "r",
        "base",
        "test",
    )
    assert (
        r["usage"]["total_tokens"] == 120
        and r["latency_s"] > 0
        and json.loads(r["raw_reply"])["aligns"] is True
    )
    assert s["requests_sent"] == 12 and s["ok"] == 12 and s["retries"] == 0


def test_max_items_and_temperature_are_applied(tmp_path, env_key):
    resp = write_items(tmp_path, 10)
    with FakeOpenAIServer() as srv:
        judge_file(
            resp, tmp_path / "o.jsonl", tmp_path / "c", cfg(srv, max_items_per_split=4, temperature=0.3)
        )
        assert srv.total == 4 and srv.last_body["temperature"] == 0.3


def test_429_500_hang_badbody_are_retried_with_bounded_backoff(tmp_path, env_key):
    resp = write_items(tmp_path, 6)
    with FakeOpenAIServer(hang_s=3.0, retry_after="0") as srv:
        srv.item_script = {
            "item0000": ["429", "429", "ok"],
            "item0001": ["500", "503", "ok"],
            "item0002": ["hang", "ok"],
            "item0003": ["badbody", "ok"],
        }
        t0 = time.monotonic()
        s = judge_file(resp, tmp_path / "o.jsonl", tmp_path / "c", cfg(srv, timeout_s=0.5))
        assert time.monotonic() - t0 < 10
        assert srv.total == 6 + 2 + 2 + 1 + 1
    recs = {r["id"]: r for r in read_jsonl(tmp_path / "o.jsonl")}
    assert all(r["status"] == "ok" for r in recs.values())
    assert [recs[f"item000{i}"]["retries"] for i in range(5)] == [2, 2, 1, 1, 0]
    assert s["retries"] == 6 and s["requests_sent"] == 12


def test_persistent_failure_is_listed_and_rerun_judges_only_missing(tmp_path, env_key):
    resp = write_items(tmp_path, 8)
    with FakeOpenAIServer() as srv:
        srv.item_script = {"item0005": ["500"] * 4}
        s1 = judge_file(resp, tmp_path / "o.jsonl", tmp_path / "c", cfg(srv, max_retries=3))
        recs = {r["id"]: r for r in read_jsonl(tmp_path / "o.jsonl")}
        assert s1["failed"] == 1 and s1["ok"] == 7 and srv.by_item["item0005"] == 4
        assert recs["item0005"]["status"] == "failed" and "500" in recs["item0005"]["error"]
        before = dict(srv.by_item)
        s2 = judge_file(resp, tmp_path / "o.jsonl", tmp_path / "c", cfg(srv))
        assert s2["cached_before"] == 7 and s2["requests_sent"] == 1 and s2["failed"] == 0
        assert {k: v - before.get(k, 0) for k, v in srv.by_item.items() if v != before.get(k, 0)} == {
            "item0005": 1
        }
    assert all(r["status"] == "ok" for r in read_jsonl(tmp_path / "o.jsonl"))


def test_non_json_reply_is_asked_again_once_then_unparseable(tmp_path, env_key):
    resp = write_items(tmp_path, 4)
    with FakeOpenAIServer() as srv:
        srv.item_script = {"item0000": ["nonjson", "ok"], "item0001": ["nonjson", "nonjson", "ok"]}
        s = judge_file(resp, tmp_path / "o.jsonl", tmp_path / "c", cfg(srv))
        recs = {r["id"]: r for r in read_jsonl(tmp_path / "o.jsonl")}
        assert recs["item0000"]["status"] == "ok" and recs["item0000"]["reasked"] is True
        bad = recs["item0001"]
        assert bad["status"] == "unparseable" and bad["aligns"] is None and bad["type"] is None
        assert len(bad["raw_replies"]) == 2 and len(bad["parse_errors"]) == 2 and bad["requests"] == 2
        assert s["unparseable"] == 1 and s["reasked"] == 2 and srv.total == 6
        # the unparseable verdict was paid for: a rerun does not ask again
        s2 = judge_file(resp, tmp_path / "o.jsonl", tmp_path / "c", cfg(srv))
        assert s2["requests_sent"] == 0 and s2["unparseable"] == 1 and srv.total == 6


def test_cache_key_covers_prompt_and_model(tmp_path, env_key):
    resp = write_items(tmp_path, 3)
    with FakeOpenAIServer() as srv:
        judge_file(resp, tmp_path / "o.jsonl", tmp_path / "c", cfg(srv))
        judge_file(resp, tmp_path / "o2.jsonl", tmp_path / "c", cfg(srv, prompt="simple"))
        judge_file(resp, tmp_path / "o3.jsonl", tmp_path / "c", cfg(srv, model="gpt-4o"))
        judge_file(resp, tmp_path / "o4.jsonl", tmp_path / "c", cfg(srv, model="gpt-4o"))
        assert srv.total == 9
    assert read_jsonl(tmp_path / "o3.jsonl")[0]["model"] == "gpt-4o"
    assert read_jsonl(tmp_path / "o2.jsonl")[0]["prompt_version"] == "simple.v1"


def test_cache_drops_torn_record_and_refuses_concurrent_use(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"cache_key": "a", "status": "ok"}) + "\n" + '{"cache_key": "b", "sta')
    cache = VerdictCache(path, Redactor())
    assert set(cache.records) == {"a"}
    with pytest.raises(RuntimeError, match="in use"):
        VerdictCache(path, Redactor())
    cache.append({"cache_key": "c", "status": "ok"})
    cache.close()
    assert [json.loads(x)["cache_key"] for x in path.read_text().splitlines()] == ["a", "c"]


def test_api_key_never_written_logged_or_raised(tmp_path, env_key):
    """The fake server echoes the Authorization header in error bodies and is told to fail hard."""
    resp = write_items(tmp_path, 6)
    with FakeOpenAIServer() as srv:
        srv.item_script = {"item0001": ["echo_auth"] * 3, "item0002": ["echo_auth", "ok"]}
        c = json.dumps(cfg(srv, max_retries=2))
        env = {**os.environ, "OPENAI_API_KEY": KEY, "PYTHONPATH": str(REPO / "src")}
        args = [sys.executable, str(REPO / "scripts/judge_responses.py"), "--responses", str(resp)]
        args += [
            "--output",
            str(tmp_path / "o.jsonl"),
            "--cache-dir",
            str(tmp_path / "c"),
            "--config-json",
            c,
        ]
        proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2, proc.stderr  # one item failed > max_failed_fraction 0
        assert "bad key Bearer ***" in proc.stderr
        # a crash path: unreadable input raising an exception whose message holds the key
        bad = tmp_path / KEY
        proc2 = subprocess.run(
            [*args[:3], str(bad), *args[4:]], env=env, capture_output=True, text=True, timeout=60
        )
        assert proc2.returncode == 1 and "judge failed" in proc2.stderr
    rec = {r["id"]: r for r in read_jsonl(tmp_path / "o.jsonl")}
    assert rec["item0001"]["status"] == "failed" and rec["item0002"]["status"] == "ok"
    blobs = [proc.stdout, proc.stderr, proc2.stdout, proc2.stderr]
    blobs += [
        p.read_text()
        for p in tmp_path.rglob("*")
        if p.is_file() and p.name != "generated_responses_test.json"
    ]
    assert len(blobs) >= 6 and not any(KEY in b for b in blobs)


def test_sigkill_mid_run_then_rerun_pays_for_nothing_twice(tmp_path):
    n = 40
    resp = write_items(tmp_path, n)
    out, cache_dir = tmp_path / "o.jsonl", tmp_path / "c"
    with FakeOpenAIServer(delay_s=0.15) as srv:
        c = json.dumps(cfg(srv, concurrency=4, timeout_s=5.0))
        env = {**os.environ, "OPENAI_API_KEY": KEY, "PYTHONPATH": str(REPO / "src")}
        args = [sys.executable, str(REPO / "scripts/judge_responses.py"), "--responses", str(resp)]
        args += ["--output", str(out), "--cache-dir", str(cache_dir), "--config-json", c]
        proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        cache_file = cache_dir / "taxonomy.v1__openai__o4-mini.jsonl"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if cache_file.exists() and len(cache_file.read_text().splitlines()) >= 10:
                break
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        assert not out.exists()  # Snakemake never sees a partial output
        cached_ids = {json.loads(x)["id"] for x in cache_file.read_text().splitlines() if x.endswith("}")}
        assert 10 <= len(cached_ids) < n
        before = dict(srv.by_item)
        assert all(before[i] == 1 for i in cached_ids)
        rerun = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60)
        assert rerun.returncode == 0, rerun.stderr
        summary = json.loads(rerun.stdout.strip().splitlines()[-1])
        assert all(srv.by_item[i] == 1 for i in cached_ids)  # no cached verdict paid for twice
        assert (
            summary["cached_before"] >= len(cached_ids)
            and summary["requests_sent"] == n - summary["cached_before"]
        )
    recs = read_jsonl(out)
    assert len(recs) == n and all(r["status"] == "ok" for r in recs)
    assert (tmp_path / "o.jsonl.provenance.json").exists()


def test_faulty_server_200_items_counts(tmp_path, env_key, capsys):
    """200 items against a server that injects 429/5xx/hangs/bad bodies/non-JSON at random (seeded)."""
    resp = write_items(tmp_path, 200, seed=1)
    rates = {"429": 0.10, "500": 0.05, "503": 0.03, "hang": 0.02, "badbody": 0.02, "nonjson": 0.08}
    with FakeOpenAIServer(fault_rates=rates, seed=7, hang_s=2.0) as srv:
        c = cfg(srv, concurrency=16, timeout_s=0.5, max_retries=6)
        s = judge_file(resp, tmp_path / "o.jsonl", tmp_path / "c", c)
        # A request that timed out before the (loaded) server accepted it is counted by the client only, and
        # retried; so the client's count may exceed the server's by at most its retries.
        unseen = s["requests_sent"] - srv.total
        assert 0 <= unseen <= s["retries"]
        assert s["ok"] + s["unparseable"] + s["failed"] == 200
        recs = read_jsonl(tmp_path / "o.jsonl")
        assert len(recs) == 200 and sum(r["status"] == "unparseable" for r in recs) == s["unparseable"]
        assert s["retries"] == sum(srv.by_mode[m] for m in ("429", "500", "503", "hang", "badbody")) + unseen
        assert s["reasked"] >= 1 and s["failed"] == 0
        s2 = judge_file(resp, tmp_path / "o.jsonl", tmp_path / "c", c)
        assert s2["requests_sent"] == 0
        with capsys.disabled():
            print("\nfaulty-server run:", json.dumps({"summary": s, "server_by_mode": dict(srv.by_mode)}))


def test_identical_responses_share_a_verdict_but_keep_their_ids(tmp_path):
    """Two items with the same question and response are judged once; the output names both ids."""
    from grpo_vqa.judge.runner import judge_file

    item = {
        "task": "relation",
        "question": "Is the following statement true: The red circle is left of the blue square.",
        "response": "<think>I see the red circle left of the blue square. The statement says left of. "
        "They match.</think><answer>True</answer>",
        "reasoning": "I see the red circle left of the blue square. The statement says left of. They match.",
        "parsed_answer": "True",
        "solution": "True",
        "correct": True,
        "format_ok": True,
        "relation": "left of",
        "caption": "The red circle is left of the blue square.",
    }
    items = [item | {"id": "a"}, item | {"id": "b"}]
    responses = tmp_path / "generated_responses_test.json"
    responses.write_text(json.dumps(items))
    out = tmp_path / "judged.jsonl"
    cfg = judge_section(
        backend="rules", model="rules", prompt="taxonomy", concurrency=1, max_items_per_split=None
    )
    judge_file(
        responses, out, tmp_path / "cache", cfg, run="r", stage="grpo", split="test", prompt_name="taxonomy"
    )
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in recs] == ["a", "b"]
    assert recs[0]["aligns"] == recs[1]["aligns"] is True
