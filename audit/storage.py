"""Atomic writes: outputs appear complete or not at all.

Each writer produces its artefact under a temporary sibling name and renames it
into place, so an interrupted job never leaves a half-written store that a
later stage would read as complete.
"""
from __future__ import annotations

import os
import shutil
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import xarray as xr


@contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; move it onto ``target`` on success.

    Works for files and directories (Zarr stores). On failure the temporary is
    removed and any previous ``target`` is left untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    _remove(tmp)
    try:
        yield tmp
    except BaseException:
        _remove(tmp)
        raise
    _remove(target)
    os.replace(tmp, target)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def write_zarr(dataset: xr.Dataset, target: str | os.PathLike) -> None:
    """Write ``dataset`` as a Zarr v3 store at ``target``, atomically.

    Strings are stored as variable-length UTF-8 (numpy ``StringDType``), the
    string type with a Zarr v3 specification.
    """
    with atomic_path(target) as tmp:
        write_zarr_part(dataset, tmp, append=False)


def write_zarr_part(dataset: xr.Dataset, path: str | os.PathLike, append: bool, image_chunk: int | None = None) -> None:
    """Create the Zarr v3 store at ``path`` from ``dataset``, or append it along ``image``.

    ``image_chunk`` (on creation) fixes the chunk length along ``image`` of
    every variable with that dimension (other dimensions whole). Not atomic by
    itself: for a single writer building a store under a temporary name (see
    :func:`atomic_path`). Never use it from parallel writers.
    """
    converted = dataset.copy()
    for name, variable in dataset.variables.items():
        if variable.dtype.kind in "UO":
            converted[name] = variable.astype(np.dtypes.StringDType())
    if append:
        converted.drop_vars([n for n in converted.variables if "image" not in converted[n].dims]).to_zarr(
            path, append_dim="image", zarr_format=3, consolidated=False
        )
    else:
        encoding = {}
        if image_chunk is not None:
            for name, variable in converted.variables.items():
                if "image" in variable.dims:
                    encoding[name] = {"chunks": tuple(image_chunk if d == "image" else n for d, n in zip(variable.dims, variable.shape))}
        converted.to_zarr(path, mode="w", zarr_format=3, consolidated=False, encoding=encoding)


def open_zarr(path: str | os.PathLike) -> xr.Dataset:
    """Open a store written by :func:`write_zarr` lazily (Dask-backed).

    Strings come back as object arrays of ``str`` (numpy's variable-width
    ``StringDType`` cannot be cast to fixed-width ``str``).
    """
    with warnings.catch_warnings():
        # Snakemake leaves a .snakemake_timestamp file inside directory() outputs.
        warnings.filterwarnings("ignore", message=".*snakemake_timestamp.*")
        dataset = xr.open_zarr(path, zarr_format=3, consolidated=False)
    for name, variable in dataset.variables.items():
        if variable.dtype.kind == "T":
            dataset[name] = variable.astype(object)
    return dataset


def write_parquet(frame: pd.DataFrame, target: str | os.PathLike) -> None:
    """Write ``frame`` to a Parquet file at ``target``, atomically."""
    with atomic_path(target) as tmp:
        frame.to_parquet(tmp, index=False)
