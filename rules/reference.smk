# The feature shards and their statistics as one index: reference_stats has consumers per shard (the dataset maps and
# sampled metrics), and Snakemake's DAG build scans a producer's inputs once per consumer (issue 28.8).
rule feature_index:
    input:
        features=feature_shards,
        statistics=statistics_shards,
    output:
        FEATURE_INDEX,
    localrule: True
    log:
        "logs/{audit}/feature_index.log",
    run:
        write_shard_index({"features": list(input.features), "statistics": list(input.statistics)}, output[0], log[0])


rule reference_stats:
    input:
        shards=feature_index,
        listing=ancient("results/{audit}/listing.parquet"),
        checkpoint=model_checkpoint,
        rejects="results/{audit}/rejects.parquet",
    output:
        reference=directory("results/{audit}/reference.zarr"),
        pairs=report("results/{audit}/pairs.parquet", caption="../workflow/report/pairs.rst", category="Audits", subcategory="{audit}", labels={"audit": "{audit}", "artefact": "class pairs"}),
        similar="results/{audit}/similar_classes.parquet",
    params:
        settings=reference_params,
        images=present_param,
    threads: 4
    conda:
        "../workflow/envs/audit.yaml"
    log:
        "logs/{audit}/reference_stats.log",
    benchmark:
        "benchmarks/rules/{audit}/reference_stats.tsv"
    script:
        "../workflow/scripts/reference_stats.py"


# The embedding's and the local scores come first: the explain plan picks its subjects by the ranking that combines
# them (audit.anomaly_ranking), so a change to the dataset maps (a Finer-CAM parameter) reruns the cheap merge below,
# not the plan.
rule anomaly_scores:
    input:
        features=feature_shards,
        reference="results/{audit}/reference.zarr",
        listing=ancient("results/{audit}/listing.parquet"),
    output:
        "results/{audit}/embedding_anomalies.parquet",
    threads: 4
    conda:
        "../workflow/envs/audit.yaml"
    log:
        "logs/{audit}/anomaly_scores.log",
    benchmark:
        "benchmarks/rules/{audit}/anomaly_scores.tsv"
    script:
        "../workflow/scripts/anomaly_scores.py"


# Where is it odd: every image's cells measured against its class's cells (audit.local_anomaly), a trimmed
# reference of per-cell Gaussians from the stored activations; no model pass.
rule local_anomalies:
    input:
        features=feature_shards,
        listing=ancient("results/{audit}/listing.parquet"),
    output:
        scores="results/{audit}/local_anomalies.parquet",
        maps=directory("results/{audit}/local_maps.zarr"),
    params:
        settings=local_params,
        images=present_param,
    threads: 2
    conda:
        "../workflow/envs/audit.yaml"
    log:
        "logs/{audit}/local_anomalies.log",
    benchmark:
        "benchmarks/rules/{audit}/local_anomalies.tsv"
    script:
        "../workflow/scripts/local_anomalies.py"


# anomalies.parquet: the embedding's and the local scores, the combined ranking the report leads with, the map outlier
# scores beside them, and how well each ranking finds flagged images.
rule anomalies:
    input:
        scores="results/{audit}/embedding_anomalies.parquet",
        local="results/{audit}/local_anomalies.parquet",
        map_outliers=map_outliers,
    output:
        anomalies=report("results/{audit}/anomalies.parquet", caption="../workflow/report/anomalies.rst", category="Audits", subcategory="{audit}", labels={"audit": "{audit}", "artefact": "anomaly scores"}),
        quality="results/{audit}/anomaly_quality.parquet",
    params:
        explain=lambda wildcards: ExplainSettings.output_values(audit_config(wildcards)["explain"], {"top_anomalies"}),
    conda:
        "../workflow/envs/audit.yaml"
    log:
        "logs/{audit}/anomalies.log",
    benchmark:
        "benchmarks/rules/{audit}/anomalies.tsv"
    script:
        "../workflow/scripts/anomalies.py"
