# Dataset-scale saliency audits of image classifiers.
# Run: snakemake --cores N   (the default profile in profiles/default is picked up automatically)
from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


validate(config, "workflow/schemas/config.schema.yaml")


include: "rules/common.smk"
include: "rules/ingest.smk"
include: "rules/model.smk"
include: "rules/features.smk"
include: "rules/reference.smk"
include: "rules/explain.smk"
include: "rules/metrics.smk"
include: "rules/report.smk"


# Before anything is submitted or run: stop if SLURM still holds jobs of these audits that a killed run left here
# (README, "Run on a cluster"). Jobs on a cluster run with --no-hooks, so only the run that schedules them checks.
onstart:
    refuse_to_run_beside_orphaned_jobs()


rule all:
    input:
        all_reports(),
    default_target: True
