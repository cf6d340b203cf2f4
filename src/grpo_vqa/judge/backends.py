"""Judge backends: an OpenAI-compatible chat-completions client with bounded retries, and the offline rules."""

from __future__ import annotations

import json
import logging
import random
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import tenacity

from grpo_vqa.judge.prompts import REASK_MESSAGE, Prompt, ReplyParseError, parse_verdict, reasoning_text

log = logging.getLogger(__name__)
RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


@dataclass
class Outcome:
    """What judging one response produced; ``status`` is ``ok``, ``unparseable`` or ``failed``."""

    status: str
    verdict: dict | None = None
    raw_replies: list[str] = field(default_factory=list)
    usage: dict = field(
        default_factory=lambda: {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    )
    requests: int = 0
    retries: int = 0
    latency_s: float = 0.0
    error: str | None = None
    parse_errors: list[str] = field(default_factory=list)


class RequestFailed(RuntimeError):
    """A chat request that failed for good (non-retryable error or retries exhausted)."""

    def __init__(self, message: str, requests: int, retries: int):
        super().__init__(message)
        self.requests = requests
        self.retries = retries


class Redactor:
    """Replaces secrets (e.g. the API key) in any text with ``***``."""

    def __init__(self, secrets: Iterable[str | None] = ()):
        self.secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for s in self.secrets:
            text = text.replace(s, "***")
        return text


class RedactingFilter(logging.Filter):
    """Logging filter that redacts secrets from every formatted record."""

    def __init__(self, redactor: Redactor):
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self.redactor(record.getMessage())
        record.args = None
        if record.exc_info:
            exc = record.exc_info[1]
            record.msg += f" [{type(exc).__name__}: {self.redactor(str(exc))}]"
            record.exc_info = None
            record.exc_text = None
        return True


def backoff_delay(attempt: int, base_s: float, max_s: float, rng: random.Random, retry_after=None) -> float:
    """Exponential backoff with full jitter, at least ``Retry-After`` when given, capped at ``max_s``."""
    delay = rng.uniform(0, min(max_s, base_s * (2**attempt)))
    if retry_after is not None:
        delay = max(delay, retry_after)
    return min(delay, max_s)


def _retry_after(exc: Exception) -> float | None:
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    value = headers.get("retry-after") if headers is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _is_retryable(exc: Exception) -> bool:
    import openai

    if isinstance(exc, openai.APIStatusError):
        return exc.status_code in RETRYABLE_STATUS or exc.status_code >= 500
    return isinstance(
        exc, openai.APIConnectionError | openai.APIResponseValidationError | json.JSONDecodeError
    )


class OpenAIBackend:
    """Chat completions through the ``openai`` client (OpenAI, vLLM, Ollama, ... via ``base_url``).

    The client's own retries are off (it would not retry a malformed 200 body, nor count what it sent):
    :meth:`chat` has tenacity retry 408/409/429/5xx, timeouts, connection errors and malformed bodies up to
    ``max_retries`` times with jittered exponential backoff (at least ``Retry-After``), and counts the
    requests. Unparseable verdicts are asked again once, then reported as ``unparseable``.
    """

    name = "openai"

    def __init__(
        self,
        model: str,
        api_key: str,
        base_url: str | None = None,
        timeout_s: float = 120.0,
        temperature: float | None = None,
        max_retries: int = 5,
        backoff_s: float = 1.0,
        backoff_max_s: float = 60.0,
        seed: int | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        import openai

        self.model = model
        self.temperature = temperature
        self.max_retries = int(max_retries)
        self.backoff_s = float(backoff_s)
        self.backoff_max_s = float(backoff_max_s)
        self.sleep = sleep
        self.rng = random.Random(seed)
        self.redact = Redactor([api_key])
        self.client = openai.OpenAI(api_key=api_key, base_url=base_url, timeout=timeout_s, max_retries=0)

    def chat(self, messages: list[dict]) -> tuple[str, dict, int, int]:
        """One completion, retried by tenacity: returns ``(text, usage, requests, retries)``."""
        kwargs = {"model": self.model, "messages": messages}
        if self.temperature is not None:
            kwargs["temperature"] = self.temperature
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.max_retries + 1),
            retry=tenacity.retry_if_exception(_is_retryable),
            wait=self._wait,
            sleep=self.sleep,
            before_sleep=self._log_retry,
            reraise=True,
        )
        try:
            text, usage = retrying(self._complete, kwargs)
        except Exception as exc:  # noqa: BLE001 - never leaked unredacted
            requests = retrying.statistics.get("attempt_number", 1)
            msg = self.redact(f"{type(exc).__name__}: {exc}")[:500]
            raise RequestFailed(msg, requests, requests - 1) from None
        requests = retrying.statistics["attempt_number"]
        return text, usage, requests, requests - 1

    def _complete(self, kwargs: dict) -> tuple[str, dict]:
        resp = self.client.chat.completions.create(**kwargs)
        if isinstance(resp, str) or not getattr(resp, "choices", None):
            raise json.JSONDecodeError("malformed chat-completions body", str(resp)[:200], 0)
        u = resp.usage
        usage = {
            "prompt_tokens": int(getattr(u, "prompt_tokens", 0) or 0),
            "completion_tokens": int(getattr(u, "completion_tokens", 0) or 0),
            "total_tokens": int(getattr(u, "total_tokens", 0) or 0),
        }
        return resp.choices[0].message.content or "", usage

    def _wait(self, state: tenacity.RetryCallState) -> float:
        """tenacity's wait: full jitter, at least the server's ``Retry-After`` (which tenacity does not read)."""
        exc = state.outcome.exception()
        return backoff_delay(
            state.attempt_number - 1, self.backoff_s, self.backoff_max_s, self.rng, _retry_after(exc)
        )

    def _log_retry(self, state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception()
        msg = self.redact(f"{type(exc).__name__}: {exc}")[:500]
        delay = state.next_action.sleep if state.next_action else 0.0
        log.info("retry %d/%d in %.2fs after %s", state.attempt_number, self.max_retries, delay, msg)

    def judge(self, item: dict, prompt: Prompt) -> Outcome:
        """Judge one response; asks again once when the reply is not the requested JSON."""
        t0 = time.monotonic()
        out = Outcome(status="failed")
        messages = prompt.messages(item)
        for ask in range(2):
            try:
                text, usage, requests, retries = self.chat(messages)
            except RequestFailed as exc:
                out.requests += exc.requests
                out.retries += exc.retries
                out.error = str(exc)
                out.status = "failed"
                break
            out.requests += requests
            out.retries += retries
            for k in out.usage:
                out.usage[k] += usage[k]
            out.raw_replies.append(self.redact(text))
            try:
                out.verdict = parse_verdict(text, prompt.wants_type)
                out.status = "ok"
                break
            except ReplyParseError as exc:
                out.parse_errors.append(str(exc))
                out.status = "unparseable"
                if ask == 0:
                    messages = [
                        *messages,
                        {"role": "assistant", "content": text},
                        {"role": "user", "content": REASK_MESSAGE},
                    ]
        out.latency_s = round(time.monotonic() - t0, 4)
        return out


# --------------------------------------------------------------------------- offline rules backend

_NUMBER_WORDS = {
    "zero": 0, "no": 0, "none": 0, "one": 1, "a single": 1, "two": 2, "three": 3, "four": 4, "five": 5,
    "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12,
}  # fmt: skip
_TRUE = {"true", "yes"}
_FALSE = {"false", "no"}
_NEGATION = re.compile(r"\b(not|n't|no longer|never|neither|nor)\b|n't\b", re.I)
_RESTATEMENT = re.compile(r"\b(statement|caption|claim|question|says|asks|asked)\b", re.I)
# Spatial relations (VSR's common ones); longer phrases first so "on top of" wins over "on".
SPATIAL_RELATIONS = sorted(
    [
        "left of", "right of", "to the left of", "to the right of", "above", "below", "under", "beneath",
        "underneath", "on top of", "over", "on", "in front of", "behind", "inside", "in", "within",
        "outside", "out of", "near", "far from", "far away from", "next to", "beside", "close to",
        "adjacent to", "touching", "at the side of", "at the edge of", "contains", "surrounding",
        "around", "across from", "opposite to", "facing", "facing away from", "parallel to", "along",
        "part of", "attached to", "connected to", "on the left side of", "on the right side of",
        "in the middle of", "at the back of", "past", "toward", "away from", "between", "among",
        "beyond", "by", "into", "off", "with", "has as a part", "enclosed by", "alongside",
    ],
    key=len,
    reverse=True,
)  # fmt: skip
_CANONICAL = {
    "to the left of": "left of", "on the left side of": "left of", "to the right of": "right of",
    "on the right side of": "right of", "beneath": "below", "underneath": "below", "under": "below",
    "beside": "next to", "adjacent to": "next to", "far away from": "far from", "in": "inside",
    "within": "inside", "on": "on top of",
}  # fmt: skip


def _canon(rel: str) -> str:
    rel = re.sub(r"\s+", " ", rel.lower().strip())
    return _CANONICAL.get(rel, rel)


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in re.split(r"(?<=[.!?;\n])\s+", text) if s.strip()]


