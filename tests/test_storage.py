"""The chunked Zarr writer: written in the background it builds the same store as in the foreground, and a failed
write is raised, not lost."""
from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

import audit.storage
from audit.storage import ChunkedZarrWriter, open_zarr


def _parts(rng, lengths):
    start = 0
    for length in lengths:
        yield xr.Dataset(
            {"value": (("image", "unit"), rng.random((length, 5), dtype=np.float32)), "image_id": ("image", [f"i{n}" for n in range(start, start + length)])}
        )
        start += length


@pytest.mark.parametrize("lengths", [[7, 1, 12, 3, 9], [16, 16], [40], [2, 0, 3]])
def test_a_background_writer_builds_the_same_store_as_a_foreground_one(tmp_path, lengths):
    """Parts of any length (several flushes, a short last chunk, an empty part): the same values, ids, order and chunks."""
    stores = {}
    for background in (False, True):
        path = tmp_path / f"background-{background}.zarr"
        with ChunkedZarrWriter(path, chunk=8, attrs={"note": "x"}, background=background) as writer:
            for part in _parts(np.random.default_rng(0), lengths):
                writer.add(part)
            assert writer.close() == sum(lengths)
        stores[background] = open_zarr(path).load()
    xr.testing.assert_identical(stores[True], stores[False])
    assert stores[True].attrs["note"] == "x" and stores[True]["value"].encoding["chunks"][0] == 8


def test_a_failed_background_write_is_raised_by_the_next_call(tmp_path, monkeypatch):
    """A write that fails in the writer's thread is raised by the next ``add`` (or by ``close``), and nothing after it is written."""
    calls = []

    def failing(*args, **kwargs):
        calls.append(args)
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(audit.storage, "write_zarr_part", failing)
    parts = list(_parts(np.random.default_rng(0), [8, 8, 8]))
    with ChunkedZarrWriter(tmp_path / "a.zarr", chunk=8, background=True) as writer:
        writer.add(parts[0])  # the first write starts and fails in the thread
        with pytest.raises(OSError, match="disk full"):
            writer.add(parts[1])
    assert len(calls) == 1
    with ChunkedZarrWriter(tmp_path / "b.zarr", chunk=8, background=True) as writer:
        writer.add(parts[0])
        with pytest.raises(OSError, match="disk full"):
            writer.close()


def test_a_store_snakemake_marked_as_a_directory_output_opens_without_a_warning(tmp_path):
    """Snakemake leaves ``.snakemake_timestamp`` inside a ``directory()`` output; opening the store (and checking its
    chunks) must not log Zarr's "not recognized" warning in every job that reads it."""
    import warnings

    from audit.storage import write_zarr

    store = tmp_path / "store.zarr"
    write_zarr(xr.Dataset({"v": (("image",), np.arange(3.0))}), store)
    (store / ".snakemake_timestamp").touch()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(open_zarr(store)["v"].values, np.arange(3.0))
