# A stratified, seeded sample of one shard's dataset maps (metrics.sample_per_class per class over the audit),
# scored by the configured metrics (audit.metrics.sample); the metrics rule's summary pools them with the subjects.
rule sample_metrics:
    input:
        maps="results/{audit}/dataset_maps/shard-{shard}.zarr",
        features="results/{audit}/features/shard-{shard}.zarr",
        images="results/{audit}/images/shard-{shard}.zarr",
        listing=ancient("results/{audit}/listing.parquet"),
        checkpoint=model_checkpoint,
        reference="results/{audit}/reference.zarr",
    output:
        "results/{audit}/sample_metrics/shard-{shard}.parquet",
    params:
        settings=metric_params,
        splits=dataset_splits,
        sample=shard_sample_param,
    resources:
        gpu=1,
    conda:
        "../workflow/envs/audit.yaml"
    log:
        "logs/{audit}/sample_metrics/shard-{shard}.log",
    benchmark:
        "benchmarks/rules/{audit}/sample_metrics/shard-{shard}.tsv"
    script:
        "../workflow/scripts/sample_metrics.py"


rule metrics:
    input:
        saliency="results/{audit}/saliency",
        samples=sample_metric_shards,
        images=image_shards,
        listing=ancient("results/{audit}/listing.parquet"),
        checkpoint=model_checkpoint,
    output:
        metrics="results/{audit}/metrics.parquet",
        summary=report("results/{audit}/metrics_summary.parquet", caption="../workflow/report/metrics_summary.rst", category="Audits", subcategory="{audit}", labels={"audit": "{audit}", "artefact": "method quality"}),
    params:
        settings=metric_params,
        methods=metric_methods,
    resources:
        gpu=1,
    conda:
        "../workflow/envs/audit.yaml"
    log:
        "logs/{audit}/metrics.log",
    benchmark:
        "benchmarks/rules/{audit}/metrics.tsv"
    script:
        "../workflow/scripts/metrics.py"
