rule metrics:
    input:
        saliency="results/{audit}/saliency",
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
