rule sft:
    """Supervised fine-tuning with LoRA on <think>/<answer> targets (TRL SFTTrainer + PEFT)."""
    input:
        model=lambda w: model_input(w.exp, "base"),
        data=lambda w: dataset_dir(experiment(w)["dataset"]),
    output:
        directory("results/runs/{exp}/sft/adapter"),
    params:
        script=f"{SCRIPTS}/train_sft.py",
        launch=lambda w: train_launch(w.exp, "sft"),
        cfg=lambda w: train_params(w.exp, "sft"),
        ckpt="results/checkpoints/{exp}/sft",
        tb="results/logs/tensorboard/{exp}/sft",
    log:
        "results/logs/sft/{exp}.log",
    benchmark:
        "results/benchmarks/sft/{exp}.tsv"
    conda:
        "../../envs/train.yaml"
    threads: exp_threads
    priority: TRAIN_PRIORITY
    # sft.launch: nodes = num_machines; one GPU per process (gpu on one node, gres per node on several);
    # one task per node (accelerate starts the ranks); CPUs and memory per node scale with its processes
    resources:
        slurm_partition=exp_partition,
        runtime=train_runtime,
        mem_mb=train_stage_mem("sft"),
        gpu=train_resource("sft", "gpu"),
        gres=train_resource("sft", "gres"),
        nodes=train_resource("sft", "nodes"),
        tasks=train_resource("sft", "tasks"),
        tasks_per_gpu=train_resource("sft", "tasks_per_gpu"),
        cpus_per_task=train_resource("sft", "cpus_per_task"),
    shell:
        "{params.launch} {params.script} --config-json {params.cfg:q} --threads {threads} --model {input.model}"
        " --data {input.data} --out {output} --ckpt {params.ckpt} --log-dir {params.tb} > {log} 2>&1"


rule merge_lora:
    """Merge a stage's LoRA adapter into its base model (PEFT merge_and_unload)."""
    input:
        "results/runs/{exp}/{trained}/adapter",
    output:
        directory("results/runs/{exp}/{trained}/model"),
    params:
        script=f"{SCRIPTS}/merge_lora.py",
        cfg=lambda w: as_json({"seed": SEED_OF["experiments"][w.exp], "dtype": model_dtype(w.exp)}),
    log:
        "results/logs/merge_lora/{exp}-{trained}.log",
    benchmark:
        "results/benchmarks/merge_lora/{exp}-{trained}.tsv"
    conda:
        "../../envs/train.yaml"
    threads: exp_threads
    priority: TRAIN_PRIORITY
    resources:
        slurm_partition=exp_partition,
        runtime=lambda w, attempt: capped_runtime((60 if is_gpu_model(w.exp) else 30) * attempt),
        mem_mb=train_mem,
        gpu=train_gpu,
        # not the profile's "threads": Snakemake caps threads at the cores it sees where it runs
        cpus_per_task=exp_threads,
    shell:
        "python {params.script} --config-json {params.cfg:q} --threads {threads} --adapter {input}"
        " --out {output} > {log} 2>&1"


rule grpo:
    """GRPO with LoRA from the merged SFT model or the base model (TRL GRPOTrainer; rewards by name)."""
    input:
        model=grpo_start,
        data=lambda w: dataset_dir(experiment(w)["dataset"]),
    output:
        directory("results/runs/{exp}/grpo/adapter"),
    params:
        script=f"{SCRIPTS}/train_grpo.py",
        launch=lambda w: train_launch(w.exp, "grpo"),
        cfg=lambda w: train_params(w.exp, "grpo"),
        ckpt="results/checkpoints/{exp}/grpo",
        tb="results/logs/tensorboard/{exp}/grpo",
    log:
        "results/logs/grpo/{exp}.log",
    benchmark:
        "results/benchmarks/grpo/{exp}.tsv"
    conda:
        "../../envs/train.yaml"
    threads: exp_threads
    priority: TRAIN_PRIORITY
    # grpo.launch: nodes = num_machines; one GPU per process (gpu on one node, gres per node on several);
    # one task per node (accelerate starts the ranks); CPUs and memory per node scale with its processes
    resources:
        slurm_partition=exp_partition,
        runtime=train_runtime,
        mem_mb=train_stage_mem("grpo"),
        gpu=train_resource("grpo", "gpu"),
        gres=train_resource("grpo", "gres"),
        nodes=train_resource("grpo", "nodes"),
        tasks=train_resource("grpo", "tasks"),
        tasks_per_gpu=train_resource("grpo", "tasks_per_gpu"),
        cpus_per_task=train_resource("grpo", "cpus_per_task"),
    shell:
        "{params.launch} {params.script} --config-json {params.cfg:q} --threads {threads} --model {input.model}"
        " --data {input.data} --out {output} --ckpt {params.ckpt} --log-dir {params.tb} > {log} 2>&1"


rule prompt_tuning:
    """Soft-prompt tuning of the frozen base model (PEFT PromptTuningConfig, TRL SFTTrainer): pt_direct trains
    the prompt to answer <answer>X</answer> at once, pt_reason to write <think>…</think><answer>…</answer>."""
    input:
        model=lambda w: model_input(w.exp, "base"),
        data=lambda w: dataset_dir(experiment(w)["dataset"]),
        # the GRPO model's own responses, for a recipe that distils them (completion: grpo_responses)
        responses=lambda w: pt_responses(w.exp, w.pt),
    output:
        directory("results/runs/{exp}/{pt}/adapter"),
    params:
        script=f"{SCRIPTS}/train_prompt_tuning.py",
        cfg=lambda w: train_params(w.exp, "prompt_tuning", PT_STAGES[w.pt]),
        target=lambda w: PT_STAGES[w.pt],
        ckpt="results/checkpoints/{exp}/{pt}",
        tb="results/logs/tensorboard/{exp}/{pt}",
    log:
        "results/logs/prompt_tuning/{exp}-{pt}.log",
    benchmark:
        "results/benchmarks/prompt_tuning/{exp}-{pt}.tsv"
    conda:
        "../../envs/train.yaml"
    threads: exp_threads
    priority: TRAIN_PRIORITY
    resources:
        slurm_partition=exp_partition,
        runtime=train_runtime,
        mem_mb=train_mem,
        gpu=train_gpu,
        # not the profile's "threads": Snakemake caps threads at the cores it sees where it runs
        cpus_per_task=exp_threads,
    shell:
        "python {params.script} --config-json {params.cfg:q} --threads {threads} --model {input.model}"
        " --data {input.data} --responses {input.responses} --target {params.target} --out {output}"
        " --ckpt {params.ckpt}"
        " --log-dir {params.tb} > {log} 2>&1"
