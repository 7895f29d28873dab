"""Snakemake adapter: join the shortcut tests of every part into shortcuts.parquet and shortcut_examples.zarr."""
import pandas as pd
import xarray as xr

from audit.intervention import confirmed_first
from audit.runtime import stage_run
from audit.storage import open_zarr, write_parquet, write_zarr

with stage_run(snakemake.log[0], snakemake.threads, model=False):
    parts = pd.concat([pd.read_parquet(path) for path in snakemake.input.shortcuts], ignore_index=True)
    write_parquet(confirmed_first(parts.astype({"tested": bool, "confirmed": bool})), snakemake.output.shortcuts)
    write_zarr(xr.concat([open_zarr(path).load() for path in snakemake.input.examples], dim="example"), snakemake.output.examples)
