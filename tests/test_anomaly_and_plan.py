"""Anomaly ranking on planted outliers, the class-pair table and the explanation plan."""
import dask.array as da
import numpy as np
import pandas as pd
import pytest

from audit.anomaly import anomaly_table
from audit.explain.plan import explain_plan
from audit.settings import ExplainSettings
from audit.reference_groups.gaussian import oas_gaussian
from audit.reference_groups.leave_one_out import LeaveOneOut
from audit.reference_groups.store import group_from_store, write_reference_store
from audit.storage import open_zarr
from audit.similarity import confusion_counts, pair_table, similar_classes


def _planted(rng):
    labels = np.repeat([0, 1], 40)
    z = rng.normal(size=(80, 6)) + labels[:, None] * 3.0
    z[7] += 12.0  # planted outlier in class 0
    z[50] -= 12.0  # planted outlier in class 1
    return z, labels


def test_planted_outliers_rank_first_and_scores_match_brute_force(rng, tmp_path):
    z, labels = _planted(rng)
    write_reference_store(da.from_array(z, chunks=(25, 6)), labels, ["a", "b"], tmp_path / "reference.zarr")
    ids = np.array([f"i{n}" for n in range(80)])
    table = anomaly_table(z, labels, labels, ids, np.full(80, "audit"), LeaveOneOut(open_zarr(tmp_path / "reference.zarr").load()), ["a", "b"])
    top = table[table["rank"] == 1].set_index("label")["image_id"]
    assert top[0] == "i7" and top[1] == "i50"
    others = np.delete(z[labels == 0], 7, axis=0)
    brute = oas_gaussian(len(others), others.sum(0), others.T @ others).mahalanobis_squared(z[7])[0]
    assert np.isclose(table.set_index("image_id").loc["i7", "score"], brute, rtol=1e-9)


def test_relative_and_label_issue_scores_in_closed_form(rng, tmp_path):
    """relative_score = score − squared distance to the ``all`` group; label_issue = 1 − p(label) on images not trained on."""
    z, labels = _planted(rng)
    write_reference_store(da.from_array(z, chunks=(25, 6)), labels, ["a", "b"], tmp_path / "reference.zarr")
    reference = open_zarr(tmp_path / "reference.zarr").load()
    ids = np.array([f"i{n}" for n in range(80)])
    split = np.where(np.arange(80) % 2 == 0, "train", "audit")
    probability = rng.dirichlet([1.0, 1.0], size=80)
    table = anomaly_table(z, labels, labels, ids, split, LeaveOneOut(reference), ["a", "b"], group_from_store(reference, "all"), probability)
    table = table.set_index("image_id").loc[ids]
    everything = oas_gaussian(80, z.sum(0), z.T @ z)
    np.testing.assert_allclose(table["relative_score"], table["score"] - everything.mahalanobis_squared(z), rtol=1e-9)
    expected = np.where(split == "train", np.nan, 1 - probability[np.arange(80), labels])
    np.testing.assert_allclose(table["label_issue"].to_numpy(float), expected)


def test_scores_read_lazily_in_blocks_of_classes_equal_those_from_memory(rng, tmp_path):
    """A Dask-backed embedding and probabilities, read a few classes (and rows) at a time, give the same table."""
    import xarray as xr

    from audit.anomaly import class_blocks

    labels = rng.integers(0, 5, 400)
    z = (rng.normal(size=(400, 6)) + labels[:, None]).astype(np.float32)
    z[3, 2] = np.nan
    write_reference_store(da.from_array(z, chunks=(100, 6)), labels, list("abcde"), tmp_path / "reference.zarr", min_images=3)
    reference = open_zarr(tmp_path / "reference.zarr").load()
    probability = rng.dirichlet(np.ones(5), 400).astype(np.float32)
    split = np.where(rng.random(400) < 0.5, "train", "audit")
    ids, names = np.arange(400).astype(str), list("abcde")
    in_memory = anomaly_table(z, labels, labels, ids, split, LeaveOneOut(reference), names, group_from_store(reference, "all"), probability)
    row_bytes = 8 * 6
    assert [b.tolist() for b in class_blocks(labels, row_bytes, 170 * row_bytes)] == [[0, 1], [2, 3], [4]]  # ~80 images a class
    lazy = anomaly_table(
        xr.DataArray(da.from_array(z, chunks=(37, 6)), dims=("image", "unit")), labels, labels, ids, split, LeaveOneOut(reference), names,
        group_from_store(reference, "all"), xr.DataArray(da.from_array(probability, chunks=(37, 5)), dims=("image", "class")),
        block_bytes=170 * row_bytes,
    )
    pd.testing.assert_frame_equal(lazy, in_memory)
    assert in_memory["score"].isna().sum() == 1
    sliced = anomaly_table(  # a budget smaller than any class: each class in slices of its members
        xr.DataArray(da.from_array(z, chunks=(37, 6)), dims=("image", "unit")), labels, labels, ids, split, LeaveOneOut(reference), names,
        group_from_store(reference, "all"), probability, block_bytes=30 * row_bytes,
    )
    pd.testing.assert_frame_equal(sliced, in_memory)


