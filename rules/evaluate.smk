rule evaluate_oracle:
    input:
        samples=rules.generate.output.samples,
        data=rules.prepare.output.h5,
    output:
        metrics=str(LAYOUT.metrics("{modality}", "{method}", "{seed}", "oracle")),
    log:
        f"{LOGS}/evaluate_oracle/{{modality}}/{{method}}/{{seed}}.log",
    benchmark:
        f"{BENCHMARKS}/evaluate_oracle/{{modality}}/{{method}}/{{seed}}.tsv"
    group:
        get_evaluation_group()
    conda:
        CONDA_ENV
    container:
        CONTAINER
    envmodules:
        *get_modules("evaluate"),
    threads: res("evaluate", "threads")
    resources:
        **get_evaluation_resources("evaluate"),
    params:
        config=CONFIG_FILE,
        spec=get_spec("evaluate_oracle"),
    shell:
        ATTEMPT_LOG
        + "craft evaluate oracle --config {params.config} --modality {wildcards.modality}"
        " --method {wildcards.method} --seed {wildcards.seed} --samples {input.samples}"
        " --data {input.data} --out {output.metrics}"


rule downstream_real:
    input:
        data=rules.prepare.output.h5,
    output:
        real=str(LAYOUT.downstream_real("{modality}", "{seed}")),
    log:
        f"{LOGS}/downstream_real/{{modality}}/{{seed}}.log",
    benchmark:
        f"{BENCHMARKS}/downstream_real/{{modality}}/{{seed}}.tsv"
    conda:
        CONDA_ENV
    container:
        CONTAINER
    envmodules:
        *get_modules("downstream"),
    threads: res("downstream", "threads")
    resources:
        **get_resources("downstream"),
    params:
        config=CONFIG_FILE,
        spec=get_spec("downstream_real"),
    shell:
        ATTEMPT_LOG
        + "craft downstream-real --config {params.config} --modality {wildcards.modality}"
        " --seed {wildcards.seed} --data {input.data} --out {output.real} --threads {threads}"


rule downstream:
    input:
        samples=rules.generate.output.samples,
        data=rules.prepare.output.h5,
        # The real-only classifiers: trained once per modality and seed, for every method.
        real=rules.downstream_real.output.real,
    output:
        metrics=str(LAYOUT.metrics("{modality}", "{method}", "{seed}", "downstream")),
    log:
        f"{LOGS}/downstream/{{modality}}/{{method}}/{{seed}}.log",
    benchmark:
        f"{BENCHMARKS}/downstream/{{modality}}/{{method}}/{{seed}}.tsv"
    group:
        get_evaluation_group()
    conda:
        CONDA_ENV
    container:
        CONTAINER
    envmodules:
        *get_modules("downstream"),
    threads: res("downstream", "threads")
    resources:
        **get_evaluation_resources("downstream"),
    params:
        config=CONFIG_FILE,
        spec=get_spec("downstream"),
    shell:
        ATTEMPT_LOG
        + "craft downstream --config {params.config} --modality {wildcards.modality}"
        " --method {wildcards.method} --seed {wildcards.seed} --samples {input.samples}"
        " --data {input.data} --out {output.metrics} --threads {threads} --real {input.real}"


rule memorization:
    input:
        samples=rules.generate.output.samples,
        data=rules.prepare.output.h5,
    output:
        metrics=str(LAYOUT.metrics("{modality}", "{method}", "{seed}", "memorization")),
        pairs=str(LAYOUT.run("{modality}", "{method}", "{seed}") / "memorization.h5"),
        figure=report(
            str(
                LAYOUT.run("{modality}", "{method}", "{seed}")
                / "memorization-pairs.png"
            ),
            caption="report/memorization.rst",
            category="Memorization",
            subcategory="{modality}",
            labels={"method": "{method}", "seed": "{seed}"},
        ),
    log:
        f"{LOGS}/memorization/{{modality}}/{{method}}/{{seed}}.log",
    benchmark:
        f"{BENCHMARKS}/memorization/{{modality}}/{{method}}/{{seed}}.tsv"
    group:
        get_evaluation_group()
    conda:
        CONDA_ENV
    container:
        CONTAINER
    envmodules:
        *get_modules("evaluate"),
    threads: res("evaluate", "threads")
    resources:
        **get_evaluation_resources("evaluate"),
    params:
        config=CONFIG_FILE,
        spec=get_spec("memorization"),
    shell:
        ATTEMPT_LOG
        + "craft memorization --config {params.config} --modality {wildcards.modality}"
        " --method {wildcards.method} --seed {wildcards.seed} --samples {input.samples}"
        " --data {input.data} --out {output.metrics} --threads {threads}"


