rule check_model:
    output:
        "results/{audit}/model_check.json",
    params:
        settings=model_params,
        methods=lambda wildcards: list(dict.fromkeys(audit_config(wildcards)["explain"]["methods"] + audit_config(wildcards)["explain"]["dataset_methods"])),
        image_size=image_size,
    conda:
        "../workflow/envs/audit.yaml"
    log:
        "logs/{audit}/check_model.log",
    benchmark:
        "benchmarks/rules/{audit}/check_model.tsv"
    script:
        "../workflow/scripts/check_model.py"


# Trained once: later runs of a grown dataset audit their new images with the same model (the shards it trained on
# are recorded beside it and stay its input), so the embedding and the history's class drift keep one meaning.
rule train_model:
    input:
        images=ancient(training_image_shards),
        listing=ancient("results/{audit}/listing.parquet"),
    output:
        model="results/{audit}/model/trained.pt",
        shards=TRAINING_SHARDS,
    params:
        settings=model_params,
    resources:
        gpu=1,
    threads: 8
    conda:
        "../workflow/envs/audit.yaml"
    log:
        "logs/{audit}/train_model.log",
    benchmark:
        "benchmarks/rules/{audit}/train_model.tsv"
    script:
        "../workflow/scripts/train_model.py"


# The listing is ancient: the imported model depends on the class names and the image side, not on which images there are.
rule import_model:
    input:
        listing=ancient("results/{audit}/listing.parquet"),
        check="results/{audit}/model_check.json",
        weights=lambda wildcards: as_input(audit_config(wildcards)["model"]["checkpoint"]),
    output:
        "results/{audit}/model/imported.pt",
    params:
        settings=model_params,
        class_names=class_names,
        weights=lambda wildcards: audit_config(wildcards)["model"]["checkpoint"],
        weights_stamp=lambda wildcards: file_stamp(audit_config(wildcards)["model"]["checkpoint"]),
    conda:
        "../workflow/envs/audit.yaml"
    log:
        "logs/{audit}/import_model.log",
    benchmark:
        "benchmarks/rules/{audit}/import_model.tsv"
    script:
        "../workflow/scripts/import_model.py"
