"""The bad-input catalogue (issue 12): what a new user gets wrong, and what the workflow does about it.

Each case asserts its exact outcome: a named error at DAG build (before any
job), a named error from the first job's check, a listed reject with every
other image ingested exactly as in the clean run, or a result equal to the
clean run; and that no half-written output remains. The faults (kill -9 in a
job, two runs at once, a read-only or full disk) are at the end.
"""
from __future__ import annotations

import copy
import os
import re
import signal
import struct
import subprocess
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from audit.data.dataset import read_image_store
from audit.data.ingest import ingest_manifest, screen_rows
from audit.data.manifest import normalise_manifest, read_manifest
from tests.workflow import CORES, ROOT, SNAKEMAKE, TINY, snakemake

# --- configuration mistakes: a named error at DAG build, no job runs, nothing written -------------------------------


def _tiny_audit() -> dict:
    return copy.deepcopy(yaml.safe_load(TINY.read_text())["audits"]["tiny"])


def _set(path: str, value) -> Callable[[dict], dict]:
    """A change to the tiny audit: ``value`` at the dotted key ``path`` (``None`` deletes it)."""

    def change(audit: dict) -> dict:
        *sections, key = path.split(".")
        node = audit
        for section in sections:
            node = node.setdefault(section, {})
        if value is None:
            node.pop(key, None)
        else:
            node[key] = value
        return audit

    return change


CONFIG_CASES = [
    pytest.param(_set("features.shard_sise", 3), "Additional properties are not allowed ('shard_sise' was unexpected)", id="misspelt-key"),
    pytest.param(_set("features.shard_size", "64"), "'64' is not of type 'integer'", id="number-as-text"),
    pytest.param(_set("dataset.audit_fraction", 1.5), "1.5 is greater than or equal to the maximum of 1", id="fraction-out-of-range"),
    pytest.param(_set("metrics.baseline", "noise"), "'noise' is not one of ['zero', 'mean', 'blur']", id="unknown-baseline"),
    pytest.param(_set("explain.methods", ["gradcamm"]), "'gradcamm' does not match", id="unknown-method"),
    pytest.param(_set("metrics.metrics", ["deletion", "delection"]), "'delection' is not one of", id="unknown-metric"),
    pytest.param(_set("dataset.classes", ["0", "0"]), "has non-unique elements", id="duplicate-classes"),
    pytest.param(_set("dataset", {"source": "manifest"}), "'path' is a required property", id="manifest-without-path"),
    pytest.param(
        _set("dataset", {"source": "manifest", "path": "/no/such/manifest.csv"}),
        "audit tiny, dataset.path: manifest file '/no/such/manifest.csv' does not exist", id="missing-manifest",
    ),
    pytest.param(
        _set("dataset", {"source": "imagefolder", "path": "/no/such/tree"}),
        "audit tiny, dataset.path: ImageFolder directory '/no/such/tree' does not exist", id="missing-imagefolder",
    ),
    pytest.param(_set("model.checkpoint", "/no/such/weights.pth"), "audit tiny, model.checkpoint: '/no/such/weights.pth' is not a file", id="missing-checkpoint"),
    pytest.param(_set("model.head", False), "'checkpoint' is a required property", id="backbone-without-checkpoint"),
    pytest.param(_set("model.name", "resnet10tt"), "audit tiny, model.name: unknown timm model 'resnet10tt'; close matches: resnet10t", id="misspelt-model"),
    pytest.param(_set("model.train.epochs", 0), "0 is less than the minimum of 1", id="zero-epochs"),
    pytest.param(
        _set("strategies.method", "gradcampp"), "strategies.method: 'gradcampp' is not among explain.dataset_methods that apply to the model (gradcam, finercam, diffcam)",
        id="strategies-on-an-unmapped-method",
    ),
    pytest.param(_set("explain.dataset_methods", ["inputgrad"]), "'inputgrad' does not match", id="pixel-method-as-dataset-method"),
    pytest.param(
        _set("explain.dataset_methods", ["gradcam", "scorecam"]),
        "audit tiny, explain.dataset_methods: scorecam needs a forward pass per channel and image (masked inputs)", id="scorecam-as-dataset-method",
    ),
    pytest.param(_set("explain.methods", ["gradcam\n"]), "does not match", id="method-with-trailing-newline"),
    pytest.param(_set("dataset.shortcut", {"class": "7"}), "'share' is a required property", id="planted-shortcut-without-its-share"),
]


def _dry_run(tmp_path: Path, config_text: str):
    config = tmp_path / "config.yaml"
    config.write_text(config_text)
    workdir = tmp_path / "work"
    result = snakemake("-n", "--directory", str(workdir), "--configfile", str(config))
    return result, workdir


def _nothing_written(workdir: Path) -> bool:
    return not (workdir / "results").exists() and not (workdir / "logs").exists()


