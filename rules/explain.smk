rule explain_plan:
    input:
        features=feature_shards,
        listing=ancient("results/{audit}/listing.parquet"),
        anomalies="results/{audit}/embedding_anomalies.parquet",
        local="results/{audit}/local_anomalies.parquet",
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
    benchmark:
        "benchmarks/rules/{audit}/explain_plan.tsv"
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
    threads: 8
    conda:
        "../workflow/envs/audit.yaml"
    log:
        "logs/{audit}/explain.log",
    benchmark:
        "benchmarks/rules/{audit}/explain.tsv"
    script:
        "../workflow/scripts/explain.py"


# Every image of one shard mapped at layer resolution (audit.explain.dataset_maps): from the stored activations
# when the head is pool + linear, else one trunk pass per batch. A killed shard is redone alone.
rule dataset_maps:
    input:
        features="results/{audit}/features/shard-{shard}.zarr",
        images="results/{audit}/images/shard-{shard}.zarr",
        listing=ancient("results/{audit}/listing.parquet"),
        checkpoint=model_checkpoint,
        reference="results/{audit}/reference.zarr",
    output:
        directory("results/{audit}/dataset_maps/shard-{shard}.zarr"),
    params:
        settings=dataset_map_params,
        present=shard_present_param,
    resources:
        runtime=shard_runtime("dataset_maps"),
        gpu=1,
    threads: 4
    conda:
        "../workflow/envs/audit.yaml"
    log:
        "logs/{audit}/dataset_maps/shard-{shard}.log",
    benchmark:
        "benchmarks/rules/{audit}/dataset_maps/shard-{shard}.tsv"
    script:
        "../workflow/scripts/dataset_maps.py"


# What each class relies on (audit.strategies): its dataset maps clustered, and every image's map outlier score.
rule strategies:
    input:
        maps=dataset_map_shards,
        listing=ancient("results/{audit}/listing.parquet"),
        images=mask_shards,
    output:
        strategies=report("results/{audit}/strategies.parquet", caption="../workflow/report/strategies.rst", category="Audits", subcategory="{audit}", labels={"audit": "{audit}", "artefact": "strategies"}),
        outliers="results/{audit}/map_outliers.parquet",
        candidates="results/{audit}/shortcut_candidates.parquet",
        maps=directory("results/{audit}/strategy_maps.zarr"),
    params:
        settings=strategy_params,
        present=present_param,
    threads: 2
    conda:
        "../workflow/envs/audit.yaml"
    log:
        "logs/{audit}/strategies.log",
    benchmark:
        "benchmarks/rules/{audit}/strategies.tsv"
    script:
        "../workflow/scripts/strategies.py"


# Each shortcut candidate (a cluster or hot spot of the dataset maps) tested by intervention on the model
# (audit.intervention): its region pasted onto other classes' held-out images and removed from its members, each
# against a control. Needs a classifier (p(class)); 3 · targets + 3 · members forwards per candidate. One job per
# confirm.classes_per_job classes; collect_shortcuts joins them.
rule confirm_shortcuts:
    input:
        candidates="results/{audit}/shortcut_candidates.parquet",
        maps="results/{audit}/strategy_maps.zarr",
        images=image_shards,
        listing=ancient("results/{audit}/listing.parquet"),
        checkpoint=model_checkpoint,
    output:
        shortcuts="results/{audit}/shortcuts/part-{part}.parquet",
        examples=directory("results/{audit}/shortcuts/part-{part}.zarr"),
    params:
        settings=confirm_params,
        baseline=lambda wildcards: audit_config(wildcards)["metrics"]["baseline"],
        classes=confirm_part_classes,
    resources:
        gpu=1,
    threads: 8
    conda:
        "../workflow/envs/audit.yaml"
    log:
        "logs/{audit}/confirm_shortcuts/part-{part}.log",
    benchmark:
        "benchmarks/rules/{audit}/confirm_shortcuts/part-{part}.tsv"
    script:
        "../workflow/scripts/confirm_shortcuts.py"


rule collect_shortcuts:
    input:
        shortcuts=confirm_part_paths(".parquet"),
        examples=confirm_part_paths(".zarr"),
    output:
        shortcuts=report("results/{audit}/shortcuts.parquet", caption="../workflow/report/shortcuts.rst", category="Audits", subcategory="{audit}", labels={"audit": "{audit}", "artefact": "shortcuts"}),
        examples=directory("results/{audit}/shortcut_examples.zarr"),
    conda:
        "../workflow/envs/audit.yaml"
    log:
        "logs/{audit}/collect_shortcuts.log",
    benchmark:
        "benchmarks/rules/{audit}/collect_shortcuts.tsv"
    script:
        "../workflow/scripts/collect_shortcuts.py"


# Each report pair direction's contrastive maps (Finer-CAM against b, DiffCAM against class b) tested by insertion
# (audit.pair_insertion): the a-subjects' regions pasted onto held-out b-images, against the mirrored regions.
# Needs a classifier; 3 · targets forwards per direction and method.
rule confirm_pairs:
    input:
        saliency="results/{audit}/saliency",
        images=image_shards,
        listing=ancient("results/{audit}/listing.parquet"),
        checkpoint=model_checkpoint,
    output:
        report("results/{audit}/pair_tests.parquet", caption="../workflow/report/pair_tests.rst", category="Audits", subcategory="{audit}", labels={"audit": "{audit}", "artefact": "pair tests"}),
    params:
        settings=confirm_params,
        methods=explain_methods,
    resources:
        gpu=1,
    threads: 8
    conda:
        "../workflow/envs/audit.yaml"
    log:
        "logs/{audit}/confirm_pairs.log",
    benchmark:
        "benchmarks/rules/{audit}/confirm_pairs.tsv"
    script:
        "../workflow/scripts/confirm_pairs.py"
