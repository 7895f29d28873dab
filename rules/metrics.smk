# A stratified, seeded sample of one shard's dataset maps (metrics.sample_per_class per class over the audit),
# scored by the configured metrics (audit.metrics.sample); metrics_summary pools them with the subjects'.
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
        settings=sample_metric_params,
        splits=dataset_splits,
        sample=shard_sample_param,
    resources:
        gpu=1,
    threads: 4
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
        images=image_shards,
        listing=ancient("results/{audit}/listing.parquet"),
        checkpoint=model_checkpoint,
    output:
        "results/{audit}/metrics.parquet",
    params:
        settings=metric_params,
        methods=metric_methods,
    resources:
        gpu=1,
    threads: 8
    conda:
        "../workflow/envs/audit.yaml"
    log:
        "logs/{audit}/metrics.log",
    benchmark:
        "benchmarks/rules/{audit}/metrics.tsv"
    script:
        "../workflow/scripts/metrics.py"


# The summary (means and bootstrap intervals, Dask) over the subjects' metrics and the sampled dataset maps' metrics: its own
# job, so that a new sample or another bootstrap setting rescores nothing.
rule metrics_summary:
    input:
        metrics="results/{audit}/metrics.parquet",
        samples=sample_metric_shards,
    output:
        report("results/{audit}/metrics_summary.parquet", caption="../workflow/report/metrics_summary.rst", category="Audits", subcategory="{audit}", labels={"audit": "{audit}", "artefact": "method quality"}),
    params:
        settings=summary_params,
    conda:
        "../workflow/envs/audit.yaml"
    log:
        "logs/{audit}/metrics_summary.log",
    benchmark:
        "benchmarks/rules/{audit}/metrics_summary.tsv"
    script:
        "../workflow/scripts/metrics_summary.py"
