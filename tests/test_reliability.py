"""Bad input gets a clear error early and loses nothing; the same config gives the same result (issue 12)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from audit.data.manifest import normalise_manifest
from audit.report import figures
from tests.workflow import TINY, snakemake


def test_blank_image_ids_default_per_row(tmp_path):
    table = pd.DataFrame({"path": ["a/1.png", "b/2.png", "c/3.png"], "label": ["a", "b", "c"], "image_id": ["given", "", None]})
    ids = normalise_manifest(table, tmp_path)["image_id"].tolist()
    assert ids == ["given", "b/2.png", "c/3.png"]


def test_names_with_dollars_are_drawn_as_plain_text():
    names = ["$^$", "cost $5 or $6", "a_b^c"]  # "$^$" is not valid math text: parsed, it raises
    figures.heatmap(np.eye(3), names, "title with $ sign", ".1f")
    image = np.zeros((3, 8, 8), np.uint8)
    figures.map_grid([image], [[np.ones((8, 8))]], ["$id$"], ["Grad-CAM $a$"], signed=[False])
    anomalies = pd.DataFrame({"class_name": names * 4, "label": [0, 1, 2] * 4, "score": np.arange(1.0, 13.0), "rank": np.arange(12) % 4 + 1})
    figures.score_distribution(anomalies, 1)


def test_a_config_file_stands_alone(tmp_path):
    """--configfile replaces the demo config (the profile's replace-workflow-config): only the user's audits run."""
    result = snakemake("-n", "--directory", str(tmp_path), "--configfile", str(TINY))
    assert result.returncode == 0, result.stdout[-2000:]
    assert "audit=tiny" in result.stdout and "audit=digits" not in result.stdout
    empty = tmp_path / "empty.yaml"
    empty.write_text("audits: {}\n")
    result = snakemake("-n", "--directory", str(tmp_path), "--configfile", str(empty))
    assert result.returncode != 0 and "{} should be non-empty" in result.stdout


def _one_audit(tmp_path: Path, **changes) -> Path:
    config = yaml.safe_load(TINY.read_text())
    audit = config["audits"]["tiny"]
    for key, value in changes.items():
        section, _, name = key.partition("__")
        audit.setdefault(section, {})[name] = value
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"audits": {"tiny": audit}}))
    return path



def test_an_unknown_package_class_fails_in_the_first_job_and_its_log_is_shown(tmp_path):
    config = _one_audit(tmp_path, explain__methods=["gradcam", "package-NoSuchCAM"])
    result = snakemake("reports/tiny.html", "--cores", "1", "--directory", str(tmp_path), "--configfile", str(config))
    assert result.returncode != 0
    assert "grad-cam has no CAM class 'NoSuchCAM'" in result.stdout  # the log's end, printed by --show-failed-logs
    assert not (tmp_path / "results" / "tiny" / "listing.parquet").exists()



def test_empty_classes_leave_the_pairs_and_a_lone_image_is_unranked(tmp_path):
    import dask.array as da

    from audit.anomaly import anomaly_table
    from audit.metrics.anomaly_quality import ranking_quality
    from audit.reference import LeaveOneOut, write_reference_store
    from audit.similarity import pair_table
    from audit.storage import open_zarr

    rng = np.random.default_rng(0)
    labels = np.array([0] * 30 + [1] * 30 + [2])  # class 2: one image; class 3: none
    z = rng.normal(size=(len(labels), 4)) + labels[:, None]
    names = ["a", "b", "lone", "empty"]
    write_reference_store(da.from_array(z, chunks=(20, 4)), labels, names, tmp_path / "reference.zarr")
    reference = open_zarr(tmp_path / "reference.zarr").load()
    table = anomaly_table(z, labels, labels, np.array([f"i{n}" for n in range(len(labels))]), np.full(len(labels), "audit"), LeaveOneOut(reference), names)
    lone = table[table["label"] == 2]
    assert lone["score"].isna().all() and lone["rank"].isna().all()
    assert table.loc[table["label"] == 0, "rank"].tolist() == list(range(1, 31))
    quality = ranking_quality(table.assign(flagged=table["image_id"] == "i60"), 3)  # the unranked image is flagged
    assert quality.set_index("scope").loc["all", "flagged_in_top"] == 0
    means = reference["mean"].sel(group=[f"class:{n}" for n in names]).values
    weight = rng.normal(size=(4, 4))
    pairs = pair_table(names, weight, np.zeros((4, 4), np.int64), means, reference["class_count"].values)
    assert len(pairs) == 3 and 3 not in set(pairs["class_a"]) | set(pairs["class_b"])
    assert pairs["mean_distance"].notna().all()


def test_imagefolder_splits_from_folders_or_by_a_seeded_fraction(tmp_path):
    from PIL import Image

    from audit.data.manifest import imagefolder_manifest, split_by_fraction

    pixel = Image.fromarray(np.zeros((4, 4, 3), np.uint8))
    for split, count in (("train", 3), ("val", 2)):
        for label in ("cat", "dog"):
            (tmp_path / "split" / split / label).mkdir(parents=True)
            for n in range(count):
                pixel.save(tmp_path / "split" / split / label / f"{n}.png")
    table = imagefolder_manifest(tmp_path / "split")
    assert table.groupby("split").size().to_dict() == {"train": 6, "val": 4} and set(table["label"]) == {"cat", "dog"}
    assert "train/cat/0.png" in set(table["image_id"])
    plain = table.assign(split="audit")
    first, second = (split_by_fraction(plain, 0.3, seed=1)["split"] for _ in range(2))
    assert (first == second).all()  # seeded
    assert plain.assign(split=first).groupby("label")["split"].apply(lambda s: (s == "audit").sum()).to_dict() == {"cat": 2, "dog": 2}
