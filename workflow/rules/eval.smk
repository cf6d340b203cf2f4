rule evaluate:
    """Greedy generation on val/test (+ blank-image probe, + extra test sets) for one model stage."""
    input:
        model=lambda w: eval_model_input(w.exp, w.stage),
        data=lambda w: dataset_dir(experiment(w)["dataset"]),
        extra=lambda w: list(extra_eval_sets(w).values()),
    output:
        scores="results/eval/{exp}/{stage}/scores.json",
        responses=expand(
            "results/eval/{{exp}}/{{stage}}/generated_responses_{split}.json",
            split=config["evaluation"]["splits"],
        ),
    params:
        script=f"{SCRIPTS}/evaluate.py",
        cfg=lambda w: eval_params(w.exp, w.stage),
        out_dir="results/eval/{exp}/{stage}",
        cache="results/checkpoints/eval/{exp}/{stage}",
        extra=lambda w: " ".join(f"{k}={v}" for k, v in extra_eval_sets(w).items()),
    log:
        "results/logs/evaluate/{exp}-{stage}.log",
    benchmark:
        "results/benchmarks/evaluate/{exp}-{stage}.tsv"
    conda:
        "../../envs/train.yaml"
    threads: exp_threads
    resources:
        slurm_partition=exp_partition,
        runtime=lambda w, attempt: capped_runtime((240 if is_gpu_model(w.exp) else 30) * attempt),
        mem_mb=train_mem,
        gpu=train_gpu,
        # not the profile's "threads": Snakemake caps threads at the cores it sees where it runs
        cpus_per_task=exp_threads,
    shell:
        "python {params.script} --config-json {params.cfg:q} --threads {threads} --model {input.model}"
        " --data {input.data} --extra {params.extra} --out-dir {params.out_dir} --cache-dir {params.cache}"
        " > {log} 2>&1"
