rule extract_features:
    input:
        images="results/{audit}/images/shard-{shard}.zarr",
        checkpoint=model_checkpoint,
    output:
        directory("results/{audit}/features/shard-{shard}.zarr"),
    params:
        settings=feature_params,
        dataset=lambda wildcards: DatasetSettings.output_values(audit_config(wildcards)["dataset"], {"chunk"}),
    resources:
        runtime=shard_runtime("features"),
        gpu=1,
    threads: 8
    conda:
        "../workflow/envs/audit.yaml"
    log:
        "logs/{audit}/extract_features/shard-{shard}.log",
    benchmark:
        "benchmarks/rules/{audit}/extract_features/shard-{shard}.tsv"
    script:
        "../workflow/scripts/extract_features.py"


# Per class: count, Σz and a Gram factor of Σzzᵀ of the shard's present images (audit.reference_groups.store): additive,
# so the reference store combines shards instead of passing over every row. Reruns when the shard's
# features change or one of its images leaves the dataset (its present digest).
rule shard_statistics:
    input:
        features="results/{audit}/features/shard-{shard}.zarr",
        listing=ancient("results/{audit}/listing.parquet"),
    output:
        directory("results/{audit}/statistics/shard-{shard}.zarr"),
    params:
        present=shard_present_param,
    resources:
        runtime=shard_runtime("statistics"),
    conda:
        "../workflow/envs/audit.yaml"
    log:
        "logs/{audit}/shard_statistics/shard-{shard}.log",
    benchmark:
        "benchmarks/rules/{audit}/shard_statistics/shard-{shard}.tsv"
    script:
        "../workflow/scripts/shard_statistics.py"
