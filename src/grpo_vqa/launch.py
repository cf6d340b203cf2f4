"""Start a training script on one process, or data-parallel through ``accelerate launch``.

The training rules call ``python -m grpo_vqa.launch --launch-json '<stage.launch>' -- script.py args...``:

* ``num_processes * num_machines == 1``: the script runs as plain ``python script.py ...`` (exec, no wrapper).
* more processes: ``accelerate launch --num_processes N*M --num_machines M --machine_rank $SLURM_NODEID
  --main_process_ip <first host of $SLURM_JOB_NODELIST> --main_process_port <port> --config_file
  config/accelerate/{ddp,zero2,zero3}.yaml script.py ...``. accelerate's ``--num_processes`` is the *total*
  over all machines. Without CUDA the ranks use gloo (the Trainer's ``use_cpu``); ``--cpu`` is NOT passed:
  accelerate 1.15 then takes its simple launcher and starts a single process.
* several machines: the rule runs this launcher once per node (``srun --nodes M --ntasks-per-node=1``, see
  :func:`srun_prefix`), each instance reading its node rank and the rendezvous host from SLURM's environment.

No process management of our own: accelerate (torchrun) starts, watches and ends the ranks.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import zlib
from pathlib import Path

from .config import ConfigError
from .resources import resource_dir
from .walltime import WALLTIME_SIGNAL

ACCELERATE_DIR = resource_dir("accelerate")
#: What a training section without ``launch`` (prompt tuning, the warm start) runs as. The sections that have
#: one (sft, grpo) carry every key: config/config.yaml holds their defaults.
ONE_PROCESS = {"num_processes": 1, "num_machines": 1, "deepspeed_stage": None}
#: Rendezvous ports for SLURM jobs are taken from this range by job id (several jobs may share a node).
PORT_BASE, PORT_SPAN = 20000, 20000
#: CPUs per training/evaluation process of a pretrained (GPU) model: torch threads and data-loader workers.
GPU_RANK_CPUS = 8


def launch_settings(launch: dict | None, key: str = "launch") -> dict:
    """A stage's ``launch`` section (every key present), or :data:`ONE_PROCESS` for a stage without one."""
    if launch is None:
        return ONE_PROCESS
    missing = [k for k in ONE_PROCESS if k not in launch]
    if missing:
        raise ConfigError(f"config key {key}.{missing[0]}: missing (config/config.yaml holds its default)")
    return dict(launch)


def world_size(launch: dict | None) -> int:
    s = launch_settings(launch)
    return int(s["num_processes"]) * int(s["num_machines"])


def accelerate_config_file(stage: int | None) -> Path:
    """The accelerate config kept in the repo: DDP, or DeepSpeed ZeRO-2/3."""
    name = {None: "ddp", 2: "zero2", 3: "zero3"}[stage]
    return ACCELERATE_DIR / f"{name}.yaml"


