# craft workflow: modalities x methods x seeds, from images to one report.
# Run:  snakemake --profile profiles/local         (one machine)
#       snakemake --profile slurm                  (after `craft profile install slurm ...`)
from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/knowledge.smk"
include: "rules/train.smk"
include: "rules/sample.smk"
include: "rules/evaluate.smk"
include: "rules/cas.smk"
include: "rules/study.smk"
include: "rules/report.smk"


rule all:
    input:
        get_final_output(),
