rule build_model:
    """A model's base checkpoint: a tiny real-architecture model built and warm-started, or a hub/local ref."""
    output:
        ref="results/models/{model}/base.json",
    params:
        script=f"{SCRIPTS}/build_model.py",
        cfg=lambda w: as_json(config["models"][w.model] | {"system_prompt": config.get("system_prompt")}),
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
    resources:
        runtime=lambda w, attempt: 60 * attempt,
        mem_mb=8000,
    shell:
        "python {params.script} --name {wildcards.model} --seed {params.seed} --threads {threads}"
        " --config-json {params.cfg:q} --ref {output.ref} --model-dir {params.model_dir}"
        " --ckpt {params.ckpt} > {log} 2>&1"
