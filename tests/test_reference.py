"""Reference statistics against NumPy and scikit-learn on small data."""
import dask.array as da
import numpy as np
import pytest
from sklearn.covariance import OAS

from audit.anomaly import anomaly_table
from audit.reference import (
    LeaveOneOut,
    class_statistics,
    class_statistics_from_store,
    group_from_store,
    oas_gaussian,
    pooled_within_class,
    reference_store,
)


def _data(rng, n=120, k=6, classes=3):
    labels = rng.integers(0, classes, n)
    z = rng.normal(size=(n, k)) + labels[:, None] * 0.5
    return z, labels


def test_class_statistics_match_numpy_over_several_chunks(rng):
    z, labels = _data(rng)
    stats, _ = class_statistics(da.from_array(z, chunks=(17, 6)), labels, 3, num_workers=2)
    for c in range(3):
        members = z[labels == c]
        assert stats.count[c] == len(members)
        np.testing.assert_allclose(stats.total[c], members.sum(0))
        np.testing.assert_allclose(stats.outer[c], members.T @ members)


def test_oas_matches_scikit_learn(rng):
    z, _ = _data(rng, n=40, k=10)
    group = oas_gaussian(len(z), z.sum(0), z.T @ z)
    reference = OAS().fit(z)
    assert group.shrinkage == pytest.approx(reference.shrinkage_, rel=1e-10)
    np.testing.assert_allclose(group.cholesky @ group.cholesky.T, reference.covariance_, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(group.mean, z.mean(0))


def test_mahalanobis_matches_explicit_inverse(rng):
    z, _ = _data(rng, n=50, k=5)
    group = oas_gaussian(len(z), z.sum(0), z.T @ z)
    covariance = group.cholesky @ group.cholesky.T
    probe = rng.normal(size=(4, 5))
    expected = np.einsum("mk,kl,ml->m", probe - group.mean, np.linalg.inv(covariance), probe - group.mean)
    np.testing.assert_allclose(group.mahalanobis_squared(probe), expected, rtol=1e-10)


def test_complements_and_leave_one_out_equal_direct_statistics(rng):
    z, labels = _data(rng)
    stats, _ = class_statistics(da.from_array(z, chunks=(50, 6)), labels, 3)
    others = stats.complements()
    rest = z[labels != 1]
    np.testing.assert_allclose(others.total[1], rest.sum(0))
    np.testing.assert_allclose(others.outer[1], rest.T @ rest)
    members = np.flatnonzero(labels == 2)
    without = z[members[1:]]
    loo = LeaveOneOut(reference_store(stats, ["a", "b", "c"], min_images=5)).group(2, z[members[0]])
    assert not loo.pooled
    direct = OAS().fit(without)
    np.testing.assert_allclose(loo.mean, without.mean(0))
    np.testing.assert_allclose(loo.cholesky @ loo.cholesky.T, direct.covariance_, rtol=1e-8, atol=1e-10)


def test_reference_store_groups(rng):
    z, labels = _data(rng)
    stats, _ = class_statistics(da.from_array(z, chunks=(40, 6)), labels, 3)
    store = reference_store(stats, ["a", "b", "c"])
    assert list(store["group"].values) == ["class:a", "class:b", "class:c", "others:a", "others:b", "others:c", "all", "pooled-within-class"]
    assert set(store["covariance"].values) == {"own"}
    assert store["count"].sel(group="others:b").item() == (labels != 1).sum()
    assert store.attrs["estimator"] == "oas"
    assert ((store["shrinkage"] >= 0) & (store["shrinkage"] <= 1)).all()
    np.testing.assert_allclose(group_from_store(store, "class:c").mean, z[labels == 2].mean(0))
    np.testing.assert_allclose(class_statistics_from_store(store).outer, stats.outer)


def test_group_with_one_image_is_a_clear_error():
    with pytest.raises(ValueError, match="at least 2 images"):
        oas_gaussian(1, np.ones(3), np.eye(3))


def test_small_and_empty_classes_fall_back_instead_of_failing(rng):
    labels = np.array([0] * 30 + [1] * 3 + [2] * 1)
    z = rng.normal(size=(34, 4)) * np.array([1.0, 4.0, 0.3, 2.0]) + labels[:, None]
    stats, _ = class_statistics(da.from_array(z, chunks=(10, 4)), labels, 4)  # class 3 is empty
    store = reference_store(stats, ["a", "b", "c", "d"], min_images=5)
    source = dict(zip(store["group"].values, store["covariance"].values))
    assert source["class:a"] == "own" and source["class:b"] == "pooled" and source["class:c"] == "pooled" and source["class:d"] == "none"

    centred = np.concatenate([z[labels == c] - z[labels == c].mean(0) for c in range(3)])
    scatter = centred.T @ centred / (34 - 3)  # N − C degrees of freedom
    expected = pooled_within_class(stats)
    assert 0 < expected.shrinkage < 1
    shrunk = (1 - expected.shrinkage) * scatter + expected.shrinkage * np.trace(scatter) / 4 * np.eye(4)
    np.testing.assert_allclose(expected.cholesky @ expected.cholesky.T, shrunk, rtol=1e-10)

    small = group_from_store(store, "class:b")
    assert small.pooled
    np.testing.assert_allclose(small.mean, z[labels == 1].mean(0))
    np.testing.assert_allclose(small.cholesky, expected.cholesky)
    with pytest.raises(ValueError, match="has no images"):
        group_from_store(store, "class:d")

    table = anomaly_table(z, labels, labels, np.arange(34).astype(str), np.full(34, "audit"), LeaveOneOut(store), ["a", "b", "c", "d"])
    singleton = table[table["label"] == 2].iloc[0]
    assert np.isnan(singleton["score"]) and singleton["rank"] == 1
    assert table.loc[table["label"] == 1, "pooled"].all() and not table.loc[table["label"] == 0, "pooled"].any()
    assert table.loc[table["label"] != 2, "score"].notna().all()


def test_nan_and_infinite_features_are_left_out_and_counted(rng):
    z, labels = _data(rng, n=60)
    broken = z.copy()
    broken[[3, 10, 11]] = np.nan
    broken[20, 2] = np.inf
    stats, nonfinite = class_statistics(da.from_array(broken, chunks=(16, 6)), labels, 3)
    keep = np.isfinite(broken).all(axis=1)
    clean, none = class_statistics(da.from_array(z[keep], chunks=(16, 6)), labels[keep], 3)
    np.testing.assert_allclose(stats.outer, clean.outer)
    np.testing.assert_allclose(stats.total, clean.total)
    assert nonfinite.sum() == 4 and none.sum() == 0
    assert list(nonfinite) == [int((labels[~keep] == c).sum()) for c in range(3)]

    store = reference_store(stats, ["a", "b", "c"], min_images=2, nonfinite=nonfinite)
    table = anomaly_table(broken, labels, labels, np.arange(60).astype(str), np.full(60, "audit"), LeaveOneOut(store), ["a", "b", "c"])
    scores = table.set_index("image_id")["score"]
    assert scores.loc[["3", "10", "11", "20"]].isna().all()
    reference = anomaly_table(z[keep], labels[keep], labels[keep], np.flatnonzero(keep).astype(str), np.full(keep.sum(), "audit"), LeaveOneOut(store), ["a", "b", "c"])
    np.testing.assert_allclose(scores.loc[reference["image_id"]].to_numpy(), reference["score"].to_numpy())


def test_concept_vectors_are_mean_final_embeddings(rng):
    import xarray as xr

    from audit.concepts import concept_vectors

    pre_logits = rng.normal(size=(12, 5))
    pre_logits[4] = np.nan
    labels = np.arange(12) % 3
    ids = np.array([f"i{n}" for n in range(12)])
    data = xr.DataArray(pre_logits, dims=("image", "feature")).chunk({"image": 5})
    concepts = concept_vectors(data, labels, ids, ["a", "b", "c"], {"stripes": ["i2", "i7", "i4"]})
    assert list(concepts["concept"].values) == ["class:a", "class:b", "class:c", "concept:stripes"]
    np.testing.assert_allclose(concepts["concept_vector"].sel(concept="class:a"), pre_logits[[0, 3, 6, 9]].mean(0))
    np.testing.assert_allclose(concepts["concept_vector"].sel(concept="class:b"), pre_logits[[1, 7, 10]].mean(0))  # i4 is NaN
    np.testing.assert_allclose(concepts["concept_vector"].sel(concept="concept:stripes"), pre_logits[[2, 7]].mean(0))
    assert list(concepts["concept_count"].values) == [4, 3, 4, 2]
    with pytest.raises(ValueError, match=r"concept 'x': image ids not in the dataset: \['nope'\]"):
        concept_vectors(data, labels, ids, ["a", "b", "c"], {"x": ["i1", "nope"]})
