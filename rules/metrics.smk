rule metrics:
    input:
        saliency="results/{audit}/saliency",
        images="results/{audit}/images.zarr",
        checkpoint=model_checkpoint,
    output:
        "results/{audit}/metrics/{method}.parquet",
    params:
        metrics=lambda wildcards: audit_config(wildcards)["metrics"],
    resources:
        gpu=1,
    conda:
        "../workflow/envs/audit.yaml"
    log:
        "logs/{audit}/metrics_{method}.log",
    benchmark:
        "benchmarks/rules/{audit}/metrics_{method}.tsv"
    script:
        "../workflow/scripts/metrics.py"


rule gather_metrics:
    input:
        metric_tables,
    output:
        metrics="results/{audit}/metrics.parquet",
        summary="results/{audit}/metrics_summary.parquet",
    params:
        metrics=lambda wildcards: audit_config(wildcards)["metrics"],
    conda:
        "../workflow/envs/audit.yaml"
    log:
        "logs/{audit}/gather_metrics.log",
    script:
        "../workflow/scripts/gather_metrics.py"
