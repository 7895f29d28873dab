"""Store I/O with atomic writes: outputs appear complete or not at all.

Each writer produces its artefact under a temporary sibling name and renames it
into place, so an interrupted job never leaves a half-written store that a
later stage would read as complete. Zarr stores are v3, unconsolidated, with
strings as variable-length UTF-8; :class:`ChunkedZarrWriter` builds a store
along ``image`` in whole chunks.

Every store carries ``attrs["format_version"]`` (``FORMAT_VERSION``): the
version of the layout it was written with (dimension names, variables).
:func:`open_zarr` refuses a store of another version with a message that
says how to rebuild it, rather than failing later on a missing name.

Every chunk is written, fill-valued ones included (Zarr's ``write_empty_chunks``),
so a chunk file that is missing was lost: Zarr would read it back as the fill
value (NaN, zero), and :func:`open_zarr` refuses the store instead
(:class:`MissingChunksError`), naming the variables and the count.
"""
from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import xarray as xr
import zarr

FORMAT_VERSION = 3
"""Version of the stores' layout. 2: layer grids ``layer_y``/``layer_x`` and feature channels ``unit`` everywhere,
``compare_class_map``/``random_class_map``/``randomised_model_map``, class references by index. 3: every chunk
written, so that a missing chunk file is an error rather than a fill value."""

EVERY_CHUNK = {"array.write_empty_chunks": True}
"""Zarr configuration under which region writes store fill-valued chunks too (see :func:`every_chunk_written`)."""


class StoreVersionError(ValueError):
    """A store written with another layout version."""


class MissingChunksError(ValueError):
    """A store with chunk files missing (deleted, or lost in a copy): Zarr would read them as the fill value."""


@contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; move it onto ``target`` on success.

    Works for files and directories (Zarr stores). On failure the temporary is
    removed and any previous ``target`` is left untouched. Temporaries of
    ``target`` left by a killed process are removed first.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".{target.name}.tmp-*"):
        _remove(stale)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        yield tmp
    except BaseException:
        _discard(tmp)
        raise
    _remove(target)
    os.replace(tmp, target)


def _discard(tmp: Path, patience: float = 10.0) -> None:
    """Remove a failed write's temporary without masking the failure.

    Zarr writes chunks concurrently: when one fails (a full disk), the others
    carry on for a while, and a removal races with them (a folder refilled
    as it is removed). Retry until the temporary stays gone for a moment, up
    to ``patience`` seconds; what is left then is removed by the next write
    of the same target.
    """
    deadline = time.monotonic() + patience
    while time.monotonic() < deadline:
        try:
            _remove(tmp)
        except OSError:
            time.sleep(0.1)
            continue
        time.sleep(0.2)
        if not tmp.exists():
            return
    warnings.warn(f"could not remove the temporary {tmp}; the next write of its target removes it", stacklevel=3)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def write_zarr(dataset: xr.Dataset, target: str | os.PathLike, encoding: dict[str, dict] | None = None) -> None:
    """Write ``dataset`` as a Zarr v3 store at ``target``, atomically (``encoding``: as :func:`write_zarr_part`'s).

    Strings are stored as variable-length UTF-8 (numpy ``StringDType``), the
    string type with a Zarr v3 specification.
    """
    with atomic_path(target) as tmp:
        write_zarr_part(dataset, tmp, append=False, encoding=encoding)


def write_zarr_part(
    dataset: xr.Dataset,
    path: str | os.PathLike,
    append: bool,
    image_chunk: int | None = None,
    mode: str = "w",
    compute: bool = True,
    encoding: dict[str, dict] | None = None,
) -> None:
    """Create the Zarr v3 store at ``path`` from ``dataset``, or append it along ``image``.

    ``image_chunk`` (on creation) fixes the chunk length along ``image`` of
    every variable with that dimension (other dimensions whole). ``mode="a"``
    adds ``dataset``'s variables to an existing store; ``compute=False``
    writes the metadata only (the arrays are filled later, chunk by chunk).
    ``encoding`` (on creation) sets variables' Zarr encodings, e.g. ``{"name": {"compressors": None}}``.
    Not atomic by itself: for a single writer building a store under a
    temporary name (see :func:`atomic_path`). Never use it from parallel writers.
    """
    converted = dataset.copy().assign_attrs(format_version=FORMAT_VERSION)
    for name, variable in dataset.variables.items():
        if variable.dtype.kind in "UO":
            converted[name] = variable.astype(np.dtypes.StringDType())
    if append:
        converted.drop_vars([n for n in converted.variables if "image" not in converted[n].dims]).to_zarr(
            path, append_dim="image", zarr_format=3, consolidated=False, write_empty_chunks=True
        )
    else:
        encoding = {name: dict(values) for name, values in (encoding or {}).items()}
        if image_chunk is not None:
            for name, variable in converted.variables.items():
                if "image" in variable.dims:
                    encoding.setdefault(name, {})["chunks"] = tuple(image_chunk if d == "image" else n for d, n in zip(variable.dims, variable.shape))
        converted.to_zarr(path, mode=mode, zarr_format=3, consolidated=False, encoding=encoding, compute=compute, write_empty_chunks=True)


