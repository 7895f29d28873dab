rule train_model:
    input:
        "results/{audit}/images.zarr",
    output:
        "results/{audit}/model/checkpoint.pt",
    params:
        model=lambda wildcards: audit_config(wildcards)["model"],
    resources:
        gpu=1,
    conda:
        "../workflow/envs/audit.yaml"
    log:
        "logs/{audit}/train_model.log",
    benchmark:
        "benchmarks/rules/{audit}/train_model.tsv"
    script:
        "../workflow/scripts/train_model.py"