def _as_bool(answer: str | None) -> bool | None:
    a = (answer or "").strip().strip(".").lower()
    return True if a in _TRUE else False if a in _FALSE else None


def _as_number(text: str | None) -> float | None:
    if text is None:
        return None
    s = str(text).strip().lower().replace(",", "")
    m = re.fullmatch(r"\$?\s*(-?\d+(?:\.\d+)?)\s*\$?\.?", s)
    if m:
        return float(m.group(1))
    if s.strip(".") in _NUMBER_WORDS:
        return float(_NUMBER_WORDS[s.strip(".")])
    m = re.search(r"-?\d+(?:\.\d+)?", s)
    return float(m.group(0)) if m else None


def _numbers_in(sentence: str) -> list[float]:
    out = []
    pattern = r"-?\d+(?:\.\d+)?|\b(?:" + "|".join(w for w in _NUMBER_WORDS if w != "no") + r")\b"
    for tok in re.findall(pattern, sentence.replace(",", ""), flags=re.I):
        tok = tok.lower()
        out.append(float(_NUMBER_WORDS[tok]) if tok in _NUMBER_WORDS else float(tok))
    return out


def _conclusion_bool(sentence: str) -> bool | None:
    """An explicit yes/no conclusion in one sentence ("they match", "the statement is false", ...)."""
    s = sentence.lower()
    neg = bool(_NEGATION.search(s))
    if re.search(r"\b(differ|different|mismatch|disagree|contradict|inconsistent)", s):
        return neg  # "they differ" -> False; "they do not differ" -> True
    if re.search(r"\b(match(es)?|agree(s)?|consistent|same relation|holds|correct|accurate)\b", s):
        return not neg
    if re.search(r"\bincorrect|inaccurate|wrong\b", s):
        return neg
    m = re.search(r"\b(true|false)\b", s)
    if m and not re.search(r"\bis the following statement\b", s):
        val = m.group(1) == "true"
        return (not val) if neg else val
    return None


