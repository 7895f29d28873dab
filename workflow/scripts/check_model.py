"""Snakemake adapter: check the model, its explained layer and the configured methods before any data is read."""
from stage import stage_settings

from audit.preflight import check_model
from audit.runtime import stage_run
from audit.settings import ModelSettings
from audit.storage import write_json

with stage_run(snakemake.log[0], snakemake.threads):
    found = check_model(stage_settings(snakemake, ModelSettings, "model"), list(snakemake.params.methods), snakemake.params.image_size)
    write_json(found, snakemake.output[0])
