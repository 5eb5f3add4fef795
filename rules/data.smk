rule prepare:
    output:
        h5=str(LAYOUT.data("{modality}")),
    log:
        f"{LOGS}/prepare/{{modality}}.log",
    conda:
        "../envs/craft.yaml"
    threads: res("prepare", "threads")
    resources:
        runtime=res("prepare", "runtime"),
        mem_mb=res("prepare", "mem_mb"),
    params:
        config=CONFIG_FILE,
        settings=get_settings("prepare"),
    shell:
        "craft prepare --config {params.config} --modality {wildcards.modality} --out {output.h5} > {log} 2>&1"