def _mentions(text: str, phrase: str | None) -> bool:
    if not phrase:
        return False
    words = [w for w in re.findall(r"[a-z]+", phrase.lower()) if len(w) > 2]
    return any(re.search(rf"\b{re.escape(w)}", text.lower()) for w in words)


def _relation_implied(sentences: list[str], item: dict) -> tuple[bool | None, str]:
    """Answer implied by the reasoning for a relation item (``None`` when it implies nothing)."""
    target = item.get("relation")
    if not target:
        m = re.search("|".join(re.escape(r) for r in SPATIAL_RELATIONS), (item.get("caption") or "").lower())
        target = m.group(0) if m else None
    for sent in reversed(sentences):
        c = _conclusion_bool(sent)
        if c is not None:
            return c, f"explicit conclusion: {sent!r}"
    if target:
        observed = [s for s in sentences if not _RESTATEMENT.search(s)]
        for sent in reversed(observed):
            low = sent.lower()
            rels = [r for r in SPATIAL_RELATIONS if re.search(rf"\b{re.escape(r)}\b", low)]
            if not rels:
                continue
            neg = bool(_NEGATION.search(low))
            same = any(_canon(r) == _canon(target) for r in rels)
            if same:
                return (not neg), f"stated relation {target!r}{' negated' if neg else ''}: {sent!r}"
            if not neg:
                return False, f"stated relation {rels[0]!r} differs from {target!r}: {sent!r}"
    return None, "no conclusion or stated relation"