def first_host(nodelist: str) -> str:
    """The first host name of a SLURM node list (``scontrol show hostnames`` expands ``node[01-04]``)."""
    out = subprocess.run(
        ["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True
    ).stdout.split()
    if not out:
        raise RuntimeError(f"scontrol show hostnames {nodelist!r} printed no host")
    return out[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rendezvous_port(env: dict) -> int:
    """Same on every node of a job (derived from the job id); a free local port outside SLURM."""
    job = env.get("SLURM_JOB_ID")
    if job:
        return PORT_BASE + zlib.crc32(job.encode()) % PORT_SPAN
    return free_port()


def launch_argv(
    launch: dict | None,
    script_argv: list[str],
    env: dict | None = None,
    cuda: bool | None = None,
    hosts=first_host,
    key: str = "launch",
) -> list[str]:
    """The command line that runs ``script_argv`` (script path + its arguments) under ``launch``.

    ``env`` is the process environment (SLURM variables), ``cuda`` whether GPUs are visible (probed when
    None and a DeepSpeed stage is asked for), ``hosts`` maps ``$SLURM_JOB_NODELIST`` to its first host,
    ``key`` names the config section in errors.
    """
    env = dict(os.environ if env is None else env)
    s = launch_settings(launch, key)
    procs, machines, stage = int(s["num_processes"]), int(s["num_machines"]), s["deepspeed_stage"]
    if procs * machines == 1:
        if stage is not None:
            raise ConfigError(f"config key {key}.deepspeed_stage: DeepSpeed needs more than one process")
        return [sys.executable, *script_argv]
    if stage is not None and cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    if stage is not None and not cuda:
        raise ConfigError(
            f"config key {key}.deepspeed_stage: DeepSpeed ZeRO needs CUDA GPUs; none is visible"
        )
    # The config file selects accelerate's torchrun launcher also on CPU: `--cpu` would take its simple
    # launcher, which starts ONE process (accelerate 1.15). Without CUDA the Trainer (use_cpu) picks gloo.
    argv = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(accelerate_config_file(stage)),
    ]
    argv += ["--num_processes", str(procs * machines), "--num_machines", str(machines)]
    if machines > 1:
        missing = [v for v in ("SLURM_NODEID", "SLURM_JOB_NODELIST") if v not in env]
        if missing:
            raise ConfigError(
                f"config key {key}.num_machines: {machines} machines need a SLURM job "
                f"({', '.join(missing)} not set); run through the SLURM profile"
            )
        argv += ["--machine_rank", env["SLURM_NODEID"], "--main_process_ip", hosts(env["SLURM_JOB_NODELIST"])]
    else:
        argv += ["--machine_rank", "0"]
    argv += ["--main_process_port", str(rendezvous_port(env))]
    return argv + list(script_argv)


def launch_env(launch: dict | None, env: dict) -> dict:
    """The environment of the launched command. One process that sees several GPUs would make the Trainer
    wrap the model in ``nn.DataParallel`` (which GRPOTrainer refuses): it is shown the first GPU only, as a
    1-GPU SLURM job is (where SLURM has set ``CUDA_VISIBLE_DEVICES``, that is kept)."""
    if world_size(launch) == 1 and "CUDA_VISIBLE_DEVICES" not in env:
        env = env | {"CUDA_VISIBLE_DEVICES": "0"}
    return env


def srun_prefix(launch: dict | None) -> str:
    """What the rule puts before the launcher: ``srun`` once per node when several machines are asked for.

    ``--overlap``: the SLURM executor's job step (``srun -n1``) already holds the first node's CPUs and GPUs.
    """
    machines = int(launch_settings(launch)["num_machines"])
    if machines == 1:
        return ""
    return f"srun --overlap --nodes={machines} --ntasks={machines} --ntasks-per-node=1 --kill-on-bad-exit=1 "


def rule_command(launch: dict | None, key: str) -> str:
    """The shell words a training rule starts its script with (``srun`` + this launcher)."""
    return (
        f"{srun_prefix(launch)}python -m grpo_vqa.launch --key {shlex.quote(key)}"
        f" --launch-json {shlex.quote(json.dumps(launch_settings(launch), sort_keys=True))} --"
    )


def rank_threads(gpu_model: bool, threads: int) -> int:
    """CPUs (torch threads) per process: :data:`GPU_RANK_CPUS` for a pretrained model on a GPU, else
    ``threads`` (config ``threads_per_job``)."""
    return GPU_RANK_CPUS if gpu_model else int(threads)


def slurm_resources(launch: dict | None, gpu_model: bool, threads: int) -> dict:
    """Resources of a training job for snakemake-executor-plugin-slurm 2.8.

    ``nodes`` = num_machines (``--nodes``). GPUs, one per process: on one node ``gpu`` (the plugin's
    ``--gpus``, a count per job); on several ``gres`` = ``gpu:<processes per node>`` (``--gres``, a count
    per node, so every node gets its share) and ``gpu`` = 0. ``tasks`` = one task per node (``--ntasks`` for
    CPU jobs: accelerate starts the ranks inside it); ``tasks_per_gpu`` = 0 stops the plugin from turning
    ``tasks`` into ``--ntasks-per-gpu`` for GPU jobs; ``cpus_per_task`` = CPUs per rank (:func:`rank_threads`) x ranks per node.
    """
    s = launch_settings(launch)
    procs, machines = int(s["num_processes"]), int(s["num_machines"])
    per_node = gpu_model and machines > 1
    return {
        "nodes": machines,
        "tasks": machines,
        "tasks_per_gpu": 0,
        "cpus_per_task": rank_threads(gpu_model, threads) * procs,
        "gpu": procs if gpu_model and not per_node else 0,
        "gres": f"gpu:{procs}" if per_node else "",
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--launch-json", required=True, help="the stage's launch settings, as JSON")
    p.add_argument("--key", default="launch", help="config key named in errors (e.g. grpo.launch)")
    p.add_argument("script", nargs=argparse.REMAINDER, help="-- script.py [its arguments]")
    args = p.parse_args(argv)
    script = args.script[1:] if args.script[:1] == ["--"] else args.script
    if not script:
        p.error("no script given after --")
    try:
        cmd = launch_argv(json.loads(args.launch_json), script, key=args.key)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    print("[launch] " + shlex.join(cmd), file=sys.stderr, flush=True)
    # Hold the walltime warning until the trainer handles it: a blocked signal stays blocked through exec
    # (and in the ranks accelerate starts) and stays pending, so one that SLURM sends while the script is
    # still importing or loading its model is delivered when the trainer unblocks it, not lost (ignored).
    signal.pthread_sigmask(signal.SIG_BLOCK, {WALLTIME_SIGNAL})
    os.execve(cmd[0], cmd, launch_env(json.loads(args.launch_json), dict(os.environ)))


if __name__ == "__main__":
    main()
