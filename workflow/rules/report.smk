from grpo_vqa.reporting.paper import table_config, table_inputs  # noqa: E402
from grpo_vqa.reporting.report import (  # noqa: E402
    JUDGE_FAMILY,
    provenance_labels,
    register_embedded_figure,
    table_family,
)

register_embedded_figure()  # `.. embedded-figure::` in workflow/report/workflow.rst

# Snakemake's native report (`snakemake --report results/report.html`): the tables and figures below and the
# judge's outputs (judge.smk) are flagged with report(...), with a caption in workflow/report/ and labels read
# from each file's `*.provenance.json` sidecar (config hash, git commit, package versions).



rule table:
    """A paper table (Markdown + CSV), its figures and provenance sidecars, from upstream score files."""
    input:
        lambda w: table_inputs(w.table, config),
    output:
        md=report(
            "results/tables/{table}.md",
            caption="../report/table.rst",
            category=table_family,
            subcategory="tables",
            labels=provenance_labels("md"),
        ),
        csv=report(
            "results/tables/{table}.csv",
            caption="../report/table.rst",
            category=table_family,
            subcategory="tables",
            labels=provenance_labels("csv"),
        ),
        figures=report(
            directory("results/figures/{table}"),
            patterns=["{name}.png"],
            caption="../report/table_figure.rst",
            category=table_family,
            subcategory="figures",
            labels=provenance_labels("figures", "{name}.png"),
        ),
    params:
        script=f"{SCRIPTS}/make_table.py",
        cfg=lambda w: as_json(table_config(config, w.table)),
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


rule judge_verdicts_figure:
    """Judge verdicts by type (stacked shares per run/split/stage) from the alignment table."""
    input:
        "results/tables/alignment.csv",
    output:
        report(
            "results/figures/alignment_verdicts.png",
            caption="../report/judge_verdicts.rst",
            category=JUDGE_FAMILY,
            subcategory="figures",
            labels=provenance_labels(0),
        ),
    log:
        "results/logs/report/alignment_verdicts.log",
    benchmark:
        "results/benchmarks/report/alignment_verdicts.tsv"
    conda:
        "../../envs/report.yaml"
    threads: 1
    resources:
        runtime=10,
        mem_mb=2000,
    shell:
        "python -m grpo_vqa.reporting.figures judge-verdicts --csv {input} --out {output} > {log} 2>&1"