@contextmanager
def _snakemake_timestamp_ignored() -> Iterator[None]:
    """Zarr's warning for the ``.snakemake_timestamp`` file Snakemake leaves inside ``directory()`` outputs, silenced
    (it is not part of the store; without this every job that lists a store's members logs it)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*snakemake_timestamp.*")
        yield


def open_zarr(path: str | os.PathLike, dask: bool = True) -> xr.Dataset:
    """Open a store written by :func:`write_zarr` lazily; :class:`StoreVersionError` for another format version.

    Dask-backed by default; with ``dask=False`` each variable is read from Zarr when indexed (``.values``),
    without a Dask graph per read: for stores that a stage reads one group or class at a time (the
    reference store), so that it reads what it uses instead of loading the store whole.

    Strings come back as object arrays of ``str`` (numpy's variable-width
    ``StringDType`` cannot be cast to fixed-width ``str``). :class:`MissingChunksError`
    when a chunk file of any variable is missing.
    """
    with _snakemake_timestamp_ignored():
        dataset = xr.open_zarr(path, zarr_format=3, consolidated=False, **({} if dask else {"chunks": None}))
    version = dataset.attrs.get("format_version")
    if version != FORMAT_VERSION:
        raise StoreVersionError(
            f"{path} was written with store format version {version if version is not None else 1}; this code reads version "
            f"{FORMAT_VERSION}. Rebuild it with the current workflow (e.g. remove the audit's results/ folder, or "
            "snakemake --forcerun list_images)"
        )
    require_every_chunk(path)
    for name, variable in dataset.variables.items():
        if variable.dtype.kind == "T":
            dataset[name] = variable.astype(object)
    return dataset


def require_every_chunk(path: str | os.PathLike) -> None:
    """:class:`MissingChunksError` naming the variables of the store at ``path`` with chunk files missing, and how many.

    The stores are written with every chunk (see the module's docstring), so a variable with fewer chunk files
    than its chunk grid has lost some. One listing of the store's keys per variable.
    """
    with _snakemake_timestamp_ignored():
        group = zarr.open_group(str(path), mode="r", zarr_format=3)
        missing = {name: array.nchunks - array.nchunks_initialized for name, array in group.arrays()}
    missing = {name: count for name, count in missing.items() if count}
    if missing:
        counts = ", ".join(f"{name} ({count} of {group[name].nchunks})" for name, count in sorted(missing.items()))
        raise MissingChunksError(
            f"{path} has lost chunk files ({counts}); Zarr would read them as fill values. "
            f"Rebuild it with `snakemake --force {path}`, then run snakemake as before (what reads it reruns after it)"
        )


def write_parquet(frame: pd.DataFrame, target: str | os.PathLike) -> None:
    """Write ``frame`` to a Parquet file at ``target``, atomically."""
    with atomic_path(target) as tmp:
        frame.to_parquet(tmp, index=False)


def write_json(value, target: str | os.PathLike) -> None:
    """Write ``value`` (JSON-serialisable) as an indented JSON file at ``target``, atomically."""
    with atomic_path(target) as tmp:
        tmp.write_text(json.dumps(value, indent=1))


def concat_images(parts: list[xr.Dataset]) -> xr.Dataset:
    """Datasets of one layout (image or feature parts) concatenated along ``image``, lazily; coordinates
    along other dimensions and attrs taken from the first."""
    return xr.concat(parts, dim="image", data_vars="minimal", coords="minimal", compat="override", join="override")


class ChunkedZarrWriter:
    """Build a Zarr v3 store along ``image`` from parts of any length, in whole chunks.

    Parts are buffered and written as whole chunks of ``chunk`` images (``encoding``: as :func:`write_zarr_part`'s)
    (appended; the last chunk may be short), so every write is chunk-aligned
    and memory stays at about one chunk. One writer per store; wrap the path
    in :func:`atomic_path`.

    With ``background``, each write (compression included) runs in a thread of its own while the caller
    computes the next parts; at most one write is in flight (memory: about two chunks), the writes keep their
    order, and an error in one is raised by the next ``add`` or by ``close``. Use the writer as a context manager
    then, so that a write still in flight ends before the store's folder is removed after an error.
    """

    def __init__(self, path: str | os.PathLike, chunk: int, attrs: dict | None = None, background: bool = False, encoding: dict[str, dict] | None = None):
        self.path, self.chunk, self.attrs, self.encoding = path, chunk, attrs or {}, encoding
        self.buffer: list[xr.Dataset] = []
        self.buffered = 0
        self.written = 0
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="zarr-writer") if background else None
        self._in_flight: Future | None = None

    def __enter__(self) -> "ChunkedZarrWriter":
        return self

    def __exit__(self, *error) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    def add(self, part: xr.Dataset) -> None:
        """Queue ``part`` (a dataset with an ``image`` dimension) and write every full chunk."""
        self.buffer.append(part)
        self.buffered += part.sizes["image"]
        if self.buffered >= self.chunk:
            self._flush(whole_chunks_only=True)

    def close(self) -> int:
        """Write what is left and wait for every write; return the number of images written (a store of zero images
        when only empty parts were added)."""
        if self.buffered or (self.buffer and not self.written):
            self._flush(whole_chunks_only=False)
        self._wait()
        return self.written

    def _wait(self) -> None:
        if self._in_flight is not None:
            in_flight, self._in_flight = self._in_flight, None
            in_flight.result()

    def _flush(self, whole_chunks_only: bool) -> None:
        pending = concat_images(self.buffer)
        count = (self.buffered // self.chunk) * self.chunk if whole_chunks_only else self.buffered
        head = pending.isel(image=slice(0, count)).assign_attrs(self.attrs)
        self._wait()  # the previous write first: appends keep their order
        write = partial(write_zarr_part, head, self.path, append=self.written > 0, image_chunk=self.chunk, encoding=self.encoding)
        if self._executor is None:
            write()
        else:
            self._in_flight = self._executor.submit(write)
        self.written += count
        rest = pending.isel(image=slice(count, None))
        self.buffer = [rest] if rest.sizes["image"] else []
        self.buffered = rest.sizes["image"]
