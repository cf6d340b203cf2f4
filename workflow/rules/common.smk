import json
import os
import re
import sys
from pathlib import Path

REPO = Path(str(workflow.current_basedir)).resolve().parents[1]  # this file is workflow/rules/common.smk
SCRIPTS = str(REPO / "scripts")
sys.path.insert(0, str(REPO / "src"))

from grpo_vqa.config import (  # noqa: E402
    ConfigError,
    as_json,
    check_config_files,
    deep_merge,
    evaluation_config,
    prompt_tuning_recipe,
    sft_source,
    stage_config,
    validate_config,
)
from grpo_vqa.launch import rank_threads, rule_command, slurm_resources  # noqa: E402
from grpo_vqa.seeds import coerce_seeds, expand_seeds  # noqa: E402

try:
    check_config_files(workflow.configfiles)
    coerce_seeds(config)
    validate_config(config)  # the one schema check; fills in the schema's defaults (grpo_vqa.config.fill_defaults)
    # seeds: every dataset/model/experiment gets a <name>_s<k> replicate per seed after the first
    # (grpo_vqa.seeds); SEED_OF[section][name] is the seed each one runs with.
    expanded, SEED_OF = expand_seeds(config)
except ConfigError as exc:
    raise WorkflowError(str(exc)) from None
config.update(expanded)

# The scripts import the package from the checkout, so every rule's env only needs third-party packages.
SRC = REPO / "src"
shell.prefix(f"set -euo pipefail; export PYTHONPATH={SRC}:${{{{PYTHONPATH:-}}}}; ")
PROMPT_DIR = str(REPO / "config" / "judge_prompts")

THREADS = int(config["threads_per_job"])
#: Training jobs (build, SFT, merge, GRPO, prompt tuning) start before evaluations and judging that are ready at
#: the same time: they lead the longest chains (on 2 cores, Qwen's SFT waited 19 s behind two evaluations).
TRAIN_PRIORITY = 10
EXPERIMENTS = list(config["experiments"])
STAGES = ["base", "sft", "grpo"]
# Soft-prompt stages (trained by prompt_tuning in train.smk): the stage name and the completion the prompt is trained to produce.
PT_STAGES = {"pt_direct": "direct", "pt_reason": "reason"}

#: Models / datasets whose files come from the internet (or a local path): fetched by local rules on the submit
#: host (models.smk fetch_model, data.smk fetch_dataset); the others are built by compute jobs.
PRETRAINED_MODELS = [m for m, c in config["models"].items() if c["source"] == "pretrained"]
TINY_MODELS = [m for m in config["models"] if m not in PRETRAINED_MODELS]
SYNTHETIC_DATASETS = [d for d, c in config["datasets"].items() if c["source"] == "synthetic"]
FETCHED_DATASETS = [d for d in config["datasets"] if d not in SYNTHETIC_DATASETS]


# Work that needs the internet runs where Snakemake runs (the submit host); compute nodes often have none.
# judge_responses and judge_calibration call the judge's API (backend openai) and wait: little CPU, no GPU.
localrules:
    fetch_model,
    fetch_dataset,
    judge_responses,
    judge_calibration,


def name_pattern(names):
    """A wildcard constraint matching exactly these names (none: a pattern that matches nothing)."""
    return "|".join(re.escape(n) for n in names) or "(?!)"


wildcard_constraints:
    exp="|".join(EXPERIMENTS) or "NONE",
    model="|".join(config["models"]),
    dataset="|".join(config["datasets"]),
    stage="|".join(STAGES + list(PT_STAGES)),
    trained="sft|grpo",
    pt="|".join(PT_STAGES),
    table="|".join(config["tables"]),


def experiment(w):
    return config["experiments"][w.exp]


def model_of(exp):
    return config["experiments"][exp]["model"]


def model_dtype(exp):
    return config["models"][model_of(exp)]["dtype"]


def dataset_dir(name):
    return f"results/data/{name}"


def train_params(exp, stage, recipe=None):
    """The JSON a training script runs with: its stage's settings plus what shapes its data and prompts.
    ``recipe``: a prompt-tuning recipe (direct, reason) whose own subsection is laid over the section."""
    return as_json(
        {
            stage: prompt_tuning_recipe(config, exp, recipe) if recipe else stage_config(config, exp, stage),
            "seed": SEED_OF["experiments"][exp],
            "system_prompt": config["system_prompt"],
            "dtype": model_dtype(exp),
            "logging": config["logging"],
        }
    )


def eval_params(exp, stage=None):
    """Evaluation settings: the global section with the model's and the experiment's ``evaluation:``
    overrides; a soft prompt scored by next-token probabilities (its recipe's next_token_labels) says so."""
    labels = prompt_tuning_recipe(config, exp, PT_STAGES[stage])["next_token_labels"] if stage in PT_STAGES else None
    return as_json(
        evaluation_config(config, exp)
        | {
            "seed": SEED_OF["experiments"][exp],
            "system_prompt": config["system_prompt"],
            "dtype": model_dtype(exp),
            "next_token_labels": labels,
        }
    )


def pt_responses(exp, pt):
    """What a soft-prompt recipe distils (completion: grpo_responses): the GRPO model's generated responses
    on the training split (rule evaluate writes them when evaluation.splits holds train)."""
    if prompt_tuning_recipe(config, exp, PT_STAGES[pt])["completion"] != "grpo_responses":
        return []
    if "train" not in config["evaluation"]["splits"]:
        raise WorkflowError(
            f"config key evaluation.splits: prompt_tuning.{PT_STAGES[pt]}.completion grpo_responses needs the "
            "GRPO model's responses on train; add train"
        )
    return [f"results/eval/{exp}/grpo/generated_responses_train.json"]