@pytest.mark.parametrize("change, message", CONFIG_CASES)
def test_a_config_mistake_is_named_at_dag_build(tmp_path, change, message):
    result, workdir = _dry_run(tmp_path, yaml.safe_dump({"audits": {"tiny": change(_tiny_audit())}}))
    assert result.returncode != 0 and message in result.stdout, result.stdout[-3000:]
    assert _nothing_written(workdir)


@pytest.mark.parametrize(
    "text, message",
    [
        pytest.param("audits:\n  tiny:\n    dataset: {source: digits\n", "Config file is not valid JSON or YAML", id="yaml-syntax"),
        pytest.param("audits: {}\n", "{} should be non-empty", id="no-audits"),
        pytest.param(yaml.safe_dump({"audits": {"my audit": _tiny_audit()}}), "'my audit' does not match", id="audit-name-with-space"),
        pytest.param(yaml.safe_dump({"audits": {"../up": _tiny_audit()}}), "'../up' does not match", id="audit-name-with-path"),
        pytest.param(yaml.safe_dump({"audits": {"evil\n": _tiny_audit()}}), "'evil\\n' does not match", id="audit-name-with-trailing-newline"),
        pytest.param(yaml.safe_dump({"audit": {"tiny": _tiny_audit()}}), "'audits' is a required property", id="misspelt-top-key"),
    ],
)
def test_a_malformed_config_file_is_named_at_dag_build(tmp_path, text, message):
    result, workdir = _dry_run(tmp_path, text)
    assert result.returncode != 0 and message in result.stdout, result.stdout[-3000:]
    assert _nothing_written(workdir)


def test_paths_with_snakemakes_wildcard_and_pathvar_syntax_are_plain_paths(tmp_path):
    """A folder named ``x{y}<z>`` (braces and angle brackets are legal in file names) holding the manifest and the
    checkpoint: the DAG builds, with the files tracked by size and modification time instead of as inputs
    (Snakemake expands {…} and <…> in input paths and cannot escape a pathvar)."""
    folder = tmp_path / "x{y}<z>"
    folder.mkdir()
    (folder / "weights.pt").write_bytes(b"")
    (folder / "manifest.csv").write_text("path,label\na.png,a\n")
    audit = _set("dataset", {"source": "manifest", "path": str(folder / "manifest.csv"), "image_size": 32})(_tiny_audit())
    audit = _set("model.checkpoint", str(folder / "weights.pt"))(audit)
    result, workdir = _dry_run(tmp_path, yaml.safe_dump({"audits": {"tiny": audit}}))
    assert result.returncode == 0 and "import_model" in result.stdout and "list_images" in result.stdout, result.stdout[-3000:]
    assert _nothing_written(workdir)


# --- broken rows and images: a listed reject, every other image as in the clean run ---------------------------------

