rule explain_plan:
    input:
        features=feature_shards,
        listing=ancient("results/{audit}/listing.parquet"),
        anomalies="results/{audit}/anomalies.parquet",
        pairs="results/{audit}/pairs.parquet",
        reference="results/{audit}/reference.zarr",
    output:
        "results/{audit}/explain_plan.parquet",
    params:
        settings=plan_params,
    conda:
        "../workflow/envs/audit.yaml"
    log:
        "logs/{audit}/explain_plan.log",
    script:
        "../workflow/scripts/explain_plan.py"


rule explain:
    input:
        plan="results/{audit}/explain_plan.parquet",
        images=image_shards,
        listing=ancient("results/{audit}/listing.parquet"),
        checkpoint=model_checkpoint,
        features=feature_shards,
        reference="results/{audit}/reference.zarr",
    output:
        directory("results/{audit}/saliency"),
    params:
        settings=explain_params,
    resources:
        gpu=1,
    conda:
        "../workflow/envs/audit.yaml"
    log:
        "logs/{audit}/explain.log",
    benchmark:
        "benchmarks/rules/{audit}/explain.tsv"
    script:
        "../workflow/scripts/explain.py"
