checkpoint ingest:
    input:
        dataset_inputs,
        check="results/{audit}/model_check.json",
    output:
        images=directory("results/{audit}/images.zarr"),
        rejects="results/{audit}/rejects.parquet",
    params:
        settings=dataset_params,
        trains_model=lambda wildcards: not audit_config(wildcards)["model"].get("checkpoint"),
    conda:
        "../workflow/envs/audit.yaml"
    log:
        "logs/{audit}/ingest.log",
    benchmark:
        "benchmarks/rules/{audit}/ingest.tsv"
    script:
        "../workflow/scripts/ingest.py"