rule audit:
    input:
        samples=rules.generate.output.samples,
        knowledge=rules.knowledge.output.json,
        evaluators=get_auditor_evaluators,
    output:
        metrics=str(LAYOUT.metrics("{modality}", "{method}", "{seed}", "audit")),
        table=str(LAYOUT.run("{modality}", "{method}", "{seed}") / "audit.csv"),
        figure=report(
            str(LAYOUT.run("{modality}", "{method}", "{seed}") / "audit.png"),
            caption="report/audit.rst",
            category="Checklist audit",
            subcategory="{modality}",
            labels={"method": "{method}", "seed": "{seed}"},
        ),
    log:
        f"{LOGS}/audit/{{modality}}/{{method}}/{{seed}}.log",
    benchmark:
        f"{BENCHMARKS}/audit/{{modality}}/{{method}}/{{seed}}.tsv"
    group:
        get_evaluation_group()
    conda:
        CONDA_ENV
    container:
        CONTAINER
    envmodules:
        *get_modules("evaluate"),
    threads: res("evaluate", "threads")
    resources:
        **get_evaluation_resources("evaluate"),
    params:
        config=CONFIG_FILE,
        spec=get_spec("audit"),
    shell:
        ATTEMPT_LOG
        + "craft audit --config {params.config} --modality {wildcards.modality}"
        " --method {wildcards.method} --seed {wildcards.seed} --samples {input.samples}"
        " --knowledge {input.knowledge} --out {output.metrics} --threads {threads}"
        ""


rule fidelity:
    input:
        samples=rules.generate.output.samples,
        data=rules.prepare.output.h5,
    output:
        metrics=str(LAYOUT.metrics("{modality}", "{method}", "{seed}", "fidelity")),
    log:
        f"{LOGS}/fidelity/{{modality}}/{{method}}/{{seed}}.log",
    benchmark:
        f"{BENCHMARKS}/fidelity/{{modality}}/{{method}}/{{seed}}.tsv"
    group:
        get_evaluation_group()
    conda:
        CONDA_ENV
    container:
        CONTAINER
    envmodules:
        *get_modules("evaluate"),
    threads: res("evaluate", "threads")
    resources:
        **get_evaluation_resources("evaluate"),
    params:
        config=CONFIG_FILE,
        spec=get_spec("fidelity"),
    shell:
        ATTEMPT_LOG
        + "craft fidelity --config {params.config} --modality {wildcards.modality}"
        " --method {wildcards.method} --seed {wildcards.seed} --samples {input.samples}"
        " --data {input.data} --out {output.metrics} --threads {threads}"


rule reward_path:
    input:
        unpack(get_path_inputs),
    output:
        metrics=str(LAYOUT.metrics("{modality}", "{method}", "{seed}", "path")),
    log:
        f"{LOGS}/path/{{modality}}/{{method}}/{{seed}}.log",
    benchmark:
        f"{BENCHMARKS}/path/{{modality}}/{{method}}/{{seed}}.tsv"
    wildcard_constraints:
        method=one_of(ALIGN_METHODS),
    conda:
        CONDA_ENV
    container:
        CONTAINER
    envmodules:
        *get_modules("generate"),
    threads: res("generate", "threads")
    resources:
        **get_resources("generate"),
    params:
        config=CONFIG_FILE,
        spec=get_spec("path"),
    shell:
        ATTEMPT_LOG
        + "craft path --config {params.config} --modality {wildcards.modality}"
        " --method {wildcards.method} --seed {wildcards.seed} --out {output.metrics}"
        " --threads {threads}"
