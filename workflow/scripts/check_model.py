"""Snakemake adapter: check the model, its explained layer and the configured methods before any data is read."""
from stage import stage_settings

from audit.preflight import check_model
from audit.runtime import stage_run
from audit.settings import ExplainSettings, ModelSettings
from audit.storage import write_json

with stage_run(snakemake.log[0], snakemake.threads):
    explain = stage_settings(snakemake, ExplainSettings, "explain", param="explain")
    methods = list(dict.fromkeys(explain.methods + explain.dataset_methods))  # every configured method, checked against the model
    found = check_model(stage_settings(snakemake, ModelSettings, "model"), methods, snakemake.params.image_size)
    write_json(found, snakemake.output[0])