def model_input(exp, stage):
    """The model an experiment's stage starts from / is evaluated as.

    ``sft`` is the merged SFT model of ``sft_from`` when the experiment names one (GRPO variants share it);
    a soft-prompt stage is its adapter directory (evaluation loads it onto the frozen base model)."""
    if stage == "base":
        return f"results/models/{model_of(exp)}/base.json"
    if stage == "sft":
        return f"results/runs/{sft_source(config, exp)}/sft/model"
    if stage in PT_STAGES:
        return f"results/runs/{exp}/{stage}/adapter"
    return f"results/runs/{exp}/{stage}/model"


def eval_model_input(exp, stage):
    """The model that the evaluate rule loads. As model_input, but with ``evaluation.from_adapter`` a trained
    stage is its LoRA adapter (evaluate.py merges it into its base in memory, the weights merge_lora saves), so
    merge_lora runs only where a later stage trains from the merged model."""
    if stage in ("sft", "grpo") and config["evaluation"]["from_adapter"]:
        owner = sft_source(config, exp) if stage == "sft" else exp
        return f"results/runs/{owner}/{stage}/adapter"
    return model_input(exp, stage)


def grpo_start(w):
    """The model GRPO starts from: the merged SFT model, or the base model with ``grpo_from: base``."""
    return model_input(w.exp, experiment(w)["grpo_from"])


def is_gpu_model(exp):
    return config["models"][model_of(exp)]["source"] == "pretrained"


# ---- cluster resources: what each job needs follows from the config (see profiles/slurm) ----
#: The clusters' partition time limit (minutes): no attempt of any job may ask for more.
MAX_RUNTIME_MIN = 720


def capped_runtime(minutes):
    return min(int(minutes), MAX_RUNTIME_MIN)


def train_runtime(wildcards, attempt):
    """Walltime (minutes) of one attempt: 30 x attempt for tiny models; the cluster's full 12 h for real ones on
    every attempt (more is rejected; a retry resumes from the checkpoint saved at the walltime warning)."""
    return capped_runtime(720 if is_gpu_model(wildcards.exp) else 30 * attempt)


def train_mem(wildcards, attempt):
    return (64000 if is_gpu_model(wildcards.exp) else 4000) * attempt


def train_gpu(wildcards):
    """One GPU for a pretrained model; tiny models train and generate on the CPU."""
    return 1 if is_gpu_model(wildcards.exp) else 0


def exp_threads(wildcards):
    """CPUs (torch threads, data-loader workers) of one process of an experiment's job."""
    return rank_threads(is_gpu_model(wildcards.exp), THREADS)


def slurm_partition(gpu):
    """GRPO_VQA_SLURM_GPU_PARTITION for GPU jobs (else GRPO_VQA_SLURM_PARTITION); '' = the cluster's default."""
    cpu_part = os.environ.get("GRPO_VQA_SLURM_PARTITION", "")
    return (os.environ.get("GRPO_VQA_SLURM_GPU_PARTITION", "") or cpu_part) if gpu else cpu_part


def exp_partition(wildcards):
    return slurm_partition(train_gpu(wildcards))


def stage_launch(exp, stage):
    return stage_config(config, exp, stage)["launch"]


def train_launch(exp, stage):
    """What starts a training script (python, or accelerate launch with srun per node)."""
    return rule_command(stage_launch(exp, stage), f"{stage}.launch")


def train_resource(stage, name):
    """A SLURM resource of a training job, following its stage's launch switches (see grpo_vqa.launch)."""

    def get(wildcards):
        launch = stage_launch(wildcards.exp, stage)
        return slurm_resources(launch, is_gpu_model(wildcards.exp), THREADS)[name]

    return get


def train_stage_mem(stage):
    """Memory per node: one rank's share times the ranks on that node, scaled by the attempt."""

    def get(wildcards, attempt):
        return train_mem(wildcards, attempt) * int(stage_launch(wildcards.exp, stage)["num_processes"])

    return get


def extra_eval_sets(w):
    """Extra test sets an experiment is evaluated on (their test split), by dataset name."""
    return {name: dataset_dir(name) for name in experiment(w)["eval_datasets"]}


def judge_human_labels(wildcards):
    """The human-label CSV; a relative path is taken from the working directory, else from the checkout."""
    path = config["judge"]["human_labels"]
    if not path:
        return []
    if not Path(path).is_absolute() and not Path(path).exists() and (REPO / path).exists():
        return [str(REPO / path)]
    return [path]


#: The judge section's keys that choose what is judged (rules judge_responses' targets, the alignment table's
#: rows), not how one file is judged: left out of a judge job's params so that editing them reruns no judge job.
JUDGE_SELECTION_KEYS = ("runs", "stages", "splits", "human_labels", "calibration")


def judge_job_config():
    """The judge settings one judge job runs with (scripts/judge_responses.py)."""
    return {k: v for k, v in config["judge"].items() if k not in JUDGE_SELECTION_KEYS}


def judge_calibration_set(wildcards=None):
    """The calibration set (JSONL of responses with human labels), found like the human-label CSV; [] if off."""
    path = config["judge"]["calibration"]
    if not path:
        return []
    if not Path(path).is_absolute() and not Path(path).exists() and (REPO / path).exists():
        return [str(REPO / path)]
    return [path]


def table_targets():
    return [f"results/tables/{name}.md" for name in config["tables"]]


def all_targets():
    """Every table, the judge's alignment table and the report-only figures (so --report finds them), and with
    several seeds what the first-seed-only tables read for the other seeds (every experiment runs per seed)."""
    from grpo_vqa.reporting.paper import seed_replicate_targets
    from grpo_vqa.reporting.report import report_targets

    return (
        table_targets()
        + ["results/tables/alignment.md"]
        + report_targets(config)
        + seed_replicate_targets(config)
    )
