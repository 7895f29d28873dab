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
        strategies=lambda wildcards: [f"results/{wildcards.audit}/strategies.parquet"] if runs_dataset_maps(wildcards) else [],
        strategy_maps=lambda wildcards: [f"results/{wildcards.audit}/strategy_maps.zarr"] if runs_dataset_maps(wildcards) else [],
        dataset_maps=lambda wildcards: dataset_map_shards(wildcards) if runs_dataset_maps(wildcards) else [],
        candidates=lambda wildcards: [f"results/{wildcards.audit}/shortcut_candidates.parquet"] if runs_dataset_maps(wildcards) else [],
        shortcuts=lambda wildcards: [f"results/{wildcards.audit}/shortcuts.parquet"] if confirms_shortcuts(wildcards) else [],
        shortcut_examples=lambda wildcards: [f"results/{wildcards.audit}/shortcut_examples.zarr"] if confirms_shortcuts(wildcards) else [],
        pair_tests=lambda wildcards: [f"results/{wildcards.audit}/pair_tests.parquet"] if has_head(wildcards) else [],
        local_maps="results/{audit}/local_maps.zarr",
    output:
        report("reports/{audit}.html", caption="../workflow/report/audit_report.rst", category="Audits", subcategory="{audit}", labels={"audit": "{audit}", "artefact": "HTML report"}),
    params:
        explain=lambda wildcards: ExplainSettings.output_values(audit_config(wildcards)["explain"], {"top_anomalies", "top_pairs"}),
        settings=lambda wildcards: ReportSettings.output_values(audit_config(wildcards)["report"]),
        methods=explain_methods,
        logs="logs/{audit}",
        benchmarks="benchmarks/rules/{audit}",
    conda:
        "../workflow/envs/audit.yaml"
    log:
        "logs/{audit}/report.log",
    benchmark:
        "benchmarks/rules/{audit}/report.tsv"
    script:
        "../workflow/scripts/report.py"


# The audit as one row per image (images.parquet) for dataframe tools and dataset browsers, with PNG
# overlays of the report subjects' maps (audit.export).
rule export_images:
    input:
        images=image_shards,
        listing=ancient("results/{audit}/listing.parquet"),
        features=feature_shards,
        anomalies="results/{audit}/anomalies.parquet",
        saliency="results/{audit}/saliency",
    output:
        table=report("results/{audit}/images.parquet", caption="../workflow/report/images.rst", category="Audits", subcategory="{audit}", labels={"audit": "{audit}", "artefact": "per-image table"}),
        overlays=directory("results/{audit}/overlays"),
    params:
        methods=explain_methods,
    conda:
        "../workflow/envs/audit.yaml"
    log:
        "logs/{audit}/export_images.log",
    benchmark:
        "benchmarks/rules/{audit}/export_images.tsv"
    script:
        "../workflow/scripts/export_images.py"
