"""Users' datasets as a manifest table: from a CSV/TSV file or an ImageFolder tree.

A manifest has one row per image with columns ``path`` (absolute, or relative
to the manifest's folder) and ``label`` (class name), and optionally
``image_id`` (default, for each row where blank: the path relative to the root), ``split`` (default
``audit``), ``mask`` (path of a mask image, non-zero = object), ``box``
(``x0 y0 x1 y1`` in pixels of the original image) and ``anomaly`` (a known
anomaly: 1/true/yes, or 0/false/no/empty; it scores the anomaly ranking).
"""
from __future__ import annotations

import csv
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

REQUIRED_COLUMNS = ("path", "label")
OPTIONAL_COLUMNS = ("image_id", "split", "mask", "box", "anomaly")
ANOMALY_TRUE = {"1", "true", "yes", "y"}
ANOMALY_FALSE = {"0", "false", "no", "n", ""}
LINE_PROBLEM = "line_problem"
"""A column :func:`read_manifest` adds only when a line's number of fields is not the header's: the reason the row is rejected."""
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".ppm", ".pgm"}


def resolve_config_paths(audit: dict, folder: str | os.PathLike) -> None:
    """Make an audit config's relative file paths (``dataset.path``, ``model.checkpoint``) absolute against ``folder``, in place.

    ``folder`` is the config file's folder, so that a config can name its data
    beside it and the run's working directory (``--directory``) can be anywhere.
    """
    sections = (("dataset", "path"), ("model", "checkpoint"))
    for section, key in sections:
        value = audit.get(section, {}).get(key)
        if value and not os.path.isabs(os.path.expanduser(value)):
            audit[section][key] = os.path.normpath(os.path.join(folder, value))
        elif value:
            audit[section][key] = os.path.expanduser(value)


def require_dataset_path(source: str, path: str | None) -> None:
    """``FileNotFoundError`` naming ``dataset.path`` when a manifest is not a file or an ImageFolder root not a directory."""
    if source == "manifest" and not os.path.isfile(path):
        raise FileNotFoundError(f"dataset.path: manifest file {path!r} does not exist")
    if source == "imagefolder" and not os.path.isdir(path):
        raise FileNotFoundError(f"dataset.path: ImageFolder directory {path!r} does not exist")


def read_manifest(path: str | os.PathLike) -> pd.DataFrame:
    """Read a CSV (``,``) or TSV (``.tsv``/``.tab``: tab) manifest and normalise it.

    The text is UTF-8 (a byte-order mark is allowed), or UTF-16 with its byte-order
    mark (as spreadsheet programs save "Unicode text"). Raises ``ValueError``
    naming the missing or unknown columns, or the first byte that is not UTF-8.
    Paths are made absolute against the manifest's folder; missing optional
    columns are filled with their defaults.
    """
    path = Path(path)
    separator = "\t" if path.suffix.lower() in {".tsv", ".tab"} else ","
    encoding = _encoding(path)
    problems = None
    try:
        try:  # straight to Arrow strings: a third of the memory of pandas' own parser at 100,000 rows
            table = pd.read_csv(path, sep=separator, dtype=str, keep_default_na=False, engine="pyarrow", encoding=encoding)
        except pd.errors.ParserError:  # a line of another width than the header, or bytes that are not UTF-8
            table, problems = _read_ragged(path, separator, encoding)
    except UnicodeDecodeError as error:
        raise ValueError(
            f"manifest {path} is not {error.encoding.upper().replace('-SIG', '')} text: byte {error.object[error.start]:#04x} at offset "
            f"{error.start} cannot be decoded; save it as UTF-8 (or as UTF-16 with a byte-order mark)"
        ) from None
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    unknown = [c for c in table.columns if c not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS]
    if missing or unknown:
        raise ValueError(
            f"manifest {path}: missing columns {missing}, unknown columns {unknown}; "
            f"expected {list(REQUIRED_COLUMNS)} and optionally {list(OPTIONAL_COLUMNS)}"
        )
    if problems is not None:
        table[LINE_PROBLEM] = problems
    return normalise_manifest(table, path.parent)


def _encoding(path: Path) -> str:
    """``utf-16`` for a file that starts with a UTF-16 byte-order mark, else ``utf-8-sig`` (UTF-8, a mark skipped)."""
    with open(path, "rb") as handle:
        return "utf-16" if handle.read(2) in (b"\xff\xfe", b"\xfe\xff") else "utf-8-sig"


def _read_ragged(path: Path, separator: str, encoding: str) -> tuple[pd.DataFrame, list[str]]:
    """A manifest some of whose lines have another number of fields than its header, line by line (Python's ``csv``):
    the table (the header's columns; a short line's missing fields blank, a long line's extra ones dropped) and each
    row's problem ("" or e.g. "line 7 has 3 fields, the header 2"), which makes the row a reject, never a shifted one."""
    with open(path, newline="", encoding=encoding) as handle:  # as pandas, a byte-order mark is not part of the header
        reader = csv.reader(handle, delimiter=separator)
        header = next(reader, [])
        rows, problems = [], []
        for fields in reader:
            if not fields:  # a blank line, as pandas skips it
                continue
            if len(fields) != len(header):
                problems.append(f"line {reader.line_num} has {len(fields)} field{'s' * (len(fields) != 1)}, the header {len(header)}")
            else:
                problems.append("")
            rows.append((fields + [""] * len(header))[: len(header)])
    return pd.DataFrame(rows, columns=header, dtype=str), problems


