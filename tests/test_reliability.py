"""Bad input gets a clear error early and loses nothing; the same config gives the same result (issue 12)."""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from audit.data.manifest import normalise_manifest
from tests.workflow import TINY, snakemake


def test_blank_image_ids_default_per_row(tmp_path):
    table = pd.DataFrame({"path": ["a/1.png", "b/2.png", "c/3.png"], "label": ["a", "b", "c"], "image_id": ["given", "", None]})
    ids = normalise_manifest(table, tmp_path)["image_id"].tolist()
    assert ids == ["given", "b/2.png", "c/3.png"]


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
    from audit.reference_groups.leave_one_out import LeaveOneOut
    from audit.reference_groups.store import write_reference_store
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
    assert quality.set_index("level").loc["overall", "flagged_in_top"] == 0
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
    assert set(first) <= {"audit", "train"}


def test_classes_missing_a_split_are_named():
    from audit.data.manifest import classes_missing_a_split

    table = pd.DataFrame({"label": ["a", "a", "b", "b", "c"], "split": ["train", "audit", "train", "train", "audit"]})
    assert classes_missing_a_split(table) == {"train": ["c"], "audit": ["b"]}


@pytest.mark.parametrize("fraction,seed", [(0.1, 0), (0.3, 1), (0.5, 7)])
def test_a_new_image_never_moves_an_old_images_split(fraction, seed):
    """The split is a seeded hash of each image's id alone: the share held out is close to the fraction in every class,
    and growing a dataset by half (or dropping a third of it) leaves every remaining image in its split, small
    classes included (one image per class added to classes of one to four)."""
    from audit.data.manifest import split_by_fraction

    ids = [f"class{c}/img{n:05d}.png" for c in range(4) for n in range(900)]
    table = pd.DataFrame({"image_id": ids, "label": [i.split("/")[0] for i in ids]})
    before = split_by_fraction(table.iloc[::3].iloc[:800], fraction, seed).set_index("image_id")["split"]
    grown = split_by_fraction(table, fraction, seed).set_index("image_id")["split"]
    shrunk = split_by_fraction(table.iloc[::2], fraction, seed).set_index("image_id")["split"]
    assert (grown.loc[before.index] == before).all() and (grown.loc[shrunk.index] == shrunk).all()
    share = (grown == "audit").groupby(table.set_index("image_id")["label"]).mean()
    assert (share - fraction).abs().max() < 0.05, share  # binomial sd at 900 images: at most 0.017
    assert (split_by_fraction(table, fraction, seed + 1)["split"].to_numpy() != grown.to_numpy()).any()  # another seed, another split
    small = table.groupby("label").head(4).groupby("label", group_keys=False).apply(lambda rows: rows.head(1 + int(rows.name[-1])))
    before, after = (split_by_fraction(rows, fraction, seed).set_index("image_id")["split"] for rows in (small, table.groupby("label").head(5)))
    assert (after.loc[before.index] == before).all()


def test_results_are_bit_identical_at_the_same_threads_and_close_with_the_same_ranks_across_thread_counts(digits_small):
    """The README's guarantee. Same config and same threads: a bit-identical checkpoint, features and scores.
    Another thread count (`--cores 1` against `--cores 2`) sums in another order: given the same model, features
    and logits agree to 1e-5 of their largest magnitude, anomaly scores too, with the same predictions and ranks.
    (Training itself is not close across thread counts: Adam turns last-bit differences of early gradients into
    different steps, so the README promises bit-identity only at the same threads.)"""
    import dask.array as da
    import torch
    from threadpoolctl import threadpool_limits

    from audit.anomaly import anomaly_table
    from audit.models.train import fit_model
    from audit.reference_groups.leave_one_out import LeaveOneOut
    from audit.reference_groups.store import write_reference_store
    from audit.settings import ModelSettings, TrainSettings
    from audit.storage import open_zarr

    settings = ModelSettings(name="resnet10t", kwargs={"output_stride": 8}, layer="layer4", train=TrainSettings(epochs=1, seed=0))
    images = torch.as_tensor(digits_small.images[:96], dtype=torch.float32) / 255.0
    labels, ids = digits_small.labels[:96], np.array(digits_small.image_ids[:96])
    before = torch.get_num_threads()

    def scores(model, threads: int) -> tuple[np.ndarray, pd.DataFrame]:
        torch.set_num_threads(threads)
        with threadpool_limits(threads), torch.no_grad():
            features = model.forward_features(images)
            embedding, logits = model.forward_head(features, pre_logits=True).double().numpy(), model.forward_head(features).numpy()
            folder = Path(tempfile.mkdtemp())
            write_reference_store(da.from_array(embedding, chunks=(32, -1)), labels, digits_small.class_names, folder / "reference.zarr", min_images=3)
            reference = LeaveOneOut(open_zarr(folder / "reference.zarr").load())
            return logits, anomaly_table(embedding, labels, labels, ids, np.full(len(ids), "audit"), reference, digits_small.class_names)

    try:
        torch.set_num_threads(1)
        model, _ = fit_model(digits_small, settings)
        again, _ = fit_model(digits_small, settings)
        assert all(torch.equal(value, again.state_dict()[key]) for key, value in model.state_dict().items())
        (logits, table), (logits_again, table_again), (logits_two, table_two) = scores(model, 1), scores(again, 1), scores(model, 2)
    finally:
        torch.set_num_threads(before)
    assert np.array_equal(logits, logits_again) and table.equals(table_again)
    assert np.abs(logits - logits_two).max() <= 1e-5 * np.abs(logits).max() and (logits.argmax(1) == logits_two.argmax(1)).all()
    assert np.nanmax(np.abs(table["score"] - table_two["score"])) <= 1e-5 * np.nanmax(np.abs(table["score"]))
    assert (table["rank"] == table_two["rank"]).all()
