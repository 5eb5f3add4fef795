rule evaluate_oracle:
    input:
        samples=rules.generate.output.samples,
    output:
        metrics=str(LAYOUT.metrics("{modality}", "{method}", "{seed}", "oracle")),
    params:
        settings=get_settings("evaluate"),
    log:
        f"{LOGS}/evaluate_oracle/{{modality}}/{{method}}/{{seed}}.log",
    threads: res("evaluate", "threads")
    resources:
        runtime=res("evaluate", "runtime"),
        mem_mb=res("evaluate", "mem_mb"),
    shell:
        "craft evaluate oracle --config {CONFIG_FILE} --modality {wildcards.modality}"
        " --method {wildcards.method} --seed {wildcards.seed} --samples {input.samples}"
        " --out {output.metrics} > {log} 2>&1"
