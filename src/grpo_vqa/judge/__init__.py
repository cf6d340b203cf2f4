"""LLM-as-judge alignment scoring: prompts, backends (OpenAI-compatible, offline rules), runner, statistics."""

from grpo_vqa.judge.backends import OpenAIBackend, Outcome, Redactor, RulesBackend, rules_verdict
from grpo_vqa.judge.prompts import MISALIGNMENT_TYPES, Prompt, ReplyParseError, load_prompt, parse_verdict
from grpo_vqa.judge.runner import judge_file, make_backend

__all__ = [
    "MISALIGNMENT_TYPES",
    "OpenAIBackend",
    "Outcome",
    "Prompt",
    "Redactor",
    "ReplyParseError",
    "RulesBackend",
    "judge_file",
    "load_prompt",
    "make_backend",
    "parse_verdict",
    "rules_verdict",
]
