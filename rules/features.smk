rule extract_features:
    input:
        images="results/{audit}/images.zarr",
        checkpoint=model_checkpoint,
    output:
        directory("results/{audit}/features/shard-{shard}.zarr"),
    params:
        start=lambda wildcards: int(wildcards.shard) * audit_config(wildcards)["features"]["shard_size"],
        stop=lambda wildcards: (int(wildcards.shard) + 1) * audit_config(wildcards)["features"]["shard_size"],
        features=lambda wildcards: audit_config(wildcards)["features"],
        chunk=lambda wildcards: audit_config(wildcards)["dataset"]["chunk"],
    resources:
        gpu=1,
    conda:
        "../workflow/envs/audit.yaml"
    log:
        "logs/{audit}/extract_features/shard-{shard}.log",
    benchmark:
        "benchmarks/rules/{audit}/extract_features/shard-{shard}.tsv"
    script:
        "../workflow/scripts/extract_features.py"
