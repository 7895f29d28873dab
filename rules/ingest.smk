checkpoint list_images:
    input:
        dataset_inputs,
        check="results/{audit}/model_check.json",
    output:
        listing="results/{audit}/listing.parquet",
        rejects="results/{audit}/listing_rejects.parquet",
    params:
        settings=dataset_params,
        trains_model=trains_model,
        folders=folder_dates,
        manifest=dataset_stamp,
        features=lambda wildcards: FeatureSettings.output_values(audit_config(wildcards)["features"], {"shard_size"}),
    conda:
        "../workflow/envs/audit.yaml"
    log:
        "logs/{audit}/list_images.log",
    benchmark:
        "benchmarks/rules/{audit}/list_images.tsv"
    script:
        "../workflow/scripts/list_images.py"


# One arrival shard's images (audit.data.shards). The listing is ancient: a new listing reruns only the
# shards whose digest (ids and fingerprints of their images) changed.
rule ingest_shard:
    input:
        listing=ancient("results/{audit}/listing.parquet"),
        check="results/{audit}/model_check.json",
    output:
        images=directory("results/{audit}/images/shard-{shard}.zarr"),
        rejects="results/{audit}/images/shard-{shard}.rejects.parquet",
    params:
        settings=dataset_params,
        digest=shard_digest_param,
    resources:
        runtime=shard_runtime("ingest"),
    conda:
        "../workflow/envs/audit.yaml"
    log:
        "logs/{audit}/ingest_shard/shard-{shard}.log",
    benchmark:
        "benchmarks/rules/{audit}/ingest_shard/shard-{shard}.tsv"
    script:
        "../workflow/scripts/ingest_shard.py"


rule collect_rejects:
    input:
        listing="results/{audit}/listing.parquet",
        table="results/{audit}/listing_rejects.parquet",
        shards=image_shard_rejects,
    output:
        "results/{audit}/rejects.parquet",
    conda:
        "../workflow/envs/audit.yaml"
    log:
        "logs/{audit}/collect_rejects.log",
    benchmark:
        "benchmarks/rules/{audit}/collect_rejects.tsv"
    script:
        "../workflow/scripts/collect_rejects.py"
