"""A caching front for TRL's vision-language collator: each row's tensors are built once, not once per epoch.

TRL's ``DataCollatorForVisionLanguageModeling`` renders the chat template, tokenizes and preprocesses the image
of every row on every visit. The tiny CPU runs visit each row 5-9 times (the warm start's 2,500 steps over 8,000
scenes, SFT's 750 over 2,000 items), and those calls are a sixth of a Qwen2.5-VL step. :class:`CachedCollator`
collates the rows of a batch it has not seen with TRL's own batched call, cuts that batch into one-row outputs
(:func:`split_rows`) and keeps them; a batch is assembled from kept rows as TRL's batched call lays it out: each
row's tokens flushed left and padded on the right to the longest row (pad token, attention 0, label -100), the
image tensors concatenated in row order. The first batch is checked three ways (TRL's batch = the padded
concatenation of TRL's one-row outputs = the cut rows); on any difference (a processor whose batch is not the
rows' concatenation, e.g. images of different sizes) the cache turns itself off and TRL's collator does the
work. Same tensors, so the same training (tests/test_collate.py).
"""

from __future__ import annotations

import hashlib
import json
import logging

log = logging.getLogger(__name__)

#: Per-token keys and their padding value (other than the pad token for ``input_ids``).
TOKEN_PAD = {"attention_mask": 0, "labels": -100, "mm_token_type_ids": 0, "token_type_ids": 0}


def _images(example: dict) -> list:
    """A row's images, whether it holds them as ``image`` (ours) or ``images`` (TRL's edit of it)."""
    return example.get("images") or ([example["image"]] if example.get("image") is not None else [])


def row_key(example: dict) -> str:
    """A digest of everything TRL's collator reads from a prompt-completion row (texts and image pixels)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps([example.get("prompt"), example.get("completion")], sort_keys=True).encode())
    for img in _images(example):
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
        if self.enabled is None:
            return self._first(examples)
        keys = [row_key(ex) for ex in examples]
        new = {k: ex for k, ex in zip(keys, examples, strict=True) if k not in self.cache}
        self.hits += len(keys) - len(new)
        self.misses += len(new)
        fresh = {}
        if new:
            # the new rows collated together by TRL (its batched call), then cut into rows
            rows = split_rows(self.inner([_copy_row(ex) for ex in new.values()]), list(new.values()))
            if rows is None:
                return self.inner(examples)
            fresh = dict(zip(new, rows, strict=True))
            for k, row in fresh.items():
                self._keep(k, row)
        batch = self.assemble([self.cache.get(k) or fresh[k] for k in keys])
        return self.inner(examples) if batch is None else batch

    def _first(self, examples: list[dict]):
        """The first batch: TRL's batched call, checked against its one-row calls (the batch is their padded
        concatenation) and against cutting it into rows (the cut gives those one-row outputs)."""
        reference = self.inner([_copy_row(ex) for ex in examples])
        singles = [self.inner([_copy_row(ex)]) for ex in examples]
        cut = split_rows(reference, examples)
        batch = self.assemble(singles)
        self.enabled = (
            batch is not None
            and same_batch(batch, reference)
            and cut is not None
            and all(same_batch(a, b) for a, b in zip(cut, singles, strict=True))
        )
        if not self.enabled:
            log.warning("collate cache off: TRL's batch is not the rows' concatenation for this processor")
            return reference
        self.misses += len(examples)
        for ex, row in zip(examples, singles, strict=True):
            self._keep(row_key(ex), row)
        return reference

    def _keep(self, key: str, row) -> None:
        size = sum(v.numel() * v.element_size() for v in row.values() if hasattr(v, "numel"))
        if self.kept_bytes + size <= self.max_bytes:
            self.cache[key] = row
            self.kept_bytes += size

    def assemble(self, rows: list) -> object | None:
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


def split_rows(batch, examples: list[dict]) -> list | None:
    """TRL's batch of ``examples`` cut into one-row outputs, or None where the layout is not known: token rows
    are flushed left (row i's tokens are its first ``attention_mask[i].sum()``); a tensor with one entry per
    row is cut by rows; Qwen2-VL-style ``pixel_values`` (patches of all images stacked) by ``image_grid_thw``."""
    n = len(examples)
    if "attention_mask" not in batch or "input_ids" not in batch:
        return None
    lengths = [int(v) for v in batch["attention_mask"].sum(dim=1)]
    per_image = None
    if "image_grid_thw" in batch:
        counts = [len(_images(ex)) for ex in examples]
        if sum(counts) != batch["image_grid_thw"].shape[0]:
            return None
        patches = [int(p) for p in batch["image_grid_thw"].prod(dim=-1)]
        bounds, i = [], 0
        for c in counts:
            bounds.append((i, i + c))
            i += c
        per_image = (bounds, patches)
    rows = [{} for _ in range(n)]
    for k, v in batch.items():
        if not hasattr(v, "shape"):
            return None
        if k == "input_ids" or k in TOKEN_PAD:
            for i in range(n):
                rows[i][k] = v[i : i + 1, : lengths[i]].clone()
        elif per_image is not None and k in ("pixel_values", "image_grid_thw"):
            bounds, patches = per_image
            for i, (a, b) in enumerate(bounds):
                if k == "image_grid_thw":
                    rows[i][k] = v[a:b].clone()
                else:
                    start = sum(patches[:a])
                    rows[i][k] = v[start : start + sum(patches[a:b])].clone()
        elif v.shape[0] == n:
            for i in range(n):
                rows[i][k] = v[i : i + 1].clone()
        else:
            return None
    return [_like(batch, r) for r in rows]


def install(trainer, processor) -> None:
    """Put a :class:`CachedCollator` in front of ``trainer``'s collator where one process loads the data (no
    data-loader workers: the CPU runs; a worker would fill a cache of its own per epoch)."""
    if trainer.args.dataloader_num_workers == 0:
        trainer.data_collator = CachedCollator(trainer.data_collator, processor.tokenizer.pad_token_id)


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
