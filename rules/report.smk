rule report:
    input:
        unpack(get_report_inputs),
    output:
        summary=report(
            str(LAYOUT.report() / "summary.csv"),
            category="Summary",
            labels={"table": "summary"},
        ),
        html=str(LAYOUT.report() / "index.html"),
    log:
        f"{LOGS}/report.log",
    benchmark:
        f"{BENCHMARKS}/report.tsv"
    threads: res("report", "threads")
    resources:
        **get_resources("report"),
    params:
        config=CONFIG_FILE,
        spec=get_spec("report"),
        out=get_report_dir,
    shell:
        ATTEMPT_LOG + "craft report --config {params.config} --out {params.out}"
