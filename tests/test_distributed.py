"""Data-parallel training on the CPU: ``accelerate launch`` with 2 gloo processes vs 1 process, same global batch.

One launch per process count runs the real ``scripts/train_sft.py`` then ``scripts/train_grpo.py`` (through
``tests/dist_probe.py``) on a tiny Qwen2.5-VL and 16 generated relation items, started by
:func:`grpo_vqa.launch.launch_argv` exactly as the training rules start them.

* SFT: the per-step losses of 2 processes x 2 items match 1 process x 4 items (transformers averages the loss
  over the tokens of all devices; measured max |diff| 6.4e-5 at loss 5.91, from per-device padding), and the
  token counts per step are identical (the same rows were trained on).
* GRPO: sampling differs with the process count, so the test compares what is deterministic: the rows
  scored at each optimizer step, over both ranks, are the 1-process run's rows (TRL's sampler draws the same
  global order, accelerate splits it); the adapter loads; each output is written once, by rank 0.

Plus unit tests of the launcher's command line, the per-process batch arithmetic and its one-line errors.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from config_helpers import CONFIG, lora, train_section

from grpo_vqa.config import ConfigError, global_batch_size
from grpo_vqa.launch import ONE_PROCESS, accelerate_config_file, launch_argv, rule_command, slurm_resources

REPO = Path(__file__).resolve().parents[1]
SEED = 7
#: SFT per-step loss, 2 processes x 2 items vs 1 x 4 (same global batch), float32: measured max |diff|
#: 6.4e-5 at loss 5.91 (1e-5 relative; each device pads its batch to its own longest row, so the matmul shapes
#: differ). A different batch composition moves the loss by ~5e-3 here (steps 1 vs 2), 80x the tolerance.
SFT_LOSS_TOL = 2e-4
#: The global batches (one optimizer step) both runs share; each run's per_device_train_batch_size is this
#: divided by its process count (TRL's arithmetic: per device x accumulation x processes).
GLOBAL_BATCH = {"sft": 4, "grpo": 8}
SFT = train_section(
    "sft",
    max_steps=3,
    learning_rate=2.0e-3,
    lr_scheduler_type="constant",
    warmup_ratio=0.0,
    lora=lora(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    save_steps=2,
)
GRPO = train_section("grpo") | {
    "max_steps": 2,
    "learning_rate": 1.0e-3,
    "num_generations": 4,
    "max_completion_length": 6,
    "temperature": 1.0,
    "top_k": 5,
    "beta": 0.0,
    "loss_type": "dapo",
    "rewards": ["format", "record_ids"],
    "reward_weights": [1.0, 0.0],
    "lora": lora(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    "save_steps": 2,
    "rollout_engine": "hf",
}


# ----------------------------------------------------------------------------------- launcher (no training)


def launch(**kw) -> dict:
    """A complete launch section (one process unless ``kw`` says otherwise)."""
    return ONE_PROCESS | kw


def test_one_process_runs_the_script_with_plain_python():
    argv = launch_argv(launch(), ["s.py", "--x", "1"], env={})
    assert argv == [sys.executable, "s.py", "--x", "1"]


def test_one_process_sees_one_gpu():
    from grpo_vqa.launch import launch_env

    assert launch_env(launch(), {})["CUDA_VISIBLE_DEVICES"] == "0"
    assert launch_env(None, {})["CUDA_VISIBLE_DEVICES"] == "0"  # a stage without launch: one process
    assert launch_env(launch(), {"CUDA_VISIBLE_DEVICES": "3"})["CUDA_VISIBLE_DEVICES"] == "3"
    assert "CUDA_VISIBLE_DEVICES" not in launch_env(launch(num_processes=2), {})


def test_two_processes_use_accelerate_with_the_repo_config_and_no_cpu_flag():
    argv = launch_argv(launch(num_processes=2), ["s.py", "--x"], env={}, cuda=False)
    assert argv[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    opts = dict(zip(argv[3:-2:2], argv[4:-2:2], strict=True))
    assert opts["--config_file"] == str(accelerate_config_file(None))
    assert opts["--num_processes"] == "2" and opts["--num_machines"] == "1" and opts["--machine_rank"] == "0"
    assert 0 < int(opts["--main_process_port"]) < 65536
    # --cpu would make accelerate 1.15 start a single process (its simple launcher)
    assert "--cpu" not in argv and argv[-2:] == ["s.py", "--x"]


def test_several_machines_take_rank_and_rendezvous_from_slurm():
    env = {"SLURM_NODEID": "3", "SLURM_JOB_NODELIST": "gpu[07-10]", "SLURM_JOB_ID": "4242"}
    seen = []
    argv = launch_argv(
        launch(num_processes=4, num_machines=4, deepspeed_stage=3),
        ["s.py"],
        env=env,
        cuda=True,
        hosts=lambda nodelist: seen.append(nodelist) or "gpu07",
    )
    opts = dict(zip(argv[3:-1:2], argv[4:-1:2], strict=True))
    assert seen == ["gpu[07-10]"]
    assert opts["--num_processes"] == "16" and opts["--num_machines"] == "4"
    assert opts["--machine_rank"] == "3" and opts["--main_process_ip"] == "gpu07"
    assert opts["--config_file"].endswith("config/accelerate/zero3.yaml")
    # every node derives the same port from the job id
    again = launch_argv(
        launch(num_processes=4, num_machines=4), ["s.py"], env=env, cuda=True, hosts=lambda n: "x"
    )
    assert again[again.index("--main_process_port") + 1] == opts["--main_process_port"]
    assert rule_command(launch(num_machines=4), "grpo.launch").startswith(
        "srun --overlap --nodes=4 --ntasks=4 "
    )
    assert rule_command(launch(), "grpo.launch").startswith("python -m grpo_vqa.launch ")


#: A "trainer" that is sent the walltime warning while it starts up (before it handles the signal), then
#: installs the trainers' handler (grpo_vqa.training.common.make_walltime_callback) and reports what it saw.
STARTUP_SIGNAL_SCRIPT = """
import os, signal, sys
from grpo_vqa.training.common import WALLTIME_SIGNAL, make_walltime_callback
os.kill(os.getpid(), WALLTIME_SIGNAL)  # as SLURM's --signal during imports / model loading
callback = make_walltime_callback()
print("REQUESTED" if callback.requested else "LOST", flush=True)
"""


@pytest.mark.parametrize("launcher", [True, False], ids=["launcher", "plain"])
def test_walltime_signal_during_startup_is_kept_by_the_launcher(launcher, tmp_path):
    """grpo_vqa.launch blocks the signal before it starts the script, so one sent during start-up stays
    pending and reaches the trainer's handler; started without the launcher the same signal is ignored."""
    script = tmp_path / "trainer.py"
    script.write_text(STARTUP_SIGNAL_SCRIPT)
    prefix = (
        [sys.executable, "-m", "grpo_vqa.launch", "--launch-json", json.dumps(launch()), "--"]
        if launcher
        else [sys.executable]
    )
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run([*prefix, str(script)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == ("REQUESTED" if launcher else "LOST"), proc.stdout + proc.stderr[-2000:]


def test_launch_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"^config key grpo\.launch\.num_machines: 2 machines need a SLURM"):
        launch_argv(launch(num_machines=2), ["s.py"], env={}, cuda=True, key="grpo.launch")
    with pytest.raises(
        ConfigError, match=r"^config key sft\.launch\.deepspeed_stage: DeepSpeed ZeRO needs CUDA"
    ):
        launch_argv(
            launch(num_processes=2, deepspeed_stage=2), ["s.py"], env={}, cuda=False, key="sft.launch"
        )
    with pytest.raises(ConfigError, match=r"^config key sft\.launch\.num_machines: missing"):
        launch_argv({"num_processes": 2, "deepspeed_stage": None}, ["s.py"], env={}, key="sft.launch")


def test_slurm_resources_follow_the_switches():
    r = slurm_resources(launch(num_processes=4, num_machines=2), gpu_model=True, threads=1)
    assert r == {"nodes": 2, "tasks": 2, "tasks_per_gpu": 0, "cpus_per_task": 32, "gpu": 0, "gres": "gpu:4"}
    r = slurm_resources(launch(num_processes=2), gpu_model=True, threads=1)
    assert r["gpu"] == 2 and r["gres"] == "" and r["nodes"] == 1 and r["cpus_per_task"] == 16
    r = slurm_resources(None, gpu_model=False, threads=2)
    assert r["gpu"] == 0 and r["nodes"] == 1 and r["cpus_per_task"] == 2


def test_global_batch_follows_trl():
    """per_device_train_batch_size is per process (TRL's meaning): the global batch grows with the processes."""
    cfg = {"per_device_train_batch_size": 4, "gradient_accumulation_steps": 2}
    assert global_batch_size(cfg | {"launch": launch(num_processes=2, num_machines=2)}, "sft") == 32
    assert global_batch_size(cfg | {"launch": launch()}, "sft") == 8
    grpo = {"per_device_train_batch_size": 6, "gradient_accumulation_steps": 1, "num_generations": 8}
    with pytest.raises(
        ConfigError,
        match=r"^config key experiments\.e\.grpo\.per_device_train_batch_size: the global batch .* = 12 "
        r"completions is not a multiple of num_generations = 8",
    ):
        global_batch_size(grpo | {"launch": launch(num_processes=2)}, "experiments.e.grpo")
    assert global_batch_size(grpo | {"launch": launch(num_processes=4)}, "grpo") == 24


def test_validate_config_checks_experiment_overrides():
    import copy

    import yaml

    from grpo_vqa.config import validate_config

    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    bad = copy.deepcopy(cfg)
    bad["experiments"]["vsr_qwen"]["grpo"] = {"per_device_train_batch_size": 12}
    with pytest.raises(
        ConfigError, match=r"^config key experiments\.vsr_qwen\.grpo\.per_device_train_batch_size: the global"
    ):
        validate_config(bad)
    bad["experiments"]["vsr_qwen"]["grpo"] = {"launch": {"deepspeed_stage": 1}}
    with pytest.raises(
        ConfigError, match=r"^config key experiments\.vsr_qwen\.grpo\.launch\.deepspeed_stage"
    ):
        validate_config(bad)


# ------------------------------------------------------------------------------- 1 vs 2 processes (training)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    from grpo_vqa.data.build import build_dataset, load_split
    from grpo_vqa.models.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("dist")
    ds_cfg = {
        "kind": "relation",
        "source": "synthetic",
        "splits": {"train": 16},
        "relations": ["left of", "right of"],
        "bias": 0.5,
        "style": "flat",
        "prompt_style": "vsr",
        "image_size": 56,
        "tied_colors": True,
        "radius": [8, 12],
    }
    build_dataset("vsr_synth", ds_cfg, root / "data", seed=SEED)
    train = load_split(root / "data", "train")
    corpus = (
        list(train["problem"]) + list(train["reasoning"]) + ["<think> </think> <answer>True False</answer>"]
    )
    spec = {"text_hidden": 32, "layers": 1, "heads": 2, "kv_heads": 1, "intermediate": 64, "vision_depth": 1}
    spec |= {"vision_hidden": 32, "vision_heads": 2, "image_size": 56, "vocab_size": 400}
    spec |= {"mrope_section": [2, 3, 3]}  # head_dim 16
    model = build_tiny_model("qwen2_5_vl", spec, corpus, root / "model", seed=SEED)
    return root, model


def _launch(inputs, procs: int, name: str | None = None, grpo: bool = True) -> Path:
    root, model = inputs
    out = root / (name or f"p{procs}")
    procs_launch = launch(num_processes=procs)
    common = ["--threads", "1", "--model", str(model), "--data", str(root / "data")]

    def stage_args(stage, cfg):
        # the same global batch on any process count: each process takes its share
        cfg = cfg | {"launch": procs_launch, "per_device_train_batch_size": GLOBAL_BATCH[stage] // procs}
        cfg_json = json.dumps(
            {
                stage: cfg,
                "seed": SEED,
                "system_prompt": None,
                "dtype": "float32",
                "logging": CONFIG["logging"],
            }
        )
        return [
            "--config-json",
            cfg_json,
            *common,
            "--out",
            str(out / stage),
            "--ckpt",
            str(out / f"ckpt-{stage}"),
        ]

    probe = [str(REPO / "tests" / "dist_probe.py"), str(out / "ids")]
    probe += ["--", *stage_args("sft", SFT)] + (["--", *stage_args("grpo", GRPO)] if grpo else [])
    out.mkdir(exist_ok=True)
    env = {
        **os.environ,
        "PYTHONPATH": f"{REPO / 'src'}:{os.environ.get('PYTHONPATH', '')}",
        "HF_HUB_OFFLINE": "1",
    }
    env |= {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(
        launch_argv(procs_launch, probe, env=env, cuda=False),
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    (out / "log.txt").write_text(proc.stdout + proc.stderr)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return out


@pytest.fixture(scope="module")
def runs(inputs):
    return {n: _launch(inputs, n) for n in (1, 2)}


def _history(out: Path, stage: str) -> list[dict]:
    return json.loads((out / stage / "train_history.json").read_text())


@pytest.mark.multiprocess
def test_sft_losses_match_one_process(runs):
    one, two = _history(runs[1], "sft"), _history(runs[2], "sft")
    assert [h["step"] for h in one] == [h["step"] for h in two] == [1, 2, 3]
    diffs = [abs(a["loss"] - b["loss"]) for a, b in zip(one, two, strict=True)]
    print("SFT per-step |loss diff| 2 vs 1 process:", diffs)
    assert max(diffs) <= SFT_LOSS_TOL, diffs
    assert [h["num_tokens"] for h in one] == [h["num_tokens"] for h in two]
    # the runs did learn something (a no-op trainer would match trivially)
    assert one[0]["loss"] != one[-1]["loss"]


@pytest.mark.multiprocess
def test_grpo_scores_the_same_rows_per_step(runs):
    def rows_per_step(out: Path, ranks: int) -> dict:
        steps: dict = defaultdict(Counter)
        for r in range(ranks):
            for line in (out / f"ids.rank{r}.jsonl").read_text().splitlines():
                rec = json.loads(line)
                steps[rec["step"]].update(rec["ids"])
        return dict(steps)

    one, two = rows_per_step(runs[1], 1), rows_per_step(runs[2], 2)
    assert sorted(one) == [0, 1]
    assert two == one
    # each prompt is scored num_generations times per step
    assert set(one[0].values()) == {GRPO["num_generations"]}
    # both ranks scored rows (the work was split, not duplicated)
    per_rank = [(runs[2] / f"ids.rank{r}.jsonl").read_text().count("\n") for r in (0, 1)]
    assert per_rank == [2, 2]


@pytest.mark.multiprocess
def test_outputs_written_once_by_rank_zero_and_adapter_loads(runs):
    from peft import PeftModel

    from grpo_vqa.models.loading import load_model

    out = runs[2]
    log = (out / "log.txt").read_text()
    assert log.count("[sft] done:") == 1 and log.count("[grpo] done:") == 1
    assert log.count("[grpo] step 2/2") == 1  # progress lines from rank 0 only
    for stage in ("sft", "grpo"):
        assert (out / stage / "train_history.json.provenance.json").is_file()
        assert not Path(f"{out / stage}.tmp").exists()
        assert (out / stage / "adapter_model.safetensors").is_file()
    assert len(_history(out, "grpo")) == GRPO["max_steps"]
    # checkpoints hold each rank's RNG state and the completion marker
    ckpt = next((out / "ckpt-sft").glob("run-*/checkpoint-2"))
    assert (ckpt / ".complete").is_file() and (ckpt / "rng_state_1.pth").is_file()
    model = PeftModel.from_pretrained(load_model(str(inputs_model(out))), str(out / "grpo"))
    assert any("lora_A" in n for n, _ in model.named_parameters())


@pytest.mark.multiprocess
def test_sft_resumes_with_two_processes(inputs, runs):
    """A 2-process SFT killed after checkpoint-2 resumes from it with 2 processes (each rank's RNG state)
    and ends with the uninterrupted run's history."""
    import shutil

    root = inputs[0]
    resumed = root / "p2-resumed"
    shutil.copytree(runs[2] / "ckpt-sft", resumed / "ckpt-sft")
    for late in resumed.glob("ckpt-sft/run-*/checkpoint-3"):
        shutil.rmtree(late)
    out = _launch(inputs, 2, name="p2-resumed", grpo=False)
    log = (out / "log.txt").read_text()
    assert log.count("[sft] resuming from") == 1 and "checkpoint-2 (step 2)" in log
    full, again = _history(runs[2], "sft"), _history(out, "sft")
    assert [h["step"] for h in again] == [1, 2, 3]
    for a, b in zip(full, again, strict=True):
        assert a["num_tokens"] == b["num_tokens"]
        assert abs(a["loss"] - b["loss"]) <= SFT_LOSS_TOL, (a, b)


def inputs_model(out: Path) -> Path:
    return out.parent / "model"
