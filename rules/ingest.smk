checkpoint ingest:
    input:
        dataset_inputs,
    output:
        images=directory("results/{audit}/images.zarr"),
        rejects="results/{audit}/rejects.parquet",
    params:
        dataset=lambda wildcards: audit_config(wildcards)["dataset"],
        image_size=image_size,
    conda:
        "../workflow/envs/audit.yaml"
    log:
        "logs/{audit}/ingest.log",
    benchmark:
        "benchmarks/rules/{audit}/ingest.tsv"
    script:
        "../workflow/scripts/ingest.py"
