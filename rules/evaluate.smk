rule evaluate_oracle:
    input:
        samples=rules.generate.output.samples,
    output:
        metrics=str(LAYOUT.metrics("{modality}", "{method}", "{seed}", "oracle")),
    log:
        f"{LOGS}/evaluate_oracle/{{modality}}/{{method}}/{{seed}}.log",
    conda:
        "../envs/craft.yaml"
    threads: res("evaluate", "threads")
    resources:
        runtime=res("evaluate", "runtime"),
        mem_mb=res("evaluate", "mem_mb"),
    params:
        config=CONFIG_FILE,
        settings=get_settings("evaluate"),
    shell:
        "craft evaluate oracle --config {params.config} --modality {wildcards.modality}"
        " --method {wildcards.method} --seed {wildcards.seed} --samples {input.samples}"
        " --out {output.metrics} > {log} 2>&1"
