rule generate:
    input:
        card=rules.adapt.output.card,
        knowledge=get_method_knowledge,
    output:
        samples=str(LAYOUT.samples("{modality}", "{method}", "{seed}")),
    log:
        f"{LOGS}/generate/{{modality}}/{{method}}/{{seed}}.log",
    benchmark:
        f"{BENCHMARKS}/generate/{{modality}}/{{method}}/{{seed}}.tsv"
    conda:
        CONDA_ENV
    container:
        CONTAINER
    envmodules:
        *get_modules("generate"),
    threads: res("generate", "threads")
    resources:
        **get_resources("generate"),
    params:
        config=CONFIG_FILE,
        spec=get_spec("generate"),
    shell:
        ATTEMPT_LOG
        + "craft generate --config {params.config} --modality {wildcards.modality} --method {wildcards.method}"
        " --seed {wildcards.seed} --model {input.card} --out {output.samples} --threads {threads}"
        ""
