rule pretrain:
    output:
        model=directory(str(LAYOUT.foundation("{modality}"))),
    log:
        f"{LOGS}/pretrain/{{modality}}.log",
    conda:
        "../envs/craft.yaml"
    threads: res("pretrain", "threads")
    resources:
        runtime=res("pretrain", "runtime"),
        mem_mb=res("pretrain", "mem_mb"),
        gpu=res("pretrain", "gpu"),
    params:
        config=CONFIG_FILE,
        settings=get_settings("pretrain"),
    shell:
        "craft pretrain --config {params.config} --modality {wildcards.modality} --out {output.model}"
        " --threads {threads} > {log} 2>&1"


rule adapt:
    input:
        data=rules.prepare.output.h5,
        foundation=get_foundation,
        knowledge=get_method_knowledge,
    output:
        card=str(LAYOUT.card("{modality}", "{method}", "{seed}")),
    log:
        f"{LOGS}/adapt/{{modality}}/{{method}}/{{seed}}.log",
    wildcard_constraints:
        method=one_of(ADAPT_METHODS),
    conda:
        "../envs/craft.yaml"
    threads: res("adapt", "threads")
    resources:
        runtime=res("adapt", "runtime"),
        mem_mb=res("adapt", "mem_mb"),
        gpu=res("adapt", "gpu"),
    params:
        config=CONFIG_FILE,
        settings=get_settings("adapt"),
    shell:
        "craft adapt --config {params.config} --modality {wildcards.modality} --method {wildcards.method}"
        " --seed {wildcards.seed} --out {output.card} --threads {threads} > {log} 2>&1"


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
    wildcard_constraints:
        method=one_of(ALIGN_METHODS),
    conda:
        "../envs/craft.yaml"
    threads: res("align", "threads")
    resources:
        runtime=res("align", "runtime"),
        mem_mb=res("align", "mem_mb"),
        gpu=res("align", "gpu"),
    params:
        config=CONFIG_FILE,
        settings=get_settings("align"),
        launcher=get_align_launcher,
    shell:
        "{params.launcher} align --config {params.config} --modality {wildcards.modality} --method {wildcards.method}"
        " --seed {wildcards.seed} --out {output.card} --threads {threads} > {log} 2>&1"
