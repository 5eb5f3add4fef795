rule prepare:
    input:
        manifest=get_manifest,
    output:
        h5=str(LAYOUT.data("{modality}")),
    log:
        f"{LOGS}/prepare/{{modality}}.log",
    benchmark:
        f"{BENCHMARKS}/prepare/{{modality}}.tsv"
    conda:
        CONDA_ENV
    container:
        CONTAINER
    envmodules:
        *get_modules("prepare"),
    threads: res("prepare", "threads")
    resources:
        **get_resources("prepare"),
    params:
        config=CONFIG_FILE,
        spec=get_spec("prepare"),
    shell:
        ATTEMPT_LOG
        + "craft prepare --config {params.config} --modality {wildcards.modality} --out {output.h5}"
