"""Arrival shards: the listing of every image the dataset names, the shard each belongs to, and the digests that tell which shards to rebuild.

Shards are keyed by arrival, not by position in the dataset, so that a growing
dataset rebuilds only the shards its new images fall in:

* The *ledger* (``shard_ledger.parquet`` beside the listing) remembers every
  image id ever listed, its shard and the fingerprint it had when last listed.
  It is state kept between runs, not a Snakemake output (Snakemake removes a
  job's outputs before running it). Deleting it renumbers the shards: every
  shard is rebuilt once.
* An id already in the ledger keeps its shard. New ids fill the free places of
  the last shard, then new shards of ``shard_size``, in dataset order.
* An id no longer in the dataset stays in the ledger, marked absent
  (``present`` False): its shard is not rebuilt; the stages after the shards
  leave it out.
* The *fingerprint* hashes the row (path, label, split, mask, box, anomaly
  flag) and the size and modification time of its image and mask files (for
  the bundled digits: the pixels). A changed fingerprint rebuilds the image's
  shard. So does an id that comes back after being absent (its shard may have
  been rebuilt without it): its ``generation`` counts its returns.
* A shard's *digest* hashes its ledger rows (ids, fingerprints and generations,
  present or not); the shard's jobs carry it as a parameter, so Snakemake reruns a shard
  exactly when its digest changes.

Listing columns (``LISTING_COLUMNS``): ``image_id``, ``path``, ``label``
(class name), ``split``, ``mask``, ``box``, ``anomaly`` (the manifest's
columns, blank for the digits and for absent ids), ``fingerprint``,
``generation`` (int), ``shard`` (int), ``present`` (bool). ``attrs`` (kept in the Parquet file):
``class_names``, ``shard_size``, ``source`` and ``with_masks``/``with_boxes``/
``with_flags`` (whether any image has one: every shard store then has the variable).
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

ROW_COLUMNS = ["image_id", "path", "label", "split", "mask", "box", "anomaly"]
LISTING_COLUMNS = [*ROW_COLUMNS, "fingerprint", "generation", "shard", "present"]
LEDGER_COLUMNS = ["image_id", "fingerprint", "generation", "shard", "present"]
"""What :func:`assign_shards` reads of the ledger: the rest of a row comes from the dataset as listed now."""
LISTING_TYPES = {**{column: str for column in [*ROW_COLUMNS, "fingerprint"]}, "generation": np.int64, "shard": np.int64, "present": bool}
LEDGER_NAME = "shard_ledger.parquet"


def assign_shards(rows: pd.DataFrame, ledger: pd.DataFrame | None, shard_size: int) -> pd.DataFrame:
    """The listing: the ledger updated with the current ``rows`` (see the module docstring); ``LISTING_COLUMNS``.

    ``rows``: ``ROW_COLUMNS`` + ``fingerprint``, one row per image id. ``ledger``:
    the previous listing, of which only ``LEDGER_COLUMNS`` are used (None, or one
    of another ``shard_size``: shards are numbered afresh). Ids keep their ledger
    order, new ids follow in ``rows`` order; the listing is sorted by shard (stable).
    """
    if ledger is None or ledger.attrs.get("shard_size") != shard_size:
        ledger = pd.DataFrame({column: pd.Series(dtype=LISTING_TYPES[column]) for column in LEDGER_COLUMNS})
    ledger = ledger[LEDGER_COLUMNS].astype({column: LISTING_TYPES[column] for column in LEDGER_COLUMNS})
    listed = ledger["image_id"]
    current = pd.Index(rows["image_id"]).get_indexer(listed) >= 0
    kept = rows.set_index("image_id").reindex(listed)  # an id no longer listed: a blank row
    kept[ROW_COLUMNS[1:]] = kept[ROW_COLUMNS[1:]].fillna("")
    kept = kept.reset_index().assign(
        generation=ledger["generation"].to_numpy() + (current & ~ledger["present"].to_numpy(bool)),  # a returning id counts a return
        shard=ledger["shard"].to_numpy(),
        present=current,
    )
    kept["fingerprint"] = kept["fingerprint"].where(current, ledger["fingerprint"].set_axis(kept.index))  # an absent id keeps its last
    new = rows[pd.Index(listed).get_indexer(rows["image_id"]) < 0]
    sizes = ledger.groupby("shard").size()
    last = int(sizes.index.max()) if len(sizes) else -1
    room = shard_size - int(sizes.get(last, shard_size))
    positions = np.arange(len(new))
    new = new.assign(shard=np.where(positions < room, last, last + 1 + (positions - room) // shard_size), generation=0, present=True)
    listing = pd.concat([kept, new], ignore_index=True)[LISTING_COLUMNS].astype(LISTING_TYPES)  # Arrow-backed strings: a third of Python objects' memory
    return listing.sort_values("shard", kind="stable").reset_index(drop=True)


PRESENCE_COLUMNS = ["image_id", "present"]
"""The listing's columns that :func:`keep_present` needs: what most stages read of it."""


