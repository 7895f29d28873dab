rule train_model:
    input:
        "results/{audit}/images.zarr",
    output:
        "results/{audit}/model/trained.pt",
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


rule import_model:
    input:
        images="results/{audit}/images.zarr",
        weights=lambda wildcards: audit_config(wildcards)["model"]["checkpoint"],
    output:
        "results/{audit}/model/imported.pt",
    params:
        model=lambda wildcards: audit_config(wildcards)["model"],
    conda:
        "../workflow/envs/audit.yaml"
    log:
        "logs/{audit}/import_model.log",
    script:
        "../workflow/scripts/import_model.py"
