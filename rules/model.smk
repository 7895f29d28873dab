rule check_model:
    output:
        "results/{audit}/model_check.json",
    params:
        settings=model_params,
        explain=lambda wildcards: ExplainSettings.output_values(audit_config(wildcards)["explain"], {"methods", "dataset_methods"}),
        image_size=image_size,
    conda:
        "../workflow/envs/audit.yaml"
    log:
        "logs/{audit}/check_model.log",
    benchmark:
        "benchmarks/rules/{audit}/check_model.tsv"
    script:
        "../workflow/scripts/check_model.py"


# The image shards the model is trained on, recorded once: later runs of a grown dataset audit their new images with
# the same model (training_image_shards reads this record back), so the embedding and the history's class drift keep
# one meaning. An index, not N inputs of train_model: Snakemake's DAG build scans a producer's inputs once per
# consumer, and the model has three consumers per shard (issue 28.8).
rule training_shards:
    input:
        ancient(training_image_shards),
    output:
        TRAINING_SHARDS,
    localrule: True
    log:
        "logs/{audit}/training_shards.log",
    run:
        write_shard_index({"image_shards": list(input)}, output[0], log[0])


rule train_model:
    input:
        shards=TRAINING_SHARDS,
        listing=ancient("results/{audit}/listing.parquet"),
    output:
        "results/{audit}/model/trained.pt",
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
