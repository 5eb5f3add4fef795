rule prepare:
    output:
        h5=str(LAYOUT.data("{modality}")),
    params:
        settings=get_settings("prepare"),
    log:
        f"{LOGS}/prepare/{{modality}}.log",
    threads: res("prepare", "threads")
    resources:
        runtime=res("prepare", "runtime"),
        mem_mb=res("prepare", "mem_mb"),
    shell:
        "craft prepare --config {CONFIG_FILE} --modality {wildcards.modality} --out {output.h5} > {log} 2>&1"
