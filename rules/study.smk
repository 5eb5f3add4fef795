rule study_export:
    input:
        unpack(get_study_samples),
    output:
        html=str(LAYOUT.study("{modality}") / "study.html"),
        key=str(LAYOUT.study("{modality}") / "key.json"),
    log:
        f"{LOGS}/study_export/{{modality}}.log",
    conda:
        "../envs/craft.yaml"
    threads: res("report", "threads")
    resources:
        runtime=res("report", "runtime"),
        mem_mb=res("report", "mem_mb"),
    params:
        config=CONFIG_FILE,
        settings=get_settings("study"),
        out=get_study_dir,
    shell:
        "craft study export --config {params.config} --modality {wildcards.modality}"
        " --method-a {params.settings[study][method_a]}"
        " --method-b {params.settings[study][method_b]}"
        " --seed {params.settings[study][seed]} --samples-a {input.a} --samples-b {input.b}"
        " --pairs-per-label {params.settings[study][pairs_per_label]}"
        " --study-seed {params.settings[study][study_seed]} --out {params.out} > {log} 2>&1"
