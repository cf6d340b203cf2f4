"""Column names shared by every task dataset saved with ``datasets.Dataset.save_to_disk``.

Every split holds at least :data:`REQUIRED_COLUMNS`. Task-specific columns are optional and named here so
that rewards (which receive dataset columns as keyword arguments from TRL) and loaders agree on them.
"""

REQUIRED_COLUMNS = ("id", "image_path", "problem", "solution", "reasoning", "task")

# VSR-style spatial relation items (the study's columns).
VSR_COLUMNS = ("image_path", "caption", "label", "relation", "subj", "obj")

# Optional columns by task.
#   relation:  caption (str), label (int 0/1), relation (str), subj (str), obj (str)
#   counting:  target_shape (str, plural e.g. "circles"), count (int)
#   grounding: boxes (list[list[float]] ground-truth x1,y1,x2,y2 in pixels), box_labels (list[str]),
#              choices (list[str])
#   math:      (solution holds the LaTeX or plain answer)
TASKS = ("relation", "counting", "grounding", "math")


def vsr_problem(caption: str) -> str:
    """The study's prompt for a VSR caption."""
    return f"Is the following statement true: {caption}"


def vsr_solution(label: int) -> str:
    """The study's answer string for a VSR label (1 → "True")."""
    return "True" if int(label) == 1 else "False"


def prompt_messages(problem: str, system_prompt: str | None) -> list[dict]:
    """Conversational prompt with one image before the question (the chat template places it)."""
    messages = []
    if system_prompt:
        messages.append({"role": "system", "content": [{"type": "text", "text": system_prompt}]})
    messages.append({"role": "user", "content": [{"type": "image"}, {"type": "text", "text": problem}]})
    return messages
