rule generate:
    input:
        card=rules.adapt.output.card,
    output:
        samples=str(LAYOUT.samples("{modality}", "{method}", "{seed}")),
    params:
        settings=get_settings("generate"),
    log:
        f"{LOGS}/generate/{{modality}}/{{method}}/{{seed}}.log",
    threads: res("generate", "threads")
    resources:
        runtime=res("generate", "runtime"),
        mem_mb=res("generate", "mem_mb"),
        gpu=res("generate", "gpu"),
    shell:
        "craft generate --config {CONFIG_FILE} --modality {wildcards.modality} --method {wildcards.method}"
        " --seed {wildcards.seed} --model {input.card} --out {output.samples} --threads {threads}"
        " > {log} 2>&1"
