rule make_dataset:
    """Generate (synthetic) or load and format (hub/local) every split of one dataset."""
    output:
        directory("results/data/{dataset}"),
    params:
        script=f"{SCRIPTS}/make_dataset.py",
        cfg=lambda w: as_json(config["datasets"][w.dataset]),
        seed=lambda w: SEED_OF["datasets"][w.dataset],
    log:
        "results/logs/make_dataset/{dataset}.log",
    benchmark:
        "results/benchmarks/make_dataset/{dataset}.tsv"
    conda:
        "../../envs/data.yaml"
    threads: 1
    resources:
        runtime=lambda w, attempt: 30 * attempt,
        mem_mb=4000,
    shell:
        "python {params.script} --name {wildcards.dataset} --seed {params.seed}"
        " --config-json {params.cfg:q} --out {output} > {log} 2>&1"
