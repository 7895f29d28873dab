rule reference_stats:
    input:
        statistics=statistics_shards,
        features=feature_shards,
        listing=ancient("results/{audit}/listing.parquet"),
        checkpoint=model_checkpoint,
    output:
        reference=directory("results/{audit}/reference.zarr"),
        pairs=report("results/{audit}/pairs.parquet", caption="../workflow/report/pairs.rst", category="Audits", subcategory="{audit}", labels={"audit": "{audit}", "artefact": "class pairs"}),
        similar="results/{audit}/similar_classes.parquet",
    params:
        settings=reference_params,
        images=present_param,
    conda:
        "../workflow/envs/audit.yaml"
    log:
        "logs/{audit}/reference_stats.log",
    benchmark:
        "benchmarks/rules/{audit}/reference_stats.tsv"
    script:
        "../workflow/scripts/reference_stats.py"


rule anomaly_scores:
    input:
        features=feature_shards,
        reference="results/{audit}/reference.zarr",
        listing=ancient("results/{audit}/listing.parquet"),
        map_outliers=map_outliers,
    output:
        anomalies=report("results/{audit}/anomalies.parquet", caption="../workflow/report/anomalies.rst", category="Audits", subcategory="{audit}", labels={"audit": "{audit}", "artefact": "anomaly scores"}),
        quality="results/{audit}/anomaly_quality.parquet",
    params:
        top=lambda wildcards: audit_config(wildcards)["explain"]["top_anomalies"],
    conda:
        "../workflow/envs/audit.yaml"
    log:
        "logs/{audit}/anomaly_scores.log",
    benchmark:
        "benchmarks/rules/{audit}/anomaly_scores.tsv"
    script:
        "../workflow/scripts/anomaly_scores.py"