def read_listing(path: str | os.PathLike, columns: list[str] | None = None) -> pd.DataFrame:
    """A listing written by :func:`write_listing` (only ``columns`` when given: a stage that needs only
    :data:`PRESENCE_COLUMNS` reads a tenth of it), with its ``attrs``."""
    return pd.read_parquet(path, columns=columns)


@dataclass(frozen=True)
class ShardDigests:
    """What the workflow needs of a listing to build its DAG, computed in one pass.

    Attributes:
        shards: every shard that ever held an image, in order (a shard of absent images stays).
        rebuild: per shard, a hash of its ledger rows (ids, fingerprints, generations; present or not)
            and the store layout: it changes exactly when the shard must be rebuilt.
        present: per shard, a hash of its present images (ids, fingerprints) and the layout: it
            changes when one of them is added, removed or changed.
        all_present: the same over every present image.
        class_names: the listing's class names.
        with_masks: whether the images have object masks.
        sizes: per shard, its ledger rows (images, present or not): a shard job's work, for its cluster time limit.
    """

    shards: list[int]
    rebuild: dict[int, str]
    present: dict[int, str]
    all_present: str
    class_names: list[str]
    with_masks: bool = False
    sizes: dict[int, int] = field(default_factory=dict)


def shard_digests(listing: pd.DataFrame) -> ShardDigests:
    """The listing's :class:`ShardDigests`."""
    layout = _layout(listing)
    shards = listing.groupby("shard")
    rebuild = {int(s): fingerprint([*layout, *rows["image_id"], *rows["fingerprint"], *rows["generation"]]) for s, rows in shards}
    here = listing[listing["present"]]
    present = {shard: fingerprint(layout) for shard in rebuild}
    present.update({int(s): fingerprint([*layout, *rows["image_id"], *rows["fingerprint"]]) for s, rows in here.groupby("shard")})
    return ShardDigests(
        shards=sorted(rebuild),
        rebuild=rebuild,
        present=present,
        all_present=fingerprint([*layout, *here["image_id"], *here["fingerprint"]]),
        class_names=list(listing.attrs["class_names"]),
        with_masks=bool(listing.attrs["with_masks"]),
        sizes={int(s): int(n) for s, n in shards.size().items()},
    )


def _layout(listing: pd.DataFrame) -> list:
    """What every shard store shares: the class names (label indices) and which optional variables it has."""
    return [*listing.attrs["class_names"], *(listing.attrs[key] for key in ("with_masks", "with_boxes", "with_flags"))]


def keep_present(dataset, listing: pd.DataFrame):
    """An xarray dataset with an ``image_id`` coordinate along ``image``, without the images the listing marks absent.

    Matched by hashing Python strings (``isin`` on object arrays): a few bytes an image beyond the ids
    themselves, where sorting fixed-width copies (``np.isin``) or Arrow's ``isin`` took about 0.6 kB.
    """
    present = listing.loc[listing["present"], "image_id"].to_numpy(object)
    keep = pd.Series(dataset["image_id"].values, dtype=object).isin(present).to_numpy()
    return dataset if keep.all() else dataset.isel(image=np.flatnonzero(keep))


def fingerprint(parts) -> str:
    """A short hash (16 hex digits) of a sequence of values (bytes, or anything with a ``str``)."""
    hasher = hashlib.sha1()
    for part in parts:
        hasher.update(part if isinstance(part, bytes) else str(part).encode("utf-8", "surrogatepass"))
        hasher.update(b"\x1f")
    return hasher.hexdigest()[:16]


