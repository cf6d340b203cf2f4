"""Judge stage: resumable, concurrent judging of generated responses into one JSONL record per response."""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from datetime import datetime, timezone
from pathlib import Path

from grpo_vqa.io import atomic_write_text, read_json
from grpo_vqa.judge.backends import OpenAIBackend, Outcome, Redactor, RulesBackend
from grpo_vqa.judge.prompts import Prompt, load_prompt
from grpo_vqa.progress import progress

log = logging.getLogger(__name__)
FINAL_STATUSES = ("ok", "unparseable")


def make_backend(cfg: dict, api_key: str | None = None):
    """Build the backend named by ``cfg['backend']``; the key comes from ``OPENAI_API_KEY`` only."""
    if cfg["backend"] == "rules":
        return RulesBackend()
    if cfg["backend"] == "openai":
        key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        if not key:
            if not cfg["base_url"]:
                raise RuntimeError("judge.backend=openai needs the OPENAI_API_KEY environment variable")
            key = "not-needed"  # local OpenAI-compatible servers (vLLM, Ollama) often ignore the key
        return OpenAIBackend(
            model=cfg["model"],
            api_key=key,
            base_url=cfg["base_url"],
            timeout_s=float(cfg["timeout_s"]),
            temperature=cfg["temperature"],
            max_retries=int(cfg["max_retries"]),
            backoff_s=float(cfg["backoff_s"]),
            backoff_max_s=float(cfg["backoff_max_s"]),
        )
    raise ValueError(f"unknown judge backend {cfg['backend']!r}")