def test_pairs_alike_in_the_embedding_but_never_confused_rank_among_the_first(rng):
    """Classes c and d differ by a small mark: no confusion, the most alike means, and a large Mahalanobis distance
    along the mark's direction. Ranked by confusions first they would come after every confused pair; taken in turn
    they are rank 2, chosen as alike in the embedding (issue 15.6)."""
    means = np.array([[0.0, 0.0, 0.0], [4.0, 0.0, 0.0], [0.0, 4.0, 0.0], [0.0, 4.0, 0.3]])
    spread = np.diag([1.0, 1.0, 0.01])  # the third unit varies little within a class: 0.3 there is 3 within-class sds
    confusion = np.zeros((4, 4), np.int64)
    confusion[0, 1], confusion[1, 0], confusion[0, 2], confusion[1, 2] = 5, 4, 3, 2
    table = pair_table(list("abcd"), rng.normal(size=(4, 6)), confusion, means, pooled_cholesky=np.linalg.cholesky(spread))
    assert (table.loc[0, "name_a"], table.loc[0, "name_b"], table.loc[0, "chosen_for"]) == ("a", "b", "confused")
    assert (table.loc[1, "name_a"], table.loc[1, "name_b"], table.loc[1, "chosen_for"]) == ("c", "d", "alike in the embedding")
    assert table.loc[1, "confusions"] == 0 and np.isclose(table.loc[1, "mahalanobis"], 3.0)
    assert np.isclose(table.loc[1, "relative_distance"], 0.3 / np.sqrt(2.01)) and np.isclose(table.loc[1, "subtlety"], 3.0 * 2.01 / 0.09)
    assert np.isclose(table.set_index(["name_a", "name_b"]).loc[("a", "b"), "mahalanobis"], 4.0)
    assert sorted(zip(table["class_a"], table["class_b"])) == [(a, b) for a in range(4) for b in range(a + 1, 4)]  # every pair once
    assert list(table["rank"]) == list(range(1, 7))


@pytest.mark.parametrize("units, mark", [(8, 0.5), (32, 0.3), (64, 0.8)])
def test_pairs_that_differ_only_by_a_mark_are_among_the_first_three(units, mark):
    """Spot the difference: classes 0 and 1 are far apart, 2 and 3 are copies of them with a mark, which moves the
    embedding a little along one direction of small within-class variance; 4 and 5, and 6 and 7, are confusable
    pairs (means a little apart in every unit). The two mark-only pairs are the most alike and the most subtle, so
    both are within `top_pairs: 3`; by the Mahalanobis distance (the criterion before) they came behind the two
    confusable pairs, the mark separating them well."""
    rng = np.random.default_rng(units)
    base = rng.normal(size=(8, units)) * 3.0
    base[2], base[3] = base[0], base[1]
    base[2:4, 0] += mark  # unit 0 carries the mark
    base[5], base[7] = base[4] + 0.3, base[6] - 0.3
    base[5, 0], base[7, 0] = base[4, 0], base[6, 0]  # the confusable pairs differ in every unit but the mark's
    scale = np.ones(units)
    scale[0] = 0.05  # little within-class variance along the mark
    samples = [base[c] + rng.normal(size=(200, units)) * scale for c in range(8)]
    means = np.stack([s.mean(0) for s in samples])
    pooled = np.cov(np.concatenate([s - s.mean(0) for s in samples]).T)
    spread = np.array([np.sqrt(np.trace(np.cov(s.T))) for s in samples])
    table = pair_table(list("abcdefgh"), None, np.zeros((8, 8), np.int64), means, pooled_cholesky=np.linalg.cholesky(pooled), class_spread=spread)
    first = lambda frame: {tuple(p) for p in zip(frame["class_a"].head(3), frame["class_b"].head(3))}  # noqa: E731
    assert {(0, 2), (1, 3)} <= first(table), table
    assert not {(0, 2), (1, 3)} <= first(table.sort_values("mahalanobis"))


