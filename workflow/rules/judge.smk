# LLM-as-judge alignment scoring: judge each generated response, then tabulate per run/split/stage.
# Scripts and prompts are found through the checkout (SCRIPTS, PROMPT_DIR); common.smk puts src/ on PYTHONPATH.
from grpo_vqa.judge.prompts import resolve_prompt_path


rule judge_responses:
    input:
        responses="results/eval/{exp}/{stage}/generated_responses_{split}.json",
        prompt=lambda w: str(resolve_prompt_path(w.prompt, PROMPT_DIR)),
    output:
        "results/judge/{exp}/{stage}/{split}.{prompt}.jsonl",
    params:
        prompt_dir=PROMPT_DIR,
        script=f"{SCRIPTS}/judge_responses.py",
        cfg=lambda w: as_json(judge_job_config()),
        cache=lambda w: f"results/judge/.cache/{w.exp}/{w.stage}/{w.split}",
    log:
        "results/logs/judge/{exp}/{stage}/{split}.{prompt}.log",
    benchmark:
        "results/benchmarks/judge/{exp}/{stage}/{split}.{prompt}.tsv"
    wildcard_constraints:
        stage="base|sft|grpo",
        split="train|val|test",
        prompt=r"[a-z0-9_]+(\.v\d+)?",
    conda:
        "../../envs/judge.yaml"
    threads: 1
    resources:
        runtime=lambda w: 20 if config["judge"]["backend"] == "rules" else 240,
        mem_mb=2000,
    shell:
        "python {params.script}"
        " --responses {input.responses} --output {output} --cache-dir {params.cache}"
        " --prompt {wildcards.prompt} --prompt-dir {params.prompt_dir}"
        " --run {wildcards.exp} --stage {wildcards.stage} --split {wildcards.split}"
        " --config-json {params.cfg:q} > {log} 2>&1"


rule judge_calibration:
    """The judge on the shipped calibration set (fixed responses with human labels, which the judge never
    sees): judge-vs-human agreement on it means the same on every machine and every run."""
    input:
        responses=judge_calibration_set,
        prompt=lambda w: str(resolve_prompt_path(w.prompt, PROMPT_DIR)),
    output:
        "results/judge/calibration/{prompt}.jsonl",
    params:
        prompt_dir=PROMPT_DIR,
        script=f"{SCRIPTS}/judge_responses.py",
        cfg=lambda w: as_json(judge_job_config() | {"max_items_per_split": None}),
        cache="results/judge/.cache/calibration",
    log:
        "results/logs/judge/calibration.{prompt}.log",
    benchmark:
        "results/benchmarks/judge/calibration.{prompt}.tsv"
    wildcard_constraints:
        prompt=r"[a-z0-9_]+(\.v\d+)?",
    conda:
        "../../envs/judge.yaml"
    threads: 1
    resources:
        runtime=lambda w: 20 if config["judge"]["backend"] == "rules" else 240,
        mem_mb=2000,
    shell:
        "python {params.script}"
        " --responses {input.responses} --output {output} --cache-dir {params.cache}"
        " --prompt {wildcards.prompt} --prompt-dir {params.prompt_dir}"
        " --run calibration --stage calibration --split calibration"
        " --config-json {params.cfg:q} > {log} 2>&1"


rule alignment_table:
    input:
        judged=expand(
            "results/judge/{exp}/{stage}/{split}.{prompt}.jsonl",
            exp=config["judge"]["runs"],
            stage=config["judge"]["stages"],
            split=config["judge"]["splits"],
            prompt=config["judge"]["prompt"],
        ),
        labels=judge_human_labels,
        calibration=judge_calibration_set,
        calibration_judged=lambda w: (
            [f"results/judge/calibration/{config['judge']['prompt']}.jsonl"] if judge_calibration_set() else []
        ),
    output:
        md=report(
            "results/tables/alignment.md",
            caption="../report/alignment.rst",
            category=JUDGE_FAMILY,
            subcategory="tables",
            labels=provenance_labels("md"),
        ),
        csv=report(
            "results/tables/alignment.csv",
            caption="../report/alignment.rst",
            category=JUDGE_FAMILY,
            subcategory="tables",
            labels=provenance_labels("csv"),
        ),
        fig=report(
            "results/figures/alignment_confusion.png",
            caption="../report/alignment_confusion.rst",
            category=JUDGE_FAMILY,
            subcategory="figures",
            labels=provenance_labels("fig"),
        ),
    params:
        script=f"{SCRIPTS}/alignment_table.py",
        cfg=lambda w: as_json(config["judge"]),
        labels=lambda w, input: f"--human-labels {input.labels[0]}" if input.labels else "",
        calibration=lambda w, input: (
            f"--calibration {input.calibration[0]} --calibration-judged {input.calibration_judged[0]}"
            if input.calibration
            else ""
        ),
    log:
        "results/logs/judge/alignment_table.log",
    benchmark:
        "results/benchmarks/judge/alignment_table.tsv"
    conda:
        "../../envs/judge.yaml"
    threads: 1
    resources:
        runtime=10,
        mem_mb=2000,
    shell:
        "python {params.script}"
        " --judged {input.judged} {params.labels} {params.calibration} --out-md {output.md} --out-csv {output.csv}"
        " --out-fig {output.fig} --config-json {params.cfg:q} > {log} 2>&1"
