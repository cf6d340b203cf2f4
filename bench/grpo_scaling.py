"""GRPO data-parallel scaling at Qwen2.5-VL-3B dims (random bf16 weights, LoRA r16 on q,v, TRL GRPOTrainer).

Weak scaling: every process keeps the same per-device batch (``--per-device`` completions, ``--gens`` per
prompt), so N processes do N times the samples per optimizer step. Each configuration is started through
:func:`grpo_vqa.launch.launch_argv` -- the launcher the training rules use (plain python for 1 process,
``accelerate launch`` with config/accelerate/{ddp,zero2}.yaml for more) -- in a fresh set of processes.

  python bench/grpo_scaling.py all [--procs 1,2] [--zero2]    # on a machine with >= 2 GPUs; writes
                                                              # bench/results/grpo_scaling_<device>.json
  python bench/grpo_scaling.py step --label ddp_1             # one configuration (started by `all`)

NCCL variables are left as the machine sets them (NCCL_NVLS_ENABLE is not touched).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from grpo_rollouts import QUESTIONS, build_3b, device_name, processor_and_token_ids, slug, sync  # noqa: E402

from grpo_vqa.launch import launch_argv  # noqa: E402


def step(args) -> dict:
    """Time GRPO steps in this process (one rank of a launch); rank 0 writes ``args.out``."""
    from datasets import Dataset
    from PIL import Image
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    torch.cuda.set_device(local)
    proc, token_ids = processor_and_token_ids()
    t_load = time.perf_counter()
    model = build_3b(token_ids=token_ids, device=f"cuda:{local}")
    load_s = time.perf_counter() - t_load
    steps = args.warmup + args.steps
    global_batch = args.per_device * world
    n_prompts = (global_batch // args.gens) * (steps + 1)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)) for _ in range(n_prompts)]
    ds = Dataset.from_dict(
        {
            "prompt": [
                [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}] for i in range(n_prompts)
            ],
            "image": images,
        }
    )

    def reward(completions, **kw):
        return [float("<answer>" in c[0]["content"]) + 0.01 * (len(c[0]["content"]) % 7) for c in completions]

    class Timer(TrainerCallback):
        def __init__(self):
            self.times, self.t0 = [], None

        def on_step_begin(self, *a, **k):
            sync()
            self.t0 = time.perf_counter()

        def on_step_end(self, *a, **k):
            sync()
            self.times.append(time.perf_counter() - self.t0)

    micro = min(args.micro, args.per_device)
    accum = args.per_device // micro
    cfg = GRPOConfig(
        output_dir=f"/tmp/grpo_scaling_{args.label}",
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=accum,
        steps_per_generation=accum,
        num_generations=args.gens,
        max_completion_length=args.completion,
        bf16=True,
        gradient_checkpointing=False,
        learning_rate=1e-5,
        max_steps=steps,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        seed=0,
        dataloader_num_workers=0,
    )
    timer = Timer()
    trainer = GRPOTrainer(
        model=model,
        processing_class=proc,
        reward_funcs=[reward],
        args=cfg,
        train_dataset=ds,
        callbacks=[timer],
    )
    torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    trainer.train()
    total = time.perf_counter() - t
    timed = timer.times[args.warmup :]
    step_s = float(np.mean(timed))
    lengths = [
        h["completions/mean_length"] for h in trainer.state.log_history if "completions/mean_length" in h
    ]
    out = {
        "label": args.label,
        "processes": world,
        "distributed_type": str(trainer.accelerator.distributed_type),
        "per_device_completions": args.per_device,
        "global_completions_per_step": global_batch,
        "num_generations": args.gens,
        "micro_batch": micro,
        "max_completion_length": args.completion,
        "warmup_steps": args.warmup,
        "steps_timed": len(timed),
        "step_times_s": timer.times,
        "step_s": step_s,
        "steps_per_s": 1.0 / step_s,
        "samples_per_s": global_batch / step_s,
        "mean_completion_len": lengths,
        "peak_mem_GB_rank0": torch.cuda.max_memory_allocated() / 1e9,
        "model_build_s": load_s,
        "train_wall_s": total,
        "device": device_name(),
    }
    trainer.accelerator.wait_for_everyone()
    if rank == 0:
        Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
        print(
            json.dumps({k: out[k] for k in ("label", "processes", "steps_per_s", "samples_per_s")}),
            flush=True,
        )
    return out


def run_all(args) -> dict:
    import accelerate
    import transformers
    import trl

    results = {
        "device": device_name(),
        "gpus_visible": torch.cuda.device_count(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trl": trl.__version__,
        "accelerate": accelerate.__version__,
        "nccl_env": {k: v for k, v in os.environ.items() if k.startswith("NCCL_")},
        "setup": "weak scaling: same per-device batch; Qwen2.5-VL-3B dims, random bf16 weights, LoRA r16 q,v",
        "runs": {},
    }
    plan = [
        (f"ddp_{n}", {"num_processes": n, "num_machines": 1, "deepspeed_stage": None}) for n in args.procs
    ]
    if args.zero2:
        plan.append(("zero2_2", {"num_processes": 2, "num_machines": 1, "deepspeed_stage": 2}))
    out_path = Path(args.out or f"bench/results/grpo_scaling_{slug(device_name())}.json")
    start = time.perf_counter()
    for label, launch in plan:
        left = args.budget - (time.perf_counter() - start)
        if left < 60:
            results["runs"][label] = {"skipped": "time budget"}
            continue
        part = Path(f"/tmp/grpo_scaling_{label}.json")
        part.unlink(missing_ok=True)
        script = [__file__, "step", "--label", label, "--out", str(part)]
        script += ["--per-device", str(args.per_device), "--gens", str(args.gens), "--micro", str(args.micro)]
        script += [
            "--steps",
            str(args.steps),
            "--warmup",
            str(args.warmup),
            "--completion",
            str(args.completion),
        ]
        cmd = launch_argv(launch, script, cuda=True)
        print("[scaling] " + " ".join(cmd), flush=True)
        t = time.perf_counter()
        log = Path(args.log_dir) / f"{label}.log" if args.log_dir else Path(f"/tmp/{label}.log")
        try:
            # one process with several GPUs visible would make the Trainer wrap the model in nn.DataParallel
            # (GRPOTrainer refuses it): show it one GPU, as SLURM does for a 1-GPU job
            env = dict(os.environ)
            if launch["num_processes"] == 1:
                env["CUDA_VISIBLE_DEVICES"] = env.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]
            with open(log, "w") as fh:
                proc = subprocess.run(cmd, timeout=left, stdout=fh, stderr=subprocess.STDOUT, env=env)
            if proc.returncode == 0 and part.is_file():
                results["runs"][label] = json.loads(part.read_text())
            else:
                results["runs"][label] = {"error": log.read_text()[-3000:]}
        except subprocess.TimeoutExpired:
            results["runs"][label] = {"error": "timeout"}
        results["runs"][label]["process_wall_s"] = time.perf_counter() - t
        r = results["runs"][label]
        print(f"[scaling] {label}: {r.get('steps_per_s', r.get('error', '')[-1500:])}", flush=True)
        base = results["runs"].get("ddp_1", {})
        for other, res in results["runs"].items():
            if other != "ddp_1" and "samples_per_s" in res and "samples_per_s" in base:
                results.setdefault("ratios_vs_1gpu", {})[other] = {
                    "samples_per_s": res["samples_per_s"] / base["samples_per_s"],
                    "steps_per_s": res["steps_per_s"] / base["steps_per_s"],
                }
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(results, indent=2) + "\n")
    return results


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["all", "step"])
    ap.add_argument("--label", default="ddp_1")
    ap.add_argument("--procs", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2])
    ap.add_argument("--zero2", action="store_true", help="also time DeepSpeed ZeRO-2 on 2 GPUs")
    ap.add_argument("--per-device", type=int, default=16, help="completions per device per optimizer step")
    ap.add_argument("--gens", type=int, default=4, help="completions per prompt")
    ap.add_argument("--micro", type=int, default=8, help="micro-batch (gradient accumulation over the rest)")
    ap.add_argument("--completion", type=int, default=64, help="max_completion_length")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--budget", type=float, default=420.0, help="seconds for `all`")
    ap.add_argument("--out", default="")
    ap.add_argument("--log-dir", default="")
    args = ap.parse_args()
    if args.mode == "step":
        step(args)
    else:
        res = run_all(args)
        print(json.dumps(res.get("ratios_vs_1gpu", {}), indent=1))


if __name__ == "__main__":
    main()
