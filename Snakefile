# craft workflow: modalities x methods x seeds, from images to one report.
# Run:  snakemake --profile profiles/local         (one machine)
#       snakemake --profile slurm                  (after `craft profile install slurm ...`)
#       snakemake --profile slurm --configfile my.yaml   (your config, in place of config.yaml)
# No `configfile:` directive: rules/common.smk reads config.yaml only when no --configfile is
# given, so that a given file replaces the embedded default whole, in every job too.
from snakemake.utils import min_version

min_version("9.0")


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
