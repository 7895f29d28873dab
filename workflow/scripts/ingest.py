"""Snakemake adapter: load the configured dataset into images.zarr and list the rejects."""
import pandas as pd

from audit.data.dataset import write_image_store
from audit.data.digits import load_digits_dataset
from audit.data.ingest import REJECT_COLUMNS, ingest_manifest
from audit.data.manifest import imagefolder_manifest, read_manifest
from audit.runtime import configure
from audit.storage import write_parquet

configure(snakemake.log[0], snakemake.threads)
settings = snakemake.params.dataset
if settings["source"] == "digits":
    dataset = load_digits_dataset(
        snakemake.params.image_size, settings["audit_fraction"], settings["seed"], settings["limit"], settings["mislabel_fraction"],
        settings["ink_masks"],
    )
    write_image_store(dataset, snakemake.output.images, chunk=settings["chunk"])
    rejects = pd.DataFrame(columns=REJECT_COLUMNS)
else:
    manifest = imagefolder_manifest(settings["path"]) if settings["source"] == "imagefolder" else read_manifest(settings["path"])
    rejects = ingest_manifest(
        manifest, snakemake.output.images, snakemake.params.image_size, settings.get("classes"), settings["chunk"], settings["workers"]
    )
write_parquet(rejects, snakemake.output.rejects)
