rule ingest:
    output:
        directory("results/{audit}/images.zarr"),
    params:
        dataset=lambda wildcards: audit_config(wildcards)["dataset"],
    conda:
        "../workflow/envs/audit.yaml"
    log:
        "logs/{audit}/ingest.log",
    script:
        "../workflow/scripts/ingest.py"
