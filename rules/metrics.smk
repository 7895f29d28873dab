rule metrics:
    input:
        saliency="results/{audit}/saliency",
        images="results/{audit}/images.zarr",
        checkpoint=model_checkpoint,
    output:
        metrics="results/{audit}/metrics.parquet",
        summary="results/{audit}/metrics_summary.parquet",
    params:
        metrics=lambda wildcards: audit_config(wildcards)["metrics"],
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
