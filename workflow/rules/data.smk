rule make_dataset:
    """Generate every split of one synthetic dataset (a compute job)."""
    wildcard_constraints:
        dataset=name_pattern(SYNTHETIC_DATASETS),
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


rule fetch_dataset:
    """Load and format every split of one hub/local dataset, downloading what it needs (hub rows, images by URL).
    A local rule (runs where Snakemake runs, which has the internet); the compute jobs read its output folder."""
    wildcard_constraints:
        dataset=name_pattern(FETCHED_DATASETS),
    output:
        directory("results/data/{dataset}"),
    params:
        script=f"{SCRIPTS}/make_dataset.py",
        cfg=lambda w: as_json(config["datasets"][w.dataset]),
        seed=lambda w: SEED_OF["datasets"][w.dataset],
    log:
        "results/logs/make_dataset/{dataset}.log",
    conda:
        "../../envs/data.yaml"
    threads: 1
    shell:
        "python {params.script} --name {wildcards.dataset} --seed {params.seed}"
        " --config-json {params.cfg:q} --out {output} > {log} 2>&1"
