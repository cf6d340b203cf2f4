"""A caching front for TRL's vision-language collator: each row's tensors are built once, not once per epoch.

TRL's ``DataCollatorForVisionLanguageModeling`` renders the chat template, tokenizes and preprocesses the image
of every row on every visit. The tiny CPU runs visit each row 5-9 times (the warm start's 2,500 steps over 8,000
scenes, SFT's 750 over 2,000 items), and those calls are a sixth of a Qwen2.5-VL step. :class:`CachedCollator`
calls TRL's collator on a row the first time it sees it (one row at a time), keeps the result, and assembles a
batch from the kept rows as TRL's batched call lays it out: each row's tokens flushed left and padded on the right
to the longest row (pad token, attention 0, label -100), the image tensors concatenated in row order. The first
batch is also collated by TRL's own batched call and compared tensor by tensor; on any difference (a processor
whose batch is not the rows' concatenation, e.g. images of different sizes) the cache turns itself off and TRL's
collator does the work. Same tensors, so the same training (tests/test_collate.py).
"""

from __future__ import annotations

import hashlib
import json
import logging

log = logging.getLogger(__name__)

#: Per-token keys and their padding value (other than the pad token for ``input_ids``).
TOKEN_PAD = {"attention_mask": 0, "labels": -100, "mm_token_type_ids": 0, "token_type_ids": 0}


def row_key(example: dict) -> str:
    """A digest of everything TRL's collator reads from a prompt-completion row (texts and image pixels)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps([example.get("prompt"), example.get("completion")], sort_keys=True).encode())
    images = example.get("images") or ([example["image"]] if example.get("image") is not None else [])
    for img in images:
        h.update(f"{img.mode}{img.size}".encode())
        h.update(img.tobytes())
    return h.hexdigest()


class CachedCollator:
    """Wraps a TRL vision-language collator (``inner``); ``max_bytes`` caps the tensors kept (past it, new rows
    are collated as before and not kept)."""

    def __init__(self, inner, pad_token_id: int, max_bytes: int = 4 << 30):
        self.inner, self.pad_token_id, self.max_bytes = inner, int(pad_token_id), int(max_bytes)
        self.cache: dict[str, dict] = {}
        self.kept_bytes = 0
        self.enabled: bool | None = None  # None until the first batch has been checked
        self.hits = self.misses = 0

    def __call__(self, examples: list[dict]):
        if self.enabled is False or "prompt" not in examples[0]:
            return self.inner(examples)
        rows = [self._row(ex) for ex in examples]
        batch = self.assemble(rows)
        if self.enabled is None:
            # TRL's collator edits its rows in place: give it fresh copies of what came in
            reference = self.inner([_copy_row(ex) for ex in examples])
            self.enabled = batch is not None and same_batch(batch, reference)
            if not self.enabled:
                log.warning(
                    "collate cache off: TRL's batch is not the rows' concatenation for this processor"
                )
                self.cache.clear()
                return reference
        if batch is None:  # rows whose images cannot be concatenated
            return self.inner(examples)
        return batch

    def _row(self, example: dict) -> dict:
        key = row_key(example)
        row = self.cache.get(key)
        if row is not None:
            self.hits += 1
            return row
        self.misses += 1
        row = self.inner([_copy_row(example)])
        size = sum(v.numel() * v.element_size() for v in row.values() if hasattr(v, "numel"))
        if self.kept_bytes + size <= self.max_bytes:
            self.cache[key] = row
            self.kept_bytes += size
        return row

    def assemble(self, rows: list[dict]):
        """The batch of one-row outputs ``rows`` as TRL's batched call builds it, or None if the rows' non-token
        tensors cannot be concatenated (different keys or shapes)."""
        import torch

        keys = list(rows[0])
        if any(list(r) != keys for r in rows):
            return None
        width = max(r["input_ids"].shape[1] for r in rows)
        out = {}
        for k in keys:
            vals = [r[k] for r in rows]
            if k == "input_ids" or k in TOKEN_PAD:
                pad = self.pad_token_id if k == "input_ids" else TOKEN_PAD[k]
                out[k] = torch.cat(
                    [torch.nn.functional.pad(v, (0, width - v.shape[1]), value=pad) for v in vals]
                )
            elif all(hasattr(v, "shape") and v.shape[1:] == vals[0].shape[1:] for v in vals):
                out[k] = torch.cat(vals)
            else:
                return None
        return _like(rows[0], out)


def _like(template, data: dict):
    """``data`` in the mapping type TRL's collator returns (a BatchFeature keeps ``.to``)."""
    try:
        return type(template)(data)
    except TypeError:
        return data


def _copy_row(example: dict) -> dict:
    """A copy deep enough that TRL's in-place edits (``image`` -> ``images``, prompt messages) leave ours alone."""
    import copy

    return {k: (v if k in ("image", "images") else copy.deepcopy(v)) for k, v in example.items()}


def same_batch(a, b) -> bool:
    """Same keys, and every tensor equal in shape, dtype and values."""
    import torch

    if set(a) != set(b):
        return False
    for k in a:
        x, y = a[k], b[k]
        if hasattr(x, "shape") != hasattr(y, "shape"):
            return False
        if hasattr(x, "shape"):
            if x.shape != y.shape or x.dtype != y.dtype or not torch.equal(x, y):
                return False
        elif x != y:
            return False
    return True
