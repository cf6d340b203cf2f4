"""Versioned judge prompts (``config/judge_prompts/<name>.v<N>.txt``) and strict parsing of judge replies."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from grpo_vqa.resources import resource_dir

MISALIGNMENT_TYPES = ("contradiction", "missing_detail", "irrelevant", "other")
DEFAULT_PROMPT_DIR = resource_dir("judge_prompts")
_VERSION_RE = re.compile(r"^(?P<name>[a-z0-9_]+)\.v(?P<num>\d+)$")
REASK_MESSAGE = (
    "Your previous reply was not the requested JSON object. Reply again with only one JSON object of the "
    "requested form, with no other text."
)


class ReplyParseError(ValueError):
    """The judge's reply is not the JSON object the prompt asked for."""


@dataclass(frozen=True)
class Prompt:
    """A loaded prompt file: ``version`` is the file stem (e.g. ``taxonomy.v1``), ``sha256`` its content hash."""

    name: str
    version: str
    sha256: str
    system: str
    user: str

    @property
    def wants_type(self) -> bool:
        """Whether the prompt asks for a misalignment type (the taxonomy prompt does, the simple one not)."""
        return '"type"' in self.user

    def messages(self, item: dict) -> list[dict]:
        """Chat messages for one generated response."""
        fields = {
            "task": item.get("task") or "unknown",
            "question": item.get("question") or "",
            "reasoning": reasoning_text(item) or "(no reasoning given)",
            "answer": item.get("parsed_answer") if item.get("parsed_answer") is not None else "(no answer)",
        }
        msgs = []
        if self.system:
            msgs.append({"role": "system", "content": self.system.format(**fields)})
        msgs.append({"role": "user", "content": self.user.format(**fields)})
        return msgs


def reasoning_text(item: dict) -> str:
    """The reasoning the judge reads: ``reasoning`` if present, else the full response text."""
    reasoning = (item.get("reasoning") or "").strip()
    if reasoning:
        return reasoning
    response = item.get("response") or ""
    return re.sub(r"<answer>.*?</answer>", "", response, flags=re.S).strip()


def resolve_prompt_path(prompt: str, prompt_dir: str | Path | None = None) -> Path:
    """``taxonomy`` -> newest ``taxonomy.v<N>.txt``; ``taxonomy.v1`` -> that exact file."""
    prompt_dir = Path(prompt_dir) if prompt_dir else DEFAULT_PROMPT_DIR
    if _VERSION_RE.match(prompt):
        path = prompt_dir / f"{prompt}.txt"
        if not path.is_file():
            raise FileNotFoundError(f"judge prompt {path} not found")
        return path
    found = []
    for path in prompt_dir.glob(f"{prompt}.v*.txt"):
        m = _VERSION_RE.match(path.name[: -len(".txt")])
        if m and m.group("name") == prompt:
            found.append((int(m.group("num")), path))
    if not found:
        raise FileNotFoundError(f"no judge prompt named {prompt!r} in {prompt_dir}")
    return max(found)[1]


def load_prompt(prompt: str, prompt_dir: str | Path | None = None) -> Prompt:
    """Load and split a prompt file into its system and user templates."""
    path = resolve_prompt_path(prompt, prompt_dir)
    raw = path.read_text(encoding="utf-8")
    body = "\n".join(line for line in raw.splitlines() if not line.startswith("#"))
    parts = re.split(r"^=== (SYSTEM|USER) ===\s*$", body, flags=re.M)
    sections = {parts[i]: parts[i + 1].strip("\n") for i in range(1, len(parts) - 1, 2)}
    if "USER" not in sections:
        raise ValueError(f"{path}: missing '=== USER ===' section")
    version = path.name[: -len(".txt")]
    return Prompt(
        name=_VERSION_RE.match(version).group("name"),
        version=version,
        sha256=hashlib.sha256(raw.encode()).hexdigest(),
        system=sections.get("SYSTEM", "").strip(),
        user=sections["USER"].strip(),
    )


def _json_candidates(text: str) -> list[str]:
    text = text.strip()
    fenced = re.findall(r"```(?:json)?\s*(.*?)```", text, flags=re.S)
    cands = [text, *fenced]
    start, end = text.find("{"), text.rfind("}")
    if 0 <= start < end:
        cands.append(text[start : end + 1])
    return cands


def parse_verdict(text: str | None, wants_type: bool = True) -> dict:
    """Parse a judge reply into ``{aligns, type, why}`` or raise :class:`ReplyParseError`.

    Accepts the object bare, in a code fence or surrounded by prose; never guesses a missing field. With
    ``wants_type`` a misaligned verdict must name one of :data:`MISALIGNMENT_TYPES`; aligned verdicts get
    ``type=None``. Without it (simple prompt) ``type`` is ``None`` unless the judge volunteers a valid one.
    """
    if not text or not text.strip():
        raise ReplyParseError("empty reply")
    obj = None
    for cand in _json_candidates(text):
        try:
            val = json.loads(cand)
        except json.JSONDecodeError:
            continue
        if isinstance(val, dict):
            obj = val
            break
    if obj is None:
        raise ReplyParseError("no JSON object in reply")
    aligns = obj.get("aligns")
    if not isinstance(aligns, bool):
        raise ReplyParseError("'aligns' missing or not a boolean")
    why = obj.get("why")
    if not isinstance(why, str):
        raise ReplyParseError("'why' missing or not a string")
    typ = obj.get("type")
    if aligns:
        typ = None
    elif typ in MISALIGNMENT_TYPES:
        pass
    elif wants_type:
        raise ReplyParseError(f"'type' must be one of {MISALIGNMENT_TYPES} when aligns is false")
    else:
        typ = None
    return {"aligns": aligns, "type": typ, "why": why}
