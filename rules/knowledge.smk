rule knowledge:
    input:
        review=get_knowledge_review,
        curated=get_curated_knowledge,
    output:
        json=str(LAYOUT.knowledge("{modality}")),
        review=str(LAYOUT.knowledge_review("{modality}")),
    log:
        f"{LOGS}/knowledge/{{modality}}.log",
    benchmark:
        f"{BENCHMARKS}/knowledge/{{modality}}.tsv"
    conda:
        CONDA_ENV
    container:
        CONTAINER
    envmodules:
        *get_modules("knowledge"),
    threads: res("knowledge", "threads")
    resources:
        **get_resources("knowledge"),
    params:
        config=CONFIG_FILE,
        spec=get_spec("knowledge"),
    shell:
        ATTEMPT_LOG
        + "craft knowledge build --config {params.config} --modality {wildcards.modality}"
        " --out {output.json}"
