# The report's figures (results/report/figures/{kind}-{name}.png, written by craft report)
# under these names in `snakemake --report`; the evaluation stages' own figures that the page
# shows too (audit, memorization pairs) are in their rules' categories.
REPORT_FIGURES = {
    "grid": "Sample grids",
    "cas": "CAS distributions",
    "curves": "Reward finetuning curves",
    "bars": "Key metrics",
    "frontier": "Reward paths",
}


rule report:
    input:
        unpack(get_report_inputs),
    output:
        summary=report(
            str(LAYOUT.report() / "summary.csv"),
            caption="report/summary.rst",
            category="Summary",
            labels={"table": "every metric"},
        ),
        claim=report(
            str(LAYOUT.report() / "claim.csv"),
            caption="report/claim.rst",
            category="Summary",
            labels={"table": "the claim"},
        ),
        html=str(LAYOUT.report() / "index.html"),
        figures=report(
            directory(str(LAYOUT.report() / "figures")),
            patterns=["{kind,grid|cas|curves|bars|frontier}-{name}.png"],
            caption="report/figure.rst",
            category="Report figures",
            subcategory=lambda wildcards: REPORT_FIGURES[wildcards.kind],
            labels={"figure": "{name}"},
        ),
    log:
        f"{LOGS}/report.log",
    benchmark:
        f"{BENCHMARKS}/report.tsv"
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
        spec=get_spec("report"),
        out=get_report_dir,
    shell:
        ATTEMPT_LOG + "craft report --config {params.config} --out {params.out}"