SIZE = 8


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG that declares ``width`` × ``height`` pixels and holds one empty data chunk (a decompression bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def _bad_file(kind: str) -> Callable[[Path], str]:
    """Writes a broken image file of ``kind`` under the folder; returns its path."""

    def write(folder: Path) -> str:
        path = folder / "bad.png"
        if kind == "truncated":
            Image.fromarray(np.full((16, 16, 3), 90, np.uint8)).save(path)
            path.write_bytes(path.read_bytes()[:60])
        elif kind == "empty":
            path.write_bytes(b"")
        elif kind == "text":
            path.write_text("not an image\n")
        elif kind == "bomb":
            _png_header_only(path, 30_000, 30_000)
        elif kind == "directory":
            path.mkdir()
        elif kind == "float-range":
            path = folder / "bad.tif"
            Image.fromarray(np.linspace(0, 3, 64, dtype=np.float32).reshape(8, 8), "F").save(path)
        elif kind == "fifo":  # opening it would wait for a writer for ever
            os.mkfifo(path)
        elif kind == "dangling-link":
            path.symlink_to(folder / "deleted.png")
        elif kind == "beyond-16-bit":
            path = folder / "bad.tif"
            Image.fromarray(np.full((8, 8), 70_000, np.int32), "I").save(path)
        return str(path)

    return write


def _row(**fields) -> Callable[[Path], dict]:
    """A manifest row: a fresh image of class ``a`` unless ``fields`` say otherwise (callables get the folder)."""

    def make(folder: Path) -> dict:
        Image.fromarray(np.full((12, 12, 3), 200, np.uint8)).save(folder / "extra.png")
        row = {"path": str(folder / "extra.png"), "label": "a", "image_id": "bad", "mask": "", "box": "", "anomaly": ""}
        row.update({k: v(folder) if callable(v) else v for k, v in fields.items()})
        return row

    return make


def _small_mask(folder: Path) -> str:
    Image.fromarray(np.ones((5, 5), np.uint8)).save(folder / "small_mask.png")
    return str(folder / "small_mask.png")


ROW_CASES = [
    pytest.param(_row(path=_bad_file("truncated")), r"unreadable image: \w+Error", id="truncated-png"),
    pytest.param(_row(path=_bad_file("empty")), "unreadable image: UnidentifiedImageError", id="empty-file"),
    pytest.param(_row(path=_bad_file("text")), "unreadable image: UnidentifiedImageError", id="text-named-png"),
    pytest.param(_row(path=_bad_file("bomb")), "unreadable image: DecompressionBombError", id="decompression-bomb"),
    pytest.param(_row(path=_bad_file("directory")), "unreadable image: IsADirectoryError", id="directory-as-image"),
    pytest.param(_row(path=_bad_file("float-range")), r"float image with values in \[0, 3\], not \[0, 1\]", id="float-out-of-range"),
    pytest.param(_row(path=_bad_file("beyond-16-bit")), "beyond 16 bits", id="beyond-16-bits"),
    pytest.param(_row(path=lambda folder: str(folder / "gone.png")), "image file not found", id="missing-file"),
    pytest.param(_row(path=_bad_file("fifo")), r"image is not a regular file: a named pipe \(FIFO\)", id="named-pipe"),
    pytest.param(_row(path=_bad_file("dangling-link")), r"image is a dangling symbolic link \(to .*deleted.png\)", id="dangling-symlink"),
    pytest.param(_row(label="zebra"), "unknown label", id="unknown-label"),
    pytest.param(_row(label=""), "empty label", id="empty-label"),
    pytest.param(_row(image_id="a0"), r"duplicate image_id \(first occurrence kept\)", id="duplicate-id"),
    pytest.param(_row(mask=_small_mask), r"mask size \(5, 5\) differs from image size \(12, 12\)", id="mask-of-other-size"),
    pytest.param(_row(mask=lambda folder: str(folder / "no_mask.png")), "mask file not found", id="missing-mask"),
    pytest.param(_row(box="1 2 3"), "is not 'x0 y0 x1 y1'", id="box-of-three-numbers"),
    pytest.param(_row(box="left top"), "is not four numbers", id="box-not-numbers"),
    pytest.param(_row(box="6 6 2 2"), "is not 'x0 y0 x1 y1' with x1 > x0", id="inverted-box"),
    pytest.param(_row(anomaly="maybe"), "anomaly flag is not one of", id="bad-anomaly-flag"),
]


def _clean_rows(folder: Path) -> list[dict]:
    """Six images of classes a and b with distinct content."""
    rows = []
    for n in range(6):
        label = "ab"[n % 2]
        pixels = np.random.default_rng(n).integers(0, 256, (10 + n, 12, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{label}{n}.png")
        rows.append({"path": str(folder / f"{label}{n}.png"), "label": label, "image_id": f"{label}{n}", "mask": "", "box": "", "anomaly": ""})
    return rows


def _ingest(rows: list[dict], folder: Path, target: Path) -> pd.DataFrame:
    return ingest_manifest(normalise_manifest(pd.DataFrame(rows), folder), target, SIZE, classes=["a", "b"], chunk=4, workers=2)


@pytest.fixture
def clean_store(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    rows = _clean_rows(folder)
    assert _ingest(rows, folder, tmp_path / "clean.zarr").empty
    return folder, rows, read_image_store(tmp_path / "clean.zarr")


@pytest.mark.parametrize("bad_row, reason", ROW_CASES)
def test_a_bad_row_is_listed_and_the_rest_ingest_as_in_the_clean_run(tmp_path, clean_store, bad_row, reason):
    folder, rows, clean = clean_store
    row = bad_row(folder)
    rejects = _ingest([*rows[:3], row, *rows[3:]], folder, tmp_path / "images.zarr")
    assert len(rejects) == 1 and rejects["path"].iloc[0] == row["path"], rejects
    assert pd.Series(rejects["reason"]).str.contains(reason).all(), rejects["reason"].iloc[0]
    store = read_image_store(tmp_path / "images.zarr")
    assert list(store.image_ids) == list(clean.image_ids) and store.class_names == clean.class_names
    np.testing.assert_array_equal(store.images, clean.images)
    np.testing.assert_array_equal(store.labels, clean.labels)
    assert not list(tmp_path.glob(".*.tmp-*"))


def _odd_image(kind: str) -> Callable[[Path], tuple[str, np.ndarray]]:
    """An unusual but valid image file and the 8-bit RGB pixels it must decode to at its own size."""

    def write(folder: Path) -> tuple[str, np.ndarray]:
        grey = np.arange(144, dtype=np.uint8).reshape(12, 12)
        rgb = np.stack([grey, 255 - grey, grey // 2], axis=-1)
        if kind == "16-bit":
            path = folder / "deep.png"
            Image.fromarray(grey.astype(np.uint16) * 257).save(path)  # I;16: 0–65,535, scaled by 1/257
            return str(path), np.repeat(grey[..., None], 3, axis=-1)
        if kind == "palette":
            path = folder / "palette.png"
            Image.fromarray(rgb).quantize(16).save(path, transparency=0)
            return str(path), np.asarray(Image.open(path).convert("RGB"))
        if kind == "rgba":
            path = folder / "alpha.png"
            Image.fromarray(np.concatenate([rgb, np.full((12, 12, 1), 7, np.uint8)], axis=-1)).save(path)
            return str(path), rgb
        if kind == "cmyk":
            path = folder / "print.jpg"
            Image.fromarray(rgb).convert("CMYK").save(path, quality=95)
            return str(path), np.asarray(Image.open(path).convert("RGB"))
        path = folder / "ünï cödé name.png"  # non-ASCII and spaces in the file name
        Image.fromarray(rgb).save(path)
        return str(path), rgb

    return write


@pytest.mark.parametrize("kind", ["16-bit", "palette", "rgba", "cmyk", "unicode-name"])
def test_an_odd_but_valid_image_ingests_to_its_rgb_pixels(tmp_path, clean_store, kind):
    folder, rows, clean = clean_store
    path, expected = _odd_image(kind)(folder)
    rejects = _ingest([*rows, {**rows[0], "path": path, "image_id": "odd"}], folder, tmp_path / "images.zarr")
    assert rejects.empty, rejects
    store = read_image_store(tmp_path / "images.zarr")
    resized = np.asarray(Image.fromarray(expected).resize((SIZE, SIZE), Image.Resampling.BILINEAR)).transpose(2, 0, 1)
    np.testing.assert_array_equal(store.images[list(store.image_ids).index("odd")], resized)
    np.testing.assert_array_equal(store.images[: len(rows)], clean.images)


def test_a_line_of_another_width_than_the_header_is_a_rejected_row_never_a_shifted_one(tmp_path):
    """A line without its label, or with a field too many (an unquoted comma in a path), is one bad row that says
    which line; the other rows keep their columns. pandas' own parser took a first line with one field too many
    as an index column and shifted every row's columns (a path read as the label), silently."""
    (tmp_path / "short.csv").write_text("path,label\na.png,x\nb.png\n")
    candidates, rejects, _ = screen_rows(read_manifest(tmp_path / "short.csv"), None)
    assert candidates["path"].tolist() == [str(tmp_path / "a.png")]
    assert rejects[["path", "reason"]].values.tolist() == [[str(tmp_path / "b.png"), "line 3 has 1 field, the header 2"]]
    (tmp_path / "long.csv").write_text("path,label\nfirst,copy.png,x\n\nb.png,y\nc.png,z,extra\n")
    candidates, rejects, classes = screen_rows(read_manifest(tmp_path / "long.csv"), None)
    assert candidates[["path", "label"]].values.tolist() == [[str(tmp_path / "b.png"), "y"]] and classes == ["y"]
    assert rejects["reason"].tolist() == ["line 2 has 3 fields, the header 2", "line 5 has 3 fields, the header 2"]
    (tmp_path / "even.csv").write_text("path,label\nb.png,y\n")
    assert read_manifest(tmp_path / "even.csv").columns.tolist() == ["path", "label", "image_id", "split", "mask", "box", "anomaly"]


def test_an_imagefolder_lists_a_dangling_link_so_that_it_is_rejected_with_its_reason(tmp_path):
    from audit.data.manifest import imagefolder_manifest

    for label in "ab":
        (tmp_path / label).mkdir()
        Image.fromarray(np.full((12, 12, 3), 9, np.uint8)).save(tmp_path / label / "one.png")
    (tmp_path / "a" / "gone.png").symlink_to(tmp_path / "a" / "deleted.png")
    candidates, rejects, _ = screen_rows(imagefolder_manifest(tmp_path), None)
    assert str(tmp_path / "a" / "gone.png") in set(candidates["path"])
    decode_rejects = _ingest(candidates.to_dict("records"), tmp_path, tmp_path / "images.zarr")
    assert decode_rejects["reason"].tolist() == [f"image is a dangling symbolic link (to {tmp_path / 'a' / 'deleted.png'})"]


def test_a_manifest_in_utf16_reads_and_one_in_another_encoding_is_named(tmp_path):
    (tmp_path / "unicode.csv").write_bytes("path,label\nа.png,кот\n".encode("utf-16"))  # as spreadsheets save "Unicode text"
    assert read_manifest(tmp_path / "unicode.csv")["label"].tolist() == ["кот"]
    (tmp_path / "latin.csv").write_bytes("path,label\na.png,café\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"manifest .*latin.csv is not UTF-8 text: byte 0xe9 at offset 20 cannot be decoded; save it as UTF-8"):
        read_manifest(tmp_path / "latin.csv")


def test_labels_are_one_class_per_unicode_normal_form_and_case_twins_are_warned(tmp_path, caplog):
    import unicodedata

    nfc, nfd = unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café")
    (tmp_path / "labels.csv").write_text(f"path,label\na.png,{nfc}\nb.png,{nfd}\nc.png,Dog\nd.png,dog\n", encoding="utf-8")
    with caplog.at_level("WARNING"):
        candidates, rejects, classes = screen_rows(read_manifest(tmp_path / "labels.csv"), None)
    assert classes == ["Dog", nfc, "dog"] and candidates["label"].tolist() == [nfc, nfc, "Dog", "dog"] and rejects.empty
    assert "one class 'café' after Unicode normalisation (NFC)" in caplog.text and "['Dog', 'dog'] differ only by case" in caplog.text
    _, _, configured = screen_rows(read_manifest(tmp_path / "labels.csv"), [nfd, "Dog", "dog"])
    assert configured == [nfc, "Dog", "dog"]


@pytest.mark.parametrize("mode, sees_it", [("stat", False), ("content", True)])
def test_a_file_replaced_with_its_size_and_time_kept_is_seen_by_the_content_fingerprint(tmp_path, mode, sees_it):
    """`cp -p` of another image of the same size over a listed one: `stat` cannot tell (its documented blind spot),
    `content` can, so the shard is ingested again."""
    from audit.data.listing import dataset_rows
    from audit.settings import DatasetSettings

    for n in range(2):
        Image.fromarray(np.full((12, 12, 3), 40 * n, np.uint8)).save(tmp_path / f"{n}.bmp")  # BMP: equal sizes
    (tmp_path / "m.csv").write_text("path,label\n0.bmp,a\n1.bmp,b\n")
    settings = DatasetSettings(source="manifest", path=str(tmp_path / "m.csv"), fingerprint=mode)
    before = dataset_rows(settings, 12, trains_model=False)[0]["fingerprint"].tolist()
    stamp = os.stat(tmp_path / "0.bmp")
    Image.fromarray(np.full((12, 12, 3), 200, np.uint8)).save(tmp_path / "0.bmp")
    os.utime(tmp_path / "0.bmp", ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    assert os.stat(tmp_path / "0.bmp").st_size == stamp.st_size
    after = dataset_rows(settings, 12, trains_model=False)[0]["fingerprint"].tolist()
    assert (before[0] != after[0]) is sees_it and before[1] == after[1]


def test_a_dataset_of_one_class_is_refused_at_listing(tmp_path):
    from audit.data.listing import dataset_rows
    from audit.settings import DatasetSettings

    (tmp_path / "one.csv").write_text("path,label\na.png,cat\nb.png,cat\nc.png,\n")
    with pytest.raises(ValueError, match=r"an audit needs images of at least two classes; .*one.csv has 2 usable images of 1 class \['cat'\] \(1 rows rejected\)"):
        dataset_rows(DatasetSettings(source="manifest", path=str(tmp_path / "one.csv")), 32, trains_model=False)


def test_manifest_level_mistakes_are_errors_that_write_nothing(tmp_path):
    (tmp_path / "columns.csv").write_text("file,class\na.png,x\n")
    with pytest.raises(ValueError, match=r"missing columns \['path', 'label'\], unknown columns \['file', 'class'\]"):
        read_manifest(tmp_path / "columns.csv")
    (tmp_path / "header.csv").write_text("path,label\n")
    with pytest.raises(ValueError, match="no image could be ingested"):
        ingest_manifest(read_manifest(tmp_path / "header.csv"), tmp_path / "images.zarr", SIZE)
    (tmp_path / "gone.csv").write_text("path,label\ngone.png,a\n")
    with pytest.raises(ValueError, match="no image could be ingested: every row was rejected"):
        ingest_manifest(read_manifest(tmp_path / "gone.csv"), tmp_path / "images.zarr", SIZE)
    assert not (tmp_path / "images.zarr").exists() and not list(tmp_path.glob(".images.zarr.tmp-*"))


# --- checkpoints and models that do not fit: a named error, no code from the file runs ------------------------------

NAMES = ["a", "b", "c"]


class _Payload:
    """A pickle that creates a file when unpickled, the way a malicious checkpoint runs code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def _checkpoint(kind: str) -> Callable[[Path, dict], Path]:
    def write(folder: Path, state: dict) -> Path:
        import torch

        path = folder / "weights.pth"
        if kind == "missing":
            return folder / "nope.pth"
        if kind == "truncated":
            torch.save(state, path)
            path.write_bytes(path.read_bytes()[:1000])
        elif kind == "empty":
            path.write_bytes(b"")
        elif kind == "random-bytes":
            path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
        elif kind == "pickled-object":
            torch.save({"state_dict": state, "extra": object()}, path)
        elif kind == "malicious":
            torch.save({"state_dict": state, "meta": _Payload(folder / "code-ran")}, path)
        elif kind == "no-weights":
            torch.save({"epoch": 3, "arch": "resnet10t"}, path)
        elif kind.startswith("named:"):  # this workflow's format: the classes named in logit order
            torch.save({"state_dict": state, "meta": {"class_names": kind.removeprefix("named:").split(",")}}, path)
        elif kind.startswith("safetensors:"):
            import json

            from safetensors.torch import save_file

            path = folder / "weights.safetensors"
            save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata={"class_names": json.dumps(kind.removeprefix("safetensors:").split(","))})
        elif kind.startswith("non-finite:"):  # one value of one tensor NaN or infinite
            key, value = kind.removeprefix("non-finite:").split("=")
            state = {k: v.clone() for k, v in state.items()}
            state[key].view(-1)[7] = float(value)
            torch.save(state, path)
        else:
            torch.save(state, path)
        return path

    return write


CHECKPOINT_CASES = [
    pytest.param(_checkpoint("missing"), "resnet10t", NAMES, FileNotFoundError, "does not exist", id="missing-file"),
    pytest.param(_checkpoint("plain"), "resnet18", NAMES, ValueError, "does not match the model", id="other-architecture"),
    pytest.param(_checkpoint("plain"), "resnet10t", [*NAMES, "d"], ValueError, "classifier fc.weight has 3 outputs but the dataset has 4 classes", id="other-class-count"),
    pytest.param(_checkpoint("truncated"), "resnet10t", NAMES, Exception, None, id="truncated"),
    pytest.param(_checkpoint("empty"), "resnet10t", NAMES, Exception, None, id="empty-file"),
    pytest.param(_checkpoint("random-bytes"), "resnet10t", NAMES, Exception, None, id="random-bytes"),
    pytest.param(_checkpoint("no-weights"), "resnet10t", NAMES, ValueError, "does not match the model", id="no-weights"),
    pytest.param(_checkpoint("pickled-object"), "resnet10t", NAMES, Exception, "[Ww]eights only load failed|Unsupported global", id="pickled-object"),
    pytest.param(_checkpoint("malicious"), "resnet10t", NAMES, Exception, "[Ww]eights only load failed|Unsupported global", id="malicious-pickle"),
    # issue 27: a class order that would swap classes silently, and weights that make every output NaN
    pytest.param(
        _checkpoint("named:b,a,c"), "resnet10t", NAMES, ValueError,
        r"names its classes \['b', 'a', 'c'\], the audit's classes are \['a', 'b', 'c'\] \(the same classes in another order", id="reordered-classes",
    ),
    pytest.param(
        _checkpoint("safetensors:a,b,cat"), "resnet10t", NAMES, ValueError, r"only in the checkpoint: \['cat'\], only in the audit: \['c'\]", id="renamed-class-safetensors",
    ),
    pytest.param(_checkpoint("non-finite:fc.weight=inf"), "resnet10t", NAMES, ValueError, r"non-finite weights .* fc.weight \(1 of 1536 values\)", id="inf-in-classifier"),
    pytest.param(_checkpoint("non-finite:conv1.0.weight=nan"), "resnet10t", NAMES, ValueError, r"non-finite weights .* conv1.0.weight \(1 of", id="nan-in-conv"),
]


@pytest.mark.parametrize("write, name, classes, error, message", CHECKPOINT_CASES)
def test_a_checkpoint_that_does_not_fit_is_a_named_error_and_runs_no_code(tmp_path, write, name, classes, error, message):
    import timm
    import torch

    from audit.models.imported import import_model
    from audit.settings import ModelSettings

    torch.manual_seed(0)
    state = timm.create_model("resnet10t", num_classes=3).state_dict()
    path = write(tmp_path, state)
    with pytest.raises(error, match=message):
        import_model(path, ModelSettings(name=name), classes, image_size=32)
    assert not (tmp_path / "code-ran").exists()


@pytest.mark.parametrize(
    "kind, order", [("named:a,b,c", "checkpoint"), ("safetensors:a,b,c", "checkpoint"), ("plain", "assumed")], ids=["named", "safetensors", "unnamed"]
)
def test_a_checkpoint_in_the_audits_class_order_imports_and_says_where_the_order_came_from(tmp_path, kind, order):
    """Names that match load; a checkpoint without names loads as before, its order marked assumed (the report says so)."""
    import timm

    from audit.models.imported import import_model
    from audit.settings import ModelSettings

    path = _checkpoint(kind)(tmp_path, timm.create_model("resnet10t", num_classes=3).state_dict())
    _, meta = import_model(path, ModelSettings(name="resnet10t"), NAMES, image_size=32)
    assert meta.class_order == order and meta.class_names == NAMES


def test_features_that_overflow_stop_the_shard_naming_it_and_the_count(trained, digits_small, tmp_path):
    """Finite weights whose activations overflow float32: the shard fails naming itself and the non-finite counts,
    and no store is left for a later stage to read."""
    import copy

    import torch

    from audit.data.dataset import write_image_store
    from audit.features import extract_shard
    from audit.settings import FeatureSettings

    model, meta = trained
    model = copy.deepcopy(model)
    with torch.no_grad():
        model.layer4[-1].bn2.weight.fill_(3e38)  # finite, but its outputs beyond float32's range
    write_image_store(digits_small, tmp_path / "images.zarr", chunk=32)
    target = tmp_path / "shard-00000.zarr"
    with pytest.raises(ValueError, match=r"features of images 0:40 of .*images.zarr \(shard store .*shard-00000.zarr\) have non-finite values .*\d+ activation"):
        extract_shard(model, meta, tmp_path / "images.zarr", 0, 40, target, FeatureSettings(batch_size=16, loader_workers=0), chunk=16)
    assert not target.exists() and not list(tmp_path.glob(".shard-00000.zarr.tmp-*"))


@pytest.mark.parametrize(
    "model, methods, message",
    [
        pytest.param({"layer": "layer9"}, ["gradcam"], "model resnet10t has no layer 'layer9' (model.layer)", id="missing-layer"),
        pytest.param({"layer": "global_pool"}, ["gradcam"], "a (B, K, h, w) map or ViT tokens", id="non-spatial-layer"),
        pytest.param({}, ["gradcam", "cdam"], "explain.methods or explain.dataset_methods do not fit model resnet10t (cnn", id="cdam-on-a-cnn"),
        pytest.param({}, ["attention"], "explain.methods or explain.dataset_methods do not fit model resnet10t (cnn", id="attention-on-a-cnn"),
        pytest.param({}, ["package-NoSuchCAM"], "grad-cam has no CAM class 'NoSuchCAM'", id="unknown-package-class"),
        pytest.param({"kwargs": {"no_such_argument": 1}}, ["gradcam"], "no_such_argument", id="unknown-model-argument"),
    ],
)
def test_a_model_or_method_that_does_not_fit_fails_the_first_jobs_check(model, methods, message):
    from audit.preflight import check_model
    from audit.settings import ModelSettings

    with pytest.raises((ValueError, TypeError), match=re.escape(message)):
        check_model(ModelSettings(**{"name": "resnet10t", "layer": "layer4", **model}), methods, 32)


# --- faults: kill -9 mid-job, two runs at once, a read-only or full disk ----------------------------------------------


def _start(workdir: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [SNAKEMAKE, "reports/tiny.html", "--cores", CORES, "--directory", str(workdir), "--configfile", str(TINY), *extra],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )


def _wait_for_log(run: subprocess.Popen, workdir: Path, logs: str, marker: str) -> None:
    """Return once ``marker`` appears in a log matching ``logs``; fail if the run ends first."""
    deadline = time.monotonic() + 600
    while run.poll() is None and time.monotonic() < deadline:
        if any(marker in log.read_text(errors="replace") for log in workdir.glob(logs)):
            return
        time.sleep(0.05)
    output = run.communicate()[0] if run.poll() is not None else ""
    raise AssertionError(f"the run ended before {marker!r} appeared in {logs}: {output[-2000:]}")


def _kill_when_logged(run: subprocess.Popen, workdir: Path, logs: str, marker: str) -> None:
    """SIGKILL the run's whole process group (Snakemake and its jobs) once ``marker`` appears in a log matching ``logs``."""
    _wait_for_log(run, workdir, logs, marker)
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()


def _no_temporaries(results: Path) -> list[Path]:
    return [p for p in results.rglob(".*") if ".tmp-" in p.name or ".spill-" in p.name]


def test_killed_runs_resume_to_the_clean_runs_results(request, tmp_path):
    """kill -9 in extraction, then in explain, then in metrics; each rerun (after --unlock) resumes, and the
    results are bit-identical to the clean run's (this also checks that the same config gives the same results).
    A second run started while one runs in the directory is refused and starts no job. The clean run
    (``tiny_audit``) is asked for at the end, so that under pytest-xdist this run goes on beside it instead of
    waiting for it."""
    from audit.storage import open_zarr

    run = _start(tmp_path)
    _wait_for_log(run, tmp_path, "logs/tiny/list_images.log", "device")  # the lock is taken and a job runs
    second = snakemake("reports/tiny.html", "--cores", "1", "--directory", str(tmp_path), "--configfile", str(TINY))
    assert run.poll() is None, "the first run ended before the second one started"
    # Refused either by Snakemake's lock or, when it looks first, by the running job's incomplete outputs.
    assert second.returncode != 0 and ("LockException" in second.stdout or "Incomplete files" in second.stdout), second.stdout[-2000:]
    assert "Select jobs to execute" not in second.stdout  # it started no job
    stages = (("logs/tiny/extract_features/*.log", "features"), ("logs/tiny/explain.log", "explain:"), ("logs/tiny/metrics.log", "metrics:"))
    for logs, marker in stages:
        _kill_when_logged(run, tmp_path, logs, marker)
        assert snakemake("--unlock", "--directory", str(tmp_path), "--configfile", str(TINY)).returncode == 0
        run = _start(tmp_path, "--rerun-incomplete")
    output = run.communicate(timeout=900)[0]
    assert run.returncode == 0, output[-3000:]
    first, second_run = request.getfixturevalue("tiny_audit") / "results" / "tiny", tmp_path / "results" / "tiny"
    assert not _no_temporaries(second_run), _no_temporaries(second_run)
    assert (first / "model" / "trained.pt").read_bytes() == (second_run / "model" / "trained.pt").read_bytes()
    for table in ("rejects.parquet", "anomalies.parquet", "pairs.parquet", "explain_plan.parquet", "metrics.parquet", "metrics_summary.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(first / table), pd.read_parquet(second_run / table), check_exact=True)
    stores = sorted(p.relative_to(first) for p in first.rglob("*.zarr"))
    assert stores == sorted(p.relative_to(second_run) for p in second_run.rglob("*.zarr"))
    for store in stores:
        a, b = open_zarr(first / store).load(), open_zarr(second_run / store).load()
        assert set(a.variables) == set(b.variables), store
        for name in a.variables:
            np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=f"{store}: {name}")


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs (a full disk is a small one); skipped where mounting needs privileges this machine lacks."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs needs root with CAP_SYS_ADMIN")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


def test_a_full_disk_fails_the_write_and_leaves_the_previous_output(small_disk):
    import xarray as xr

    from audit.storage import open_zarr, write_zarr

    small = xr.Dataset({"v": (("image", "unit"), np.arange(12.0).reshape(3, 4))})
    write_zarr(small, small_disk / "store.zarr")
    noise = np.random.default_rng(0).normal(size=(800, 1024))  # 6.5 MB of incompressible floats: more than the disk holds
    with pytest.raises(OSError, match="No space left on device"):
        write_zarr(xr.Dataset({"v": (("image", "unit"), noise)}), small_disk / "store.zarr")
    np.testing.assert_array_equal(open_zarr(small_disk / "store.zarr")["v"].values, small["v"].values)
    assert [p.name for p in small_disk.iterdir()] == ["store.zarr"]  # the temporary is gone, the space is free again


def test_a_read_only_results_disk_is_a_named_error_that_changes_nothing(small_disk, tmp_path):
    (small_disk / "results").mkdir()
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    result = snakemake("reports/tiny.html", "--cores", "1", "--directory", str(small_disk), "--configfile", str(TINY))
    assert result.returncode != 0 and "Read-only file system" in result.stdout, result.stdout[-2000:]
    assert [p.name for p in small_disk.iterdir()] == ["results"] and not list((small_disk / "results").iterdir())


# --- stores that lost data: an error naming the store, never fill values ---------------------------------------------


def test_a_lost_chunk_is_an_error_naming_the_store_and_variable(tmp_path):
    """Zarr reads a missing chunk file back as the fill value (NaN, 0): a store whose chunk was deleted must be refused.
    Chunks that hold only the fill value are written too, so a store of zeros and NaN opens as it was written."""
    import xarray as xr

    from audit.storage import MissingChunksError, open_zarr, write_zarr_part

    part = xr.Dataset(
        {
            "activation": (("image", "unit"), np.arange(40, dtype=np.float32).reshape(10, 4)),
            "zeros": (("image",), np.zeros(10, np.float32)),
            "missing": (("image",), np.full(10, np.nan, np.float32)),
        }
    )
    write_zarr_part(part, tmp_path / "store.zarr", append=False, image_chunk=4)
    opened = open_zarr(tmp_path / "store.zarr").load()
    assert (opened["zeros"] == 0).all() and opened["missing"].isnull().all()
    chunks = sorted((tmp_path / "store.zarr" / "activation" / "c").rglob("*"))
    next(path for path in chunks if path.is_file() and path.parent.name == "1").unlink()
    with pytest.raises(MissingChunksError, match=r"store.zarr has lost chunk files \(activation \(1 of 3\)\).*snakemake --force"):
        open_zarr(tmp_path / "store.zarr")


def test_a_concept_image_rejected_at_ingest_is_left_out_with_its_reason(caplog):
    """`reference.concepts` naming an image that could not be decoded: the concept is built from the others and the
    log names the image and why; an id that is neither in the dataset nor rejected is still an error."""
    import xarray as xr

    from audit.concepts import concept_vectors

    pre_logits = xr.DataArray(np.arange(12, dtype=float).reshape(4, 3), dims=("image", "feature"))
    ids, labels = np.array(["i0", "i1", "i2", "i3"]), np.array([0, 1, 0, 1])
    rejected = {"broken": "unreadable image: UnidentifiedImageError"}
    with caplog.at_level("WARNING"):
        concepts = concept_vectors(pre_logits, labels, ids, ["a", "b"], {"loops": ["i0", "broken", "i3"]}, rejected)
    np.testing.assert_allclose(concepts["concept_vector"].sel(concept="concept:loops"), pre_logits.values[[0, 3]].mean(0))
    assert "concept 'loops': 1 of its 3 images were rejected at ingest and are left out: broken (unreadable image: UnidentifiedImageError)" in caplog.text
    with pytest.raises(ValueError, match=r"concept 'loops': image ids not in the dataset: \['typo'\]"):
        concept_vectors(pre_logits, labels, ids, ["a", "b"], {"loops": ["i0", "typo"]}, rejected)
