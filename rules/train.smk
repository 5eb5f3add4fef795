rule pretrain:
    output:
        model=directory(str(LAYOUT.foundation("{modality}"))),
    log:
        f"{LOGS}/pretrain/{{modality}}.log",
    benchmark:
        f"{BENCHMARKS}/pretrain/{{modality}}.tsv"
    conda:
        CONDA_ENV
    container:
        CONTAINER
    envmodules:
        *get_modules("pretrain"),
    threads: res("pretrain", "threads")
    resources:
        **get_resources("pretrain"),
    params:
        config=CONFIG_FILE,
        spec=get_spec("pretrain"),
    shell:
        ATTEMPT_LOG
        + "craft pretrain --config {params.config} --modality {wildcards.modality} --out {output.model}"
        " --threads {threads}"


rule adapt:
    input:
        data=rules.prepare.output.h5,
        foundation=get_foundation,
        knowledge=get_method_knowledge,
    output:
        card=str(LAYOUT.card("{modality}", "{method}", "{seed}")),
    log:
        f"{LOGS}/adapt/{{modality}}/{{method}}/{{seed}}.log",
    benchmark:
        f"{BENCHMARKS}/adapt/{{modality}}/{{method}}/{{seed}}.tsv"
    wildcard_constraints:
        method=one_of(ADAPT_METHODS),
    conda:
        CONDA_ENV
    container:
        CONTAINER
    envmodules:
        *get_modules("adapt"),
    threads: res("adapt", "threads")
    resources:
        **get_resources("adapt"),
    params:
        config=CONFIG_FILE,
        spec=get_spec("adapt"),
    shell:
        ATTEMPT_LOG
        + "craft adapt --config {params.config} --modality {wildcards.modality} --method {wildcards.method}"
        " --seed {wildcards.seed} --out {output.card} --threads {threads}"


rule align:
    input:
        init=get_init_card,
        data=rules.prepare.output.h5,
        knowledge=rules.knowledge.output.json,
        foundation=get_foundation,
        references=get_align_references,
        evaluators=get_align_evaluators,
    output:
        card=str(LAYOUT.card("{modality}", "{method}", "{seed}")),
        curves=str(LAYOUT.run("{modality}", "{method}", "{seed}") / "curves.csv"),
    log:
        f"{LOGS}/align/{{modality}}/{{method}}/{{seed}}.log",
    benchmark:
        f"{BENCHMARKS}/align/{{modality}}/{{method}}/{{seed}}.tsv"
    wildcard_constraints:
        method=one_of(ALIGN_METHODS),
    conda:
        CONDA_ENV
    container:
        CONTAINER
    envmodules:
        *get_modules("align"),
    threads: res("align", "threads")
    resources:
        **get_resources("align"),
    params:
        config=CONFIG_FILE,
        spec=get_spec("align"),
        launcher=get_align_launcher,
    shell:
        ATTEMPT_LOG
        + "{params.launcher} align --config {params.config} --modality {wildcards.modality} --method {wildcards.method}"
        " --seed {wildcards.seed} --out {output.card} --threads {threads}"
