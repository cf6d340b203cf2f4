"""The prompts of one ``RolloutEngine.generate`` chunk: the record of the left-padded prompts and their images,
how many images each row holds (Qwen2.5-VL's flat patches), and which rows repeat a prompt (prefilled once)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Prompts", "images_per_row", "unique_rows"]


@dataclass
class Prompts:
    """Left-padded prompts and their images as the processor returns them (Qwen2.5-VL: flat ``pixel_values`` +
    ``image_grid_thw``; Idefics3: ``pixel_values`` (B, images, C, H, W) + ``pixel_attention_mask``)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    n_images: list[int]
    pixel_values: torch.Tensor | None = None
    image_grid_thw: torch.Tensor | None = None
    mm_token_type_ids: torch.Tensor | None = None
    pixel_attention_mask: torch.Tensor | None = None


def images_per_row(input_ids, image_token_id, image_grid_thw, merge) -> list[int]:
    """How many images each row holds, from its image-token count and the per-image token counts."""
    if image_grid_thw is None:
        return [0] * input_ids.shape[0]
    per_image = (image_grid_thw.prod(-1) // merge**2).tolist()
    counts = (input_ids == image_token_id).sum(-1).tolist()
    out, j = [], 0
    for n in counts:
        k = 0
        while n > 0:
            if j >= len(per_image):
                raise ValueError("more image tokens than image_grid_thw describes")
            n -= per_image[j]
            j += 1
            k += 1
        if n != 0:
            raise ValueError("image tokens of a row do not match whole images")
        out.append(k)
    if j != len(per_image):
        raise ValueError("image_grid_thw describes more images than the prompts hold")
    return out


def unique_rows(
    input_ids, attention_mask, pixel_values, image_grid_thw, n_images, *, dedupe: bool, model_type: str
):
    """Map each row to a representative row with the same prompt tokens and pixels (every row its own where not
    ``dedupe``; ``model_type`` "idefics3": per-row ``pixel_values``, else Qwen2.5-VL's flat patches)."""
    batch = input_ids.shape[0]
    if not dedupe:
        return list(range(batch)), list(range(batch))
    img_start = [0, *torch.tensor(n_images).cumsum(0).tolist()]
    patches = [0]
    if image_grid_thw is not None:
        patches += image_grid_thw.prod(-1).cumsum(0).tolist()
    rows = [tuple(ids[m.bool()].tolist()) for ids, m in zip(input_ids, attention_mask, strict=True)]
    reps: list[int] = []
    mapping: list[int] = []
    for b in range(batch):
        found = None
        for u, r in enumerate(reps):
            if rows[r] != rows[b] or n_images[r] != n_images[b]:
                continue
            if model_type == "idefics3" and pixel_values is not None:
                if not torch.equal(pixel_values[r], pixel_values[b]):
                    continue
            elif n_images[b]:
                pr = pixel_values[patches[img_start[r]] : patches[img_start[r + 1]]]
                pb = pixel_values[patches[img_start[b]] : patches[img_start[b + 1]]]
                if pr.shape != pb.shape or not torch.equal(pr, pb):
                    continue
            found = u
            break
        if found is None:
            reps.append(b)
            found = len(reps) - 1
        mapping.append(found)
    return reps, mapping
