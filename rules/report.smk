rule report:
    input:
        unpack(get_report_inputs),
    output:
        summary=report(
            str(LAYOUT.report() / "summary.csv"), category="Summary", labels={"table": "summary"}
        ),
        html=str(LAYOUT.report() / "index.html"),
    log:
        f"{LOGS}/report.log",
    threads: res("report", "threads")
    resources:
        runtime=res("report", "runtime"),
        mem_mb=res("report", "mem_mb"),
    shell:
        "craft report --config {CONFIG_FILE} --out {RESULTS}/report > {log} 2>&1"
