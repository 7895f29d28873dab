rule extract_features:
    input:
        images="results/{audit}/images.zarr",
        checkpoint=model_checkpoint,
    output:
        directory("results/{audit}/features/shard-{shard}.zarr"),
    params:
        image_range=shard_range,
        settings=feature_params,
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
