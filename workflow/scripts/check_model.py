"""Snakemake adapter: check the model, its explained layer and the configured methods before any data is read."""
import json

from stage import stage_settings

from audit.models.compatibility import check_model
from audit.runtime import stage_run
from audit.settings import ModelSettings
from audit.storage import atomic_path

with stage_run(snakemake.log[0], snakemake.threads):
    found = check_model(stage_settings(snakemake, ModelSettings, "model"), list(snakemake.params.methods), snakemake.params.image_size)
    with atomic_path(snakemake.output[0]) as tmp:
        tmp.write_text(json.dumps(found, indent=1))
