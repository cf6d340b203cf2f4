from grpo_vqa.reporting.paper import table_inputs  # noqa: E402


rule table:
    """A paper table (Markdown + CSV), its figures and provenance sidecars, from upstream score files."""
    input:
        lambda w: table_inputs(w.table, config["tables"][w.table]),
    output:
        md="results/tables/{table}.md",
        csv="results/tables/{table}.csv",
        figures=directory("results/figures/{table}"),
    params:
        script=f"{SCRIPTS}/make_table.py",
        cfg=lambda w: as_json(config),
    log:
        "results/logs/table/{table}.log",
    benchmark:
        "results/benchmarks/table/{table}.tsv"
    conda:
        "../../envs/report.yaml"
    threads: 1
    resources:
        runtime=10,
        mem_mb=2000,
    shell:
        "python {params.script} --name {wildcards.table} --config-json {params.cfg:q} --out {output.md}"
        " --fig-dir {output.figures}"
        " > {log} 2>&1"
