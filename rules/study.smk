rule study_export:
    input:
        unpack(get_study_samples),
    output:
        html=str(LAYOUT.study("{modality}") / "study.html"),
        key=str(LAYOUT.study("{modality}") / "key.json"),
    log:
        f"{LOGS}/study_export/{{modality}}.log",
    benchmark:
        f"{BENCHMARKS}/study_export/{{modality}}.tsv"
    conda:
        CONDA_ENV
    container:
        CONTAINER
    envmodules:
        *get_modules("report"),
    threads: res("report", "threads")
    resources:
        **get_resources("report"),
    params:
        config=CONFIG_FILE,
        spec=get_spec("study"),
        study=get_study_settings,
        out=get_study_dir,
    shell:
        ATTEMPT_LOG
        + "craft study export --config {params.config} --modality {wildcards.modality}"
        " --method-a {params.study[method_a]}"
        " --method-b {params.study[method_b]}"
        " --seed {params.study[seed]} --samples-a {input.a} --samples-b {input.b}"
        " --pairs-per-label {params.study[pairs_per_label]}"
        " --study-seed {params.study[study_seed]} --out {params.out}"