SPLIT_FOLDERS = ("train", "val", "valid", "validation", "test", "audit")


def imagefolder_manifest(root: str | os.PathLike) -> pd.DataFrame:
    """List an ImageFolder tree ``root/<class>/<image>`` (nested folders allowed) as a manifest.

    Entries with an image suffix are listed, files or not (a dangling symbolic link or a named pipe is listed, and
    rejected at ingest with its reason, rather than skipped unseen); the class is the first folder level.
    A split layout, ``root/<split>/<class>/<image>`` with a ``train`` folder and
    every top-level folder one of ``SPLIT_FOLDERS`` holding class folders, gives
    each image its split from the folder name (``train``; the others are held out).
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"ImageFolder root {root} is not a directory")
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    by_split = (root / "train") in folders and all(f.name in SPLIT_FOLDERS and any(c.is_dir() for c in f.iterdir()) for f in folders)
    trees = [(folder.name, folder) for folder in folders] if by_split else [("", root)]
    rows = [
        {"path": str(file), "label": class_dir.name, "split": split}
        for split, tree in trees
        for class_dir in sorted(p for p in tree.iterdir() if p.is_dir())
        for file in sorted(class_dir.rglob("*"))
        if file.suffix.lower() in IMAGE_SUFFIXES and not file.is_dir()
    ]
    if not rows:
        raise ValueError(f"ImageFolder root {root} holds no images in class folders")
    return normalise_manifest(pd.DataFrame(rows), root)


def normalise_manifest(table: pd.DataFrame, root: Path) -> pd.DataFrame:
    """Absolute paths, default ids and splits, all optional columns present (empty = none)."""
    table = table.copy()
    table["path"] = per_row(lambda p: str(p if Path(p).is_absolute() else root / p), table["path"])
    ids = table["image_id"].fillna("").astype(str).str.strip() if "image_id" in table else pd.Series("", index=table.index)
    table["image_id"] = per_row(lambda given, p: given or _relative_id(p, root), ids, table["path"])  # blank ids default per row
    if "split" not in table:
        table["split"] = "audit"
    table["split"] = table["split"].replace("", "audit")
    for column in ("mask", "box", "anomaly"):
        if column not in table:
            table[column] = ""
    if "mask" in table:
        table["mask"] = per_row(lambda m: str(m if m == "" or Path(m).is_absolute() else root / m), table["mask"])
    table["label"] = table["label"].str.strip()
    table["anomaly"] = table["anomaly"].str.strip().str.lower()
    return table[list(REQUIRED_COLUMNS + OPTIONAL_COLUMNS) + ([LINE_PROBLEM] if LINE_PROBLEM in table else [])].reset_index(drop=True)


ROWS_PER_BATCH = 8192
"""Rows of Python strings :func:`per_row` holds at once."""


def per_row(function: Callable[..., str], *columns: pd.Series) -> pd.Series:
    """``function`` applied to each row of ``columns`` (aligned, same length), as a string column.

    In batches of ``ROWS_PER_BATCH`` rows, so that only one batch is ever held as
    Python strings (about 100 bytes each) rather than the whole column.
    """
    batches = [
        pd.Series([function(*values) for values in zip(*(column.iloc[start:start + ROWS_PER_BATCH] for column in columns))], dtype=str)
        for start in range(0, len(columns[0]), ROWS_PER_BATCH)
    ]
    return pd.concat(batches, ignore_index=True).set_axis(columns[0].index) if batches else pd.Series([], index=columns[0].index, dtype=str)


def seeded_hash(image_ids: Sequence[str] | np.ndarray | pd.Series, seed: int) -> np.ndarray:
    """A uint64 (N,) hash of each image id keyed by ``seed``: an id's value depends on its id and the seed alone, not
    on the other images (a stable per-image draw: the split below, the metric sample)."""
    return pd.util.hash_array(np.asarray(image_ids, dtype=object).astype(str), hash_key=f"{seed:016d}"[-16:])


def split_by_fraction(table: pd.DataFrame, audit_fraction: float, seed: int) -> pd.DataFrame:
    """The manifest with a stable seeded split: an image is ``audit`` when its id's :func:`seeded_hash`, read as a
    fraction of [0, 1), is below ``audit_fraction``, else ``train``. An image's split depends on its id and the seed
    alone, so it never moves however the dataset grows or shrinks; a class of a few images may therefore fall wholly
    in one split (:func:`classes_missing_a_split` names them)."""
    held = seeded_hash(table["image_id"], seed) / 2.0**64 < audit_fraction
    return table.assign(split=np.where(held, "audit", "train").astype(object))


def classes_missing_a_split(table: pd.DataFrame) -> dict[str, list[str]]:
    """The labels with no ``train`` image and those with no held-out image: ``{"train": [...], "audit": [...]}``."""
    splits = table.assign(held=table["split"] != "train").groupby("label")["held"]
    return {"train": sorted(map(str, splits.all()[lambda held: held].index)), "audit": sorted(map(str, (~splits.any())[lambda none: none].index))}


def _relative_id(path: str, root: Path) -> str:
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return path
