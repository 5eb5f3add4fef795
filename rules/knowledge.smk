rule knowledge:
    input:
        review=get_knowledge_review,
    output:
        json=str(LAYOUT.knowledge("{modality}")),
        review=str(LAYOUT.knowledge_review("{modality}")),
    log:
        f"{LOGS}/knowledge/{{modality}}.log",
    conda:
        "../envs/craft.yaml"
    threads: res("knowledge", "threads")
    resources:
        runtime=res("knowledge", "runtime"),
        mem_mb=res("knowledge", "mem_mb"),
        gpu=res("knowledge", "gpu"),
    params:
        config=CONFIG_FILE,
        settings=get_settings("knowledge"),
    shell:
        "craft knowledge build --config {params.config} --modality {wildcards.modality}"
        " --out {output.json} > {log} 2>&1"
