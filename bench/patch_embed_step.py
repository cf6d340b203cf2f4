"""One warm-start training step of the embedded default's tiny Qwen2.5-VL, with transformers' Conv3d patch
embedding against grpo_vqa's matrix product (grpo_vqa.rollout.patch_embed), in one process, interleaved.

    PYTHONPATH=src python bench/patch_embed_step.py                    # 1 thread (a Snakemake job's), 4 rounds
    PYTHONPATH=src python bench/patch_embed_step.py --threads 2 --rounds 6
    PYTHONPATH=src python bench/patch_embed_step.py --kernel --device cuda     # the embedding alone, 3B dims, bf16

The engine's rollouts use the matmul; training keeps the convolution (grpo_vqa.rollout.patch_embed says why).
Builds the tiny model of config/config.yaml's ``models.qwen`` (random weights, tokenizer trained on the task
text), collates 64 warm-start scenes with TRL's collator, and times full fine-tuning steps (forward, backward,
AdamW) at the warm start's batch of 16. ``--kernel``: the patch embedding alone (forward + backward) at
Qwen2.5-VL-3B's vision dims (1,176 -> 1,280; ``--patches`` rows, 4 images of 448 px by default), bf16 on CUDA.
Prints per-round medians and the ratio; JSON on the last line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import types
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def interleaved(pe, step, rounds: int, steps: int, sync=lambda: None, unit: str = "ms/step") -> dict:
    """Per-round times (ms) of ``steps`` calls of ``step(i)`` (after 3 untimed) with ``pe`` running transformers'
    Conv3d forward and the matmul in turn, ``rounds`` times."""
    from grpo_vqa.rollout.patch_embed import matmul_forward

    forwards = {"conv3d": type(pe).forward, "matmul": matmul_forward}
    times = {name: [] for name in forwards}
    for r in range(rounds):
        for name, fwd in forwards.items():
            pe.forward = types.MethodType(fwd, pe)
            for i in range(3):
                step(i)
            sync()
            t = time.perf_counter()
            for i in range(steps):
                step(i)
            sync()
            times[name].append((time.perf_counter() - t) / steps * 1e3)
            print(f"round {r} {name}: {times[name][-1]:.3f} {unit}", flush=True)
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=4, help="rounds of each setting, interleaved")
    p.add_argument("--steps", type=int, default=12, help="timed steps a round (after 3 untimed)")
    p.add_argument("--kernel", action="store_true", help="time the patch embedding alone at 3B dims")
    p.add_argument("--device", default="cpu")
    p.add_argument("--patches", type=int, default=4 * 32 * 32)
    args = p.parse_args()
    if args.kernel:
        return kernel(args)

    import torch
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    from grpo_vqa.config import fill_defaults, validate_config
    from grpo_vqa.data.pretrain import scene_mix, tokenizer_corpus
    from grpo_vqa.models.loading import load_model, load_processor
    from grpo_vqa.models.tiny import build_tiny_model
    from grpo_vqa.training.warm_start import pretrain_rows

    torch.set_num_threads(args.threads)
    cfg = fill_defaults(validate_config(yaml.safe_load((REPO / "config/config.yaml").read_text())))
    qwen = cfg["models"]["qwen"]
    with tempfile.TemporaryDirectory() as tmp:
        build_tiny_model("qwen2_5_vl", qwen["tiny"], tokenizer_corpus(1, None), Path(tmp) / "m", 1)
        model, processor = load_model(str(Path(tmp) / "m")), load_processor(str(Path(tmp) / "m"))
    rows = pretrain_rows(64, 1, qwen["tiny"]["image_size"], **scene_mix(qwen["pretrain"]))
    collate = DataCollatorForVisionLanguageModeling(processor)
    batches = [collate([dict(rows[i]) for i in range(j, j + 16)]) for j in range(0, 64, 16)]
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step(i: int) -> None:
        model(**batches[i % len(batches)]).loss.backward()
        opt.step()
        opt.zero_grad()

    times = interleaved(model.model.visual.patch_embed, step, args.rounds, args.steps)
    med = {name: statistics.median(v) for name, v in times.items()}
    ratio = med["conv3d"] / med["matmul"]
    print(f"median ms/step: conv3d {med['conv3d']:.1f}, matmul {med['matmul']:.1f}: {ratio:.2f}x")
    print(
        json.dumps({"threads": args.threads, "ms_per_step": med, "speedup": round(ratio, 3), "rounds": times})
    )


def kernel(args) -> None:
    """The patch embedding of Qwen2.5-VL-3B's vision tower, forward + backward, Conv3d against the matmul."""
    import torch
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionPatchEmbed

    from grpo_vqa.rollout.patch_embed import matmul_forward

    torch.set_num_threads(args.threads)
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    pe = Qwen2_5_VisionPatchEmbed(patch_size=14, temporal_patch_size=2, in_channels=3, embed_dim=1280)
    pe = pe.to(args.device, dtype)
    x = torch.randn(args.patches, 3 * 2 * 14 * 14, device=args.device, dtype=dtype)

    def step(i: int):
        pe.zero_grad()
        y = pe(x)
        y.float().square().mean().backward()
        return y

    def sync():
        if args.device == "cuda":
            torch.cuda.synchronize()

    times = interleaved(pe, step, args.rounds, args.steps, sync, unit="ms")
    outs = {}  # each variant's output and weight gradient, outside the timed calls
    for name, fwd in (("conv3d", type(pe).forward), ("matmul", matmul_forward)):
        pe.forward = types.MethodType(fwd, pe)
        outs[name] = (step(0).detach().float(), pe.proj.weight.grad.detach().float())
    med = {name: statistics.median(v) for name, v in times.items()}
    ratio = med["conv3d"] / med["matmul"]
    diff = {
        "out_max_abs": (outs["conv3d"][0] - outs["matmul"][0]).abs().max().item(),
        "out_max": outs["conv3d"][0].abs().max().item(),
        "grad_rel": ((outs["conv3d"][1] - outs["matmul"][1]).norm() / outs["conv3d"][1].norm()).item(),
    }
    print(
        f"median ms (fwd+bwd): conv3d {med['conv3d']:.3f}, matmul {med['matmul']:.3f}: {ratio:.2f}x; {diff}"
    )
    print(
        json.dumps(
            {
                "device": args.device,
                "dtype": str(dtype),
                "patches": args.patches,
                "ms": med,
                "speedup": round(ratio, 3),
                "diff": diff,
                "rounds": times,
            }
        )
    )


if __name__ == "__main__":
    main()