def response_sha256(item: dict) -> str:
    """Hash of everything about one response that the judge reads."""
    keys = (
        "task",
        "question",
        "response",
        "reasoning",
        "parsed_answer",
        "relation",
        "subj",
        "obj",
        "caption",
    )
    blob = json.dumps({k: item.get(k) for k in keys}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


def read_responses(path: str | Path) -> list[dict]:
    """``generated_responses_<split>.json`` (a JSON list), or JSONL with one response per line (the
    calibration set). Fields named ``human_*`` are human labels and are dropped: the judge never sees them."""
    if str(path).endswith(".jsonl"):
        with open(path, encoding="utf-8") as fh:
            items = [json.loads(line) for line in fh if line.strip()]
    else:
        items = read_json(path)
    if not isinstance(items, list) or not all(isinstance(it, dict) for it in items):
        raise ValueError(f"{path}: expected a JSON list (or JSONL) of response records")
    return [{k: v for k, v in it.items() if not k.startswith("human_")} for it in items]


def cache_key(prompt: Prompt, model: str, item: dict) -> str:
    """Cache key: prompt version + prompt content hash + judge model + response hash."""
    parts = [prompt.version, prompt.sha256, model, response_sha256(item)]
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


class VerdictCache:
    """Append-only JSONL of final verdicts; one fsync'd ``write`` per record, exclusive ``flock`` per file.

    A record torn by SIGKILL (no trailing newline) is cut off on open, so it can never merge with the next.
    """

    def __init__(self, path: str | Path, redact: Redactor):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.redact = redact
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            raise RuntimeError(f"judge cache {self.path} is in use by another process") from None
        self.records = self._load()

    def _load(self) -> dict[str, dict]:
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            keep = data.rfind(b"\n") + 1
            log.warning("dropping a torn final record (%d bytes) from %s", len(data) - keep, self.path)
            os.ftruncate(self.fd, keep)
            os.fsync(self.fd)
            data = data[:keep]
        out = {}
        for line in data.decode("utf-8").splitlines():
            if line.strip():
                rec = json.loads(line)
                out[rec["cache_key"]] = rec
        return out

    def append(self, rec: dict) -> None:
        line = self.redact(json.dumps(rec, ensure_ascii=False)) + "\n"
        os.write(self.fd, line.encode("utf-8"))
        os.fsync(self.fd)
        self.records[rec["cache_key"]] = rec

    def close(self) -> None:
        os.close(self.fd)


def _cache_record(item: dict, key: str, prompt: Prompt, backend, out: Outcome) -> dict:
    v = out.verdict or {}
    return {
        "cache_key": key,
        "id": str(item["id"]),
        "response_sha256": response_sha256(item),
        "status": out.status,
        "aligns": v.get("aligns"),
        "type": v.get("type"),
        "why": v.get("why"),
        "raw_reply": out.raw_replies[-1] if out.raw_replies else None,
        "raw_replies": out.raw_replies,
        "parse_errors": out.parse_errors,
        "backend": backend.name,
        "model": backend.model,
        "prompt": prompt.name,
        "prompt_version": prompt.version,
        "prompt_sha256": prompt.sha256,
        "latency_s": out.latency_s,
        "requests": out.requests,
        "retries": out.retries,
        "reasked": len(out.raw_replies) > 1,
        "usage": out.usage,
        "judged_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def with_caption_claim(item: dict, where: str | Path) -> dict:
    """The response with its caption as the question the judge reads (``judge.claim: caption``)."""
    if not item.get("caption"):
        raise ValueError(f"{where}: response {item.get('id')!r} has no caption (judge.claim: caption)")
    return {**item, "question": item["caption"]}


def judge_file(
    responses_path: str | Path,
    output_path: str | Path,
    cache_dir: str | Path,
    cfg: dict,
    *,
    run: str | None = None,
    stage: str | None = None,
    split: str | None = None,
    prompt_name: str | None = None,
    prompt_dir: str | Path | None = None,
    backend=None,
) -> dict:
    """Judge the first ``max_items_per_split`` responses, resuming from the cache; returns a summary.

    Every verdict (``ok`` or ``unparseable``) is appended to the cache as it arrives; items that fail for
    good are listed in the output with ``status=failed`` and are retried on the next run. The output JSONL is
    written atomically at the end, in input order.
    """
    prompt = load_prompt(prompt_name or cfg["prompt"], prompt_dir)
    backend = backend or make_backend(cfg)
    redact = getattr(backend, "redact", None) or Redactor([os.environ.get("OPENAI_API_KEY")])
    items = read_responses(responses_path)
    limit = cfg["max_items_per_split"]
    if limit is not None:
        items = items[: int(limit)]
    if cfg["claim"] == "caption":
        items = [with_caption_claim(it, responses_path) for it in items]
    elif cfg["claim"] != "question":
        raise ValueError(f"config key judge.claim: {cfg['claim']!r} not in {{question, caption}}")
    ids = [str(it["id"]) for it in items]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{responses_path}: duplicate response ids")
    cache_path = (
        Path(cache_dir) / f"{_slug(prompt.version)}__{_slug(backend.name)}__{_slug(backend.model)}.jsonl"
    )
    cache = VerdictCache(cache_path, redact)
    keys = [cache_key(prompt, backend.model, it) for it in items]
    todo = [(it, k) for it, k in zip(items, keys, strict=True) if k not in cache.records]
    failed: dict[str, dict] = {}
    stats = {"requests": 0, "retries": 0, "reasked": 0}
    t0 = time.monotonic()
    log.info(
        "judging %d items (%d cached, %d to do) with %s/%s, prompt %s",
        len(items),
        len(items) - len(todo),
        len(todo),
        backend.name,
        backend.model,
        prompt.version,
    )
    workers = max(1, int(cfg["concurrency"]))
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool, progress(total=len(todo), desc="judge") as bar:
            pending = {}
            queue = iter(todo)
            for it, k in queue:
                pending[pool.submit(backend.judge, it, prompt)] = (it, k)
                if len(pending) >= 2 * workers:
                    break
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    it, k = pending.pop(fut)
                    out = fut.result()
                    stats["requests"] += out.requests
                    stats["retries"] += out.retries
                    stats["reasked"] += int(len(out.raw_replies) > 1)
                    rec = _cache_record(it, k, prompt, backend, out)
                    if out.status in FINAL_STATUSES:
                        cache.append(rec)
                    else:
                        rec["error"] = redact(out.error or "unknown error")
                        failed[k] = rec
                        log.warning("item %s failed: %s", it["id"], rec["error"])
                    bar.update(1)
                    nxt = next(queue, None)
                    if nxt is not None:
                        pending[pool.submit(backend.judge, nxt[0], prompt)] = nxt
    finally:
        cache.close()

    lines = []
    counts = {"ok": 0, "unparseable": 0, "failed": 0}
    for it, k in zip(items, keys, strict=True):
        # Identical (question, response) pairs share one cached verdict; each output line keeps its own id.
        rec = dict(cache.records.get(k) or failed[k])
        rec.update(
            id=str(it["id"]),
            run=run,
            stage=stage,
            split=split,
            task=it.get("task"),
            correct=it.get("correct"),
            format_ok=it.get("format_ok"),
            parsed_answer=it.get("parsed_answer"),
            solution=it.get("solution"),
        )
        counts[rec["status"]] += 1
        lines.append(json.dumps(rec, ensure_ascii=False))
    atomic_write_text(output_path, redact("\n".join(lines) + ("\n" if lines else "")))
    summary = {
        "items": len(items),
        "cached_before": len(items) - len(todo),
        "judged_now": len(todo) - len(failed),
        **counts,
        "requests_sent": stats["requests"],
        "retries": stats["retries"],
        "reasked": stats["reasked"],
        "wall_s": round(time.monotonic() - t0, 3),
        "cache": str(cache_path),
    }
    log.info("judge summary %s", json.dumps(summary))
    return summary
