rule train_evaluator:
    input:
        knowledge=rules.knowledge.output.json,
    output:
        model=directory(str(LAYOUT.evaluator("{modality}", "{evaluator}"))),
    log:
        f"{LOGS}/train_evaluator/{{modality}}/{{evaluator}}.log",
    benchmark:
        f"{BENCHMARKS}/train_evaluator/{{modality}}/{{evaluator}}.tsv"
    conda:
        CONDA_ENV
    container:
        CONTAINER
    envmodules:
        *get_modules("evaluator"),
    threads: res("evaluator", "threads")
    resources:
        **get_resources("evaluator"),
    params:
        config=CONFIG_FILE,
        spec=get_spec("train_evaluator"),
    shell:
        ATTEMPT_LOG
        + "craft evaluator train --config {params.config} --modality {wildcards.modality}"
        " --evaluator {wildcards.evaluator} --knowledge {input.knowledge} --out {output.model}"
        " --threads {threads}"


rule reference:
    input:
        data=rules.prepare.output.h5,
        knowledge=rules.knowledge.output.json,
        evaluator=get_trained_evaluator,
    output:
        reference=str(LAYOUT.reference("{modality}", "{evaluator}")),
    log:
        f"{LOGS}/reference/{{modality}}/{{evaluator}}.log",
    benchmark:
        f"{BENCHMARKS}/reference/{{modality}}/{{evaluator}}.tsv"
    conda:
        CONDA_ENV
    container:
        CONTAINER
    envmodules:
        *get_modules("reference"),
    threads: res("reference", "threads")
    resources:
        **get_resources("reference"),
    params:
        config=CONFIG_FILE,
        spec=get_spec("reference"),
    shell:
        ATTEMPT_LOG
        + "craft reference --config {params.config} --modality {wildcards.modality}"
        " --evaluator {wildcards.evaluator} --out {output.reference} --threads {threads}"


rule score:
    input:
        samples=rules.generate.output.samples,
        reference=rules.reference.output.reference,
        knowledge=rules.knowledge.output.json,
        evaluator=get_trained_evaluator,
    output:
        scores=str(LAYOUT.cas_scores("{modality}", "{method}", "{seed}", "{evaluator}")),
        metrics=str(
            LAYOUT.metrics("{modality}", "{method}", "{seed}", "cas-{evaluator}")
        ),
    log:
        f"{LOGS}/score/{{modality}}/{{method}}/{{seed}}/{{evaluator}}.log",
    benchmark:
        f"{BENCHMARKS}/score/{{modality}}/{{method}}/{{seed}}/{{evaluator}}.tsv"
    group:
        get_evaluation_group()
    conda:
        CONDA_ENV
    container:
        CONTAINER
    envmodules:
        *get_modules("score"),
    threads: res("score", "threads")
    resources:
        **get_evaluation_resources("score"),
    params:
        config=CONFIG_FILE,
        spec=get_spec("score"),
    shell:
        ATTEMPT_LOG
        + "craft score --config {params.config} --modality {wildcards.modality}"
        " --method {wildcards.method} --seed {wildcards.seed} --evaluator {wildcards.evaluator}"
        " --samples {input.samples} --out {output.scores} --threads {threads}"
