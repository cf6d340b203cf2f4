rule build_model:
    """A tiny real-architecture model built and warm-started (a compute job)."""
    wildcard_constraints:
        model=name_pattern(TINY_MODELS),
    output:
        ref="results/models/{model}/base.json",
    params:
        script=f"{SCRIPTS}/build_model.py",
        cfg=lambda w: as_json(config["models"][w.model] | {"system_prompt": config["system_prompt"]}),
        seed=lambda w: SEED_OF["models"][w.model],
        model_dir="results/models/{model}/base_model",
        ckpt="results/checkpoints/models/{model}",
    log:
        "results/logs/build_model/{model}.log",
    benchmark:
        "results/benchmarks/build_model/{model}.tsv"
    conda:
        "../../envs/train.yaml"
    threads: THREADS
    priority: TRAIN_PRIORITY
    resources:
        runtime=lambda w, attempt: capped_runtime(60 * attempt),
        mem_mb=lambda w, attempt: 8000 * attempt,
    shell:
        "python {params.script} --name {wildcards.model} --seed {params.seed} --threads {threads}"
        " --config-json {params.cfg:q} --ref {output.ref} --model-dir {params.model_dir}"
        " --ckpt {params.ckpt} > {log} 2>&1"


rule fetch_model:
    """A pretrained model: its local directory, or its hub files downloaded into results/models/<model>/base_model.
    A local rule (runs where Snakemake runs, which has the internet); the compute jobs read the local copy."""
    wildcard_constraints:
        model=name_pattern(PRETRAINED_MODELS),
    output:
        ref="results/models/{model}/base.json",
    params:
        script=f"{SCRIPTS}/build_model.py",
        cfg=lambda w: as_json(config["models"][w.model] | {"system_prompt": config["system_prompt"]}),
        seed=lambda w: SEED_OF["models"][w.model],
        model_dir="results/models/{model}/base_model",
        ckpt="results/checkpoints/models/{model}",
    log:
        "results/logs/build_model/{model}.log",
    conda:
        "../../envs/train.yaml"
    threads: 1
    shell:
        "python {params.script} --name {wildcards.model} --seed {params.seed} --threads {threads}"
        " --config-json {params.cfg:q} --ref {output.ref} --model-dir {params.model_dir}"
        " --ckpt {params.ckpt} > {log} 2>&1"
