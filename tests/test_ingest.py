"""Ingest of users' data: ImageFolder trees and CSV/TSV manifests, with rejects."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from audit.data.dataset import read_image_store
from audit.data.decode import RejectedImage, decode
from audit.data.ingest import ingest_manifest
from audit.data.manifest import imagefolder_manifest, read_manifest
from audit.storage import open_zarr


def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


@pytest.fixture
def folder(tmp_path, rng):
    root = tmp_path / "tree"
    for name in ("cat", "dog"):
        for i in range(5):
            _save(root / name / f"{i}.png", rng.integers(0, 255, (12 + i, 20, 3), dtype=np.uint8))
    (root / "cat" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (root / "dog" / "notes.txt").write_text("not an image")
    return root


def test_imagefolder_ingest_rejects_corrupt_files_and_keeps_the_rest(folder, tmp_path):
    manifest = imagefolder_manifest(folder)
    assert len(manifest) == 11  # the .txt file is not listed
    rejects = ingest_manifest(manifest, tmp_path / "images.zarr", size=8, chunk=3, workers=2)
    assert list(rejects["image_id"]) == ["cat/corrupt.png"]
    assert rejects["reason"].str.startswith("unreadable image").all()
    dataset = read_image_store(tmp_path / "images.zarr")
    assert dataset.images.shape == (10, 3, 8, 8) and dataset.images.dtype == np.uint8
    assert dataset.class_names == ["cat", "dog"]
    assert (dataset.labels == np.repeat([0, 1], 5)).all()
    assert set(dataset.split) == {"audit"}
    assert open_zarr(tmp_path / "images.zarr")["pixels"].encoding["chunks"][0] == 3


def test_manifest_rejects_each_bad_row_with_its_reason(tmp_path, rng):
    for i in range(4):
        _save(tmp_path / "img" / f"{i}.png", rng.integers(0, 255, (10, 10, 3), dtype=np.uint8))
    _save(tmp_path / "img" / "mask_small.png", np.zeros((5, 5), np.uint8))
    rows = [
        ("img/0.png", "a", "x0", ""),
        ("img/1.png", "b", "x1", ""),
        ("img/2.png", "zebra", "x2", ""),  # unknown label
        ("img/3.png", "a", "x1", ""),  # duplicate id
        ("img/missing.png", "b", "x4", ""),  # missing file
        ("img/2.png", "", "x5", ""),  # empty label
        ("img/3.png", "b", "x6", "img/mask_small.png"),  # mask of another size
    ]
    pd.DataFrame(rows, columns=["path", "label", "image_id", "mask"]).to_csv(tmp_path / "manifest.tsv", sep="\t", index=False)
    rejects = ingest_manifest(read_manifest(tmp_path / "manifest.tsv"), tmp_path / "images.zarr", size=8, classes=["b", "a"])
    reasons = dict(zip(rejects["image_id"], rejects["reason"]))
    assert reasons == {
        "x2": "unknown label",
        "x1": "duplicate image_id (first occurrence kept)",
        "x4": "image file not found",
        "x5": "empty label",
        "x6": "mask size (5, 5) differs from image size (10, 10)",
    }
    dataset = read_image_store(tmp_path / "images.zarr")
    assert list(dataset.image_ids) == ["x0", "x1"]
    assert dataset.class_names == ["b", "a"] and list(dataset.labels) == [1, 0]  # the configured mapping



def test_decode_crops_the_centre_and_moves_masks_and_boxes(tmp_path):
    image = np.zeros((20, 40, 3), np.uint8)
    image[:, 10:30] = 255  # a white centre band 20 px wide: the centre crop
    mask = np.zeros((20, 40), np.uint8)
    mask[5:10, 15:20] = 1
    _save(tmp_path / "i.png", image)
    _save(tmp_path / "m.png", mask)
    decoded = decode(str(tmp_path / "i.png"), 10, str(tmp_path / "m.png"), "15 5 20 10")
    assert decoded.image.shape == (3, 10, 10)
    assert decoded.image[:, :, 1:-1].min() > 200  # shorter side 20 → 10, width 40 → 20, crop x 5..15
    np.testing.assert_allclose(decoded.box, [2.5, 2.5, 5.0, 5.0])
    # Nearest resampling by 1/2 takes source rows/columns 2i + 1: mask rows 5..9 → 2..4, columns 15..19 → 7..9 → 2..4 after the crop.
    assert decoded.mask[2:5, 2:5].all() and decoded.mask.sum() == 9
    with pytest.raises(RejectedImage, match="not 'x0 y0 x1 y1'"):
        decode(str(tmp_path / "i.png"), 10, box="5 5 1 1")



def test_manifest_anomaly_flags_are_stored_and_a_bad_flag_is_rejected(tmp_path, rng):
    for i in range(4):
        _save(tmp_path / "img" / f"{i}.png", rng.integers(0, 255, (10, 10, 3), dtype=np.uint8))
    rows = [("img/0.png", "a", "yes"), ("img/1.png", "a", ""), ("img/2.png", "b", "0"), ("img/3.png", "b", "maybe")]
    pd.DataFrame(rows, columns=["path", "label", "anomaly"]).to_csv(tmp_path / "m.csv", index=False)
    rejects = ingest_manifest(read_manifest(tmp_path / "m.csv"), tmp_path / "images.zarr", size=8)
    assert list(rejects["reason"]) == ["anomaly flag is not one of 1/0, true/false, yes/no"]
    dataset = read_image_store(tmp_path / "images.zarr")
    assert list(dataset.flagged) == [True, False, False]


def test_anomaly_ranking_quality_against_flags():
    from audit.metrics.anomaly_quality import ranking_quality

    table = pd.DataFrame(
        {
            "class_name": ["all"] * 4 + ["b"] * 3,  # a class named "all" is not the overall row
            "score": [9.0, 1.0, 2.0, 3.0, 5.0, 4.0, np.nan],
            "rank": [1, 4, 3, 2, 1, 2, 3],
            "flagged": [True, False, False, False, False, True, False],
        }
    )
    quality = ranking_quality(table, top=1).set_index(["level", "scope"])
    assert set(quality["ranked_by"]) == {"score"}  # the other rankings' columns are absent here
    assert list(quality.index) == [("overall", "all"), ("class", "all"), ("class", "b")]
    assert quality.loc[("class", "all"), "auroc"] == 1.0 and quality.loc[("class", "all"), "average_precision"] == 1.0
    assert quality.loc[("class", "all"), "flagged_in_top"] == 1 and quality.loc[("class", "all"), "images"] == 4
    assert quality.loc[("class", "b"), "auroc"] == 0.0 and quality.loc[("class", "b"), "flagged_in_top"] == 0
    # overall: flagged scores 9 and 4 against 1, 2, 3, 5 → 7 of 8 pairs ordered right
    assert quality.loc[("overall", "all"), "auroc"] == pytest.approx(7 / 8) and quality.loc[("overall", "all"), "images"] == 6
    assert ranking_quality(table.drop(columns="flagged"), top=1).empty


def test_planted_mislabels_in_the_digits_are_flagged():
    from audit.data.digits import load_digits_dataset

    clean = load_digits_dataset(16, 0.3, seed=0, limit=200)
    planted = load_digits_dataset(16, 0.3, seed=0, limit=200, mislabel_fraction=0.1)
    assert clean.flagged is None and planted.flagged.sum() == 6
    assert (planted.split == clean.split).all()
    assert (planted.labels[planted.flagged] != clean.labels[planted.flagged]).all()
    assert (planted.labels[~planted.flagged] == clean.labels[~planted.flagged]).all()
    assert set(planted.split[planted.flagged]) == {"audit"}


def test_digit_ink_masks_reach_the_store_as_object_regions(tmp_path):
    """The demo's masks are the strokes: stored like manifest masks, read back by the metrics' object_regions."""
    from audit.data.dataset import write_image_store
    from audit.data.digits import INK_THRESHOLD, load_digits_dataset
    from audit.metrics.localization import object_regions
    from audit.storage import open_zarr

    digits = load_digits_dataset(16, 0.3, seed=0, limit=40, ink_masks=True)
    assert load_digits_dataset(16, 0.3, seed=0, limit=40).masks is None
    write_image_store(digits, tmp_path / "images.zarr", chunk=16)
    regions, valid = object_regions(open_zarr(tmp_path / "images.zarr"))
    assert valid.all() and (regions == (digits.images[:, 0] >= INK_THRESHOLD)).all()
    coverage = regions.mean(axis=(1, 2))
    assert (coverage > 0.05).all() and (coverage < 0.6).all()
