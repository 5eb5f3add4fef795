rule pretrain:
    output:
        model=directory(str(LAYOUT.foundation("{modality}"))),
    params:
        settings=get_settings("pretrain"),
    log:
        f"{LOGS}/pretrain/{{modality}}.log",
    threads: res("pretrain", "threads")
    resources:
        runtime=res("pretrain", "runtime"),
        mem_mb=res("pretrain", "mem_mb"),
        gpu=res("pretrain", "gpu"),
    shell:
        "craft pretrain --config {CONFIG_FILE} --modality {wildcards.modality} --out {output.model}"
        " --threads {threads} > {log} 2>&1"


rule adapt:
    input:
        data=rules.prepare.output.h5,
        foundation=get_foundation,
    output:
        card=str(LAYOUT.card("{modality}", "{method}", "{seed}")),
    params:
        settings=get_settings("adapt"),
    log:
        f"{LOGS}/adapt/{{modality}}/{{method}}/{{seed}}.log",
    threads: res("adapt", "threads")
    resources:
        runtime=res("adapt", "runtime"),
        mem_mb=res("adapt", "mem_mb"),
        gpu=res("adapt", "gpu"),
    shell:
        "craft adapt --config {CONFIG_FILE} --modality {wildcards.modality} --method {wildcards.method}"
        " --seed {wildcards.seed} --out {output.card} --threads {threads} > {log} 2>&1"
