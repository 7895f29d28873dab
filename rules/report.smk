rule report:
    input:
        images=image_shards,
        listing=ancient("results/{audit}/listing.parquet"),
        features=feature_shards,
        checkpoint=model_checkpoint,
        anomalies="results/{audit}/anomalies.parquet",
        anomaly_quality="results/{audit}/anomaly_quality.parquet",
        pairs="results/{audit}/pairs.parquet",
        similar="results/{audit}/similar_classes.parquet",
        metrics="results/{audit}/metrics.parquet",
        metrics_summary="results/{audit}/metrics_summary.parquet",
        rejects="results/{audit}/rejects.parquet",
        reference="results/{audit}/reference.zarr",
        saliency="results/{audit}/saliency",
    output:
        "reports/{audit}.html",
    params:
        top_anomalies=lambda wildcards: audit_config(wildcards)["explain"]["top_anomalies"],
        top_pairs=lambda wildcards: audit_config(wildcards)["explain"]["top_pairs"],
        methods=explain_methods,
    conda:
        "../workflow/envs/audit.yaml"
    log:
        "logs/{audit}/report.log",
    benchmark:
        "benchmarks/rules/{audit}/report.tsv"
    script:
        "../workflow/scripts/report.py"
