rule extract_features:
    input:
        images="results/{audit}/images.zarr",
        checkpoint=model_checkpoint,
    output:
        directory("results/{audit}/features.zarr"),
    params:
        batch_size=lambda wildcards: audit_config(wildcards)["features"]["batch_size"],
        chunk=lambda wildcards: audit_config(wildcards)["dataset"]["chunk"],
    resources:
        gpu=1,
    conda:
        "../workflow/envs/audit.yaml"
    log:
        "logs/{audit}/extract_features.log",
    benchmark:
        "benchmarks/rules/{audit}/extract_features.tsv"
    script:
        "../workflow/scripts/extract_features.py"