def test_pair_table_orders_confused_pairs_first(rng):
    labels = np.array([0, 0, 1, 1, 2, 2])
    predictions = np.array([0, 2, 1, 1, 0, 2])
    confusion = confusion_counts(labels, predictions, 3)
    assert confusion[0, 2] == 1 and confusion[2, 0] == 1 and confusion.sum() == 6
    table = pair_table(["a", "b", "c"], rng.normal(size=(3, 4)), confusion, rng.normal(size=(3, 5)))
    assert (table.loc[0, "class_a"], table.loc[0, "class_b"], table.loc[0, "confusions"]) == (0, 2, 2)
    assert list(table["rank"]) == [1, 2, 3]
    assert table["weight_cosine"].between(-1, 1).all()
    similar = similar_classes(table, k=1)
    assert list(similar["class"]) == [0, 1, 2]
    assert list(similar["similar"])[0] == 2 and list(similar["similar"])[2] == 0  # a and c confuse each other


def test_plan_rows_per_subject():
    labels = np.array([0, 0, 0, 1, 1, 1])
    ids = np.array([f"i{n}" for n in range(6)])
    probability = np.array([[0.9, 0.05, 0.05], [0.6, 0.3, 0.1], [0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1], [0.05, 0.9, 0.05]])
    anomalies = pd.DataFrame({"image_id": ids, "label": labels, "combined_score": [3.0, 2, 1, 3, 2, 1], "combined_rank": [1, 2, 3, 1, 2, 3]})
    pairs = pd.DataFrame({"class_a": [0], "class_b": [1]})
    settings = ExplainSettings(top_anomalies=1, top_pairs=1, images_per_pair=1, finer_contrasts=2)
    plan = explain_plan(anomalies, pairs, ids, labels, probability, settings, methods=["gradcam", "layercam", "finercam", "diffcam"])
    anomaly = plan[plan["purpose"] == "anomaly"]
    assert set(anomaly["image_id"]) == {"i0", "i3"}
    assert set(anomaly.loc[anomaly["method"] == "diffcam", "reference"]) == {"others:0", "own-class-loo:0", "others:1", "own-class-loo:1"}
    finer = anomaly[(anomaly["method"] == "finercam") & (anomaly["image_id"] == "i0")].iloc[0]
    assert list(finer["contrasts"]) == [1, 2] and finer["compare"] == 1
    pair = plan[plan["purpose"] == "pair"]
    # The most 1-like image of class 0 is i1; the most 0-like of class 1 is i3.
    assert set(pair["image_id"]) == {"i1", "i3"}
    row = pair[(pair["image_id"] == "i1") & (pair["method"] == "diffcam") & (pair["reference"] != "others:0")].iloc[0]
    assert row["reference"] == "class:1" and row["compare"] == 1 and row["target"] == 0
    assert set(plan.loc[plan["image_id"] == "i0", "method"]) == {"gradcam", "layercam", "finercam", "diffcam"}
    assert finer["variant"] == "finercam top-2 predictions"


def test_plan_finer_contrasts_by_classifier_weight_similarity():
    labels = np.array([0, 1, 2])
    probability = np.array([[0.8, 0.15, 0.05], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]])
    anomalies = pd.DataFrame({"image_id": ["a", "b", "c"], "label": labels, "combined_score": [1.0, 1, 1], "combined_rank": [1, 1, 1]})
    similarity = np.array([[1.0, 0.1, 0.7], [0.1, 1.0, 0.2], [0.7, 0.2, 1.0]])
    plan = explain_plan(
        anomalies, pd.DataFrame({"class_a": [], "class_b": []}), np.array(["a", "b", "c"]), labels, probability,
        ExplainSettings(top_anomalies=1, top_pairs=0, images_per_pair=1, finer_contrasts=1), methods=["finercam", "diffcam"], weight_similarity=similarity,
    )
    finer = plan[(plan["method"] == "finercam") & (plan["image_id"] == "a")].iloc[0]
    assert list(finer["contrasts"]) == [2] and finer["compare"] == 1  # by weight: class 2; compare stays the top other prediction
    assert finer["variant"] == "finercam top-1 by weight"
    assert set(plan["method"]) == {"finercam", "diffcam"}