def _count_implied(sentences: list[str]) -> tuple[float | None, str]:
    for sent in reversed(sentences):
        if _RESTATEMENT.search(sent) and not re.search(r"\b(total|count|there (are|is))\b", sent, re.I):
            continue
        nums = _numbers_in(sent)
        if nums:
            return nums[-1], f"stated count {nums[-1]:g}: {sent!r}"
    return None, "no stated count"


def rules_verdict(item: dict) -> dict:
    """Offline baseline judge: does the reasoning's conclusion agree with the final answer?

    Relation items: the last explicit conclusion ("they match/differ", "the statement is true/false", with
    negations) or else the last stated spatial relation (negated or not) vs the statement's relation gives an
    implied True/False, compared with the answer. Counting/math: the last number stated in the reasoning vs
    the numeric answer. Grounding/other: the answer must appear in the reasoning. No reasoning or no answer
    -> ``missing_detail``; reasoning that names none of the question's objects -> ``irrelevant``; conflicting
    implication -> ``contradiction``; an implication that cannot be extracted -> ``missing_detail``.
    """
    reasoning = reasoning_text(item)
    answer = item.get("parsed_answer")
    task = item.get("task") or "other"
    if not reasoning:
        return {"aligns": False, "type": "missing_detail", "why": "the response gives no reasoning"}
    if answer is None or not str(answer).strip():
        return {"aligns": False, "type": "other", "why": "the response gives no parsable final answer"}
    sentences = _sentences(reasoning)
    if task == "relation":
        subj, obj = item.get("subj"), item.get("obj")
        if (subj or obj) and not (_mentions(reasoning, subj) or _mentions(reasoning, obj)):
            return {"aligns": False, "type": "irrelevant", "why": "the reasoning names neither object"}
        ans = _as_bool(str(answer))
        implied, why = _relation_implied(sentences, item)
        if ans is None:
            return {"aligns": False, "type": "other", "why": f"answer {answer!r} is not true/false"}
        if implied is None:
            return {"aligns": False, "type": "missing_detail", "why": why}
        if implied != ans:
            return {
                "aligns": False,
                "type": "contradiction",
                "why": f"implies {implied}, answers {ans}; {why}",
            }
        return {"aligns": True, "type": None, "why": f"implies {implied} as answered; {why}"}
    if task in ("counting", "math"):
        ans = _as_number(str(answer))
        implied, why = _count_implied(sentences)
        if ans is None or implied is None:
            return {
                "aligns": False,
                "type": "missing_detail",
                "why": why if ans is not None else "non-numeric",
            }
        if abs(implied - ans) > 1e-6 * max(1.0, abs(ans)):
            return {"aligns": False, "type": "contradiction", "why": f"{why}; answer {ans:g}"}
        return {"aligns": True, "type": None, "why": f"{why}; answer {ans:g}"}
    norm = re.sub(r"\s+", " ", str(answer).lower()).strip(" .")
    if norm and norm in re.sub(r"\s+", " ", reasoning.lower()):
        return {"aligns": True, "type": None, "why": "the answer appears in the reasoning"}
    return {"aligns": False, "type": "missing_detail", "why": "the answer does not appear in the reasoning"}


class RulesBackend:
    """Offline, deterministic baseline judge (see :func:`rules_verdict`); costs no requests."""

    name = "rules"
    model = "rules-v1"

    def judge(self, item: dict, prompt: Prompt) -> Outcome:
        t0 = time.monotonic()
        verdict = rules_verdict(item)
        if not prompt.wants_type and not verdict["aligns"]:
            verdict = {**verdict, "type": None}
        return Outcome(
            status="ok",
            verdict=verdict,
            raw_replies=[json.dumps(verdict)],
            latency_s=round(time.monotonic() - t0, 6),
        )
