"""Reference statistics against NumPy and scikit-learn on small data."""
import dask.array as da
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from sklearn.covariance import OAS

from audit.anomaly import anomaly_table
from audit.reference_groups.gaussian import condition_number, oas_gaussian
from audit.reference_groups.leave_one_out import LeaveOneOut
from audit.reference_groups.store import embedding_statistics, group_from_store, group_precision, spill_statistics, write_reference_store
from audit.storage import open_zarr


def _data(rng, n=120, k=6, classes=3):
    labels = rng.integers(0, classes, n)
    z = rng.normal(size=(n, k)) + labels[:, None] * 0.5
    return z, labels


def _store(tmp_path, z, labels, names, min_images=10, chunk=17):
    """Write and load a reference store of embeddings ``z`` (float32 as in the feature store)."""
    path = tmp_path / "reference.zarr"
    write_reference_store(da.from_array(z.astype(np.float32), chunks=(chunk, z.shape[1])), labels, names, path, min_images, num_workers=2)
    return open_zarr(path).load()


def test_chunk_statistics_add_up_to_numpy_over_several_chunks(rng, tmp_path):
    """Chunks of 17 rows: classes with at most K = 6 rows in a chunk keep their rows, others their QR triangle; the sums are exact."""
    z, labels = _data(rng)
    statistics = embedding_statistics(da.from_array(z.astype(np.float32), chunks=(17, 6)), labels, 4, num_workers=2)
    spill = spill_statistics(statistics, 4, tmp_path)  # class 3 empty
    for c in range(3):
        members = z[labels == c].astype(np.float32).astype(np.float64)
        assert spill.count[c] == len(members)
        np.testing.assert_allclose(spill.total[c], members.sum(0))
        np.testing.assert_allclose(spill.outer(c), members.T @ members)
    assert spill.count[3] == 0 and spill.outer(3).shape == (6, 6) and not spill.outer(3).any()


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


def test_store_groups_match_direct_estimates(rng, tmp_path):
    z, labels = _data(rng)
    z32 = z.astype(np.float32).astype(np.float64)
    store = _store(tmp_path, z, labels, ["a", "b", "c"], min_images=5)
    assert list(store["group"].values) == ["class:a", "class:b", "class:c", "others:a", "others:b", "others:c", "all", "pooled-within-class"]
    assert set(store["covariance"].values) == {"own"} and store.attrs["estimator"] == "oas"
    assert ((store["shrinkage"] >= 0) & (store["shrinkage"] <= 1)).all()
    for name, rows in (("class:c", labels == 2), ("others:b", labels != 1), ("all", np.ones(len(z), bool))):
        group = group_from_store(store, name)
        direct = OAS().fit(z32[rows])
        assert store["count"].sel(group=name).item() == rows.sum()
        np.testing.assert_allclose(group.mean, z32[rows].mean(0), rtol=1e-10)
        np.testing.assert_allclose(group.cholesky @ group.cholesky.T, direct.covariance_, rtol=1e-8, atol=1e-10)
        covariance = group.cholesky @ group.cholesky.T
        mean, precision = group_precision(store, name)
        assert precision.dtype == np.float32 and (precision == precision.T).all()
        np.testing.assert_allclose(mean, group.mean)
        np.testing.assert_allclose(precision @ covariance, np.eye(len(mean)), atol=1e-5)
        assert np.linalg.cond(covariance, 1) / 3 <= store["condition"].sel(group=name).item() <= np.linalg.cond(covariance, 1) * (1 + 5e-4)
    np.testing.assert_allclose(store["class_outer"].values[0], z32[labels == 0].T @ z32[labels == 0])
    members = np.flatnonzero(labels == 2)
    loo = LeaveOneOut(store).group(2, z32[members[0]])
    direct = OAS().fit(z32[members[1:]])
    assert not loo.pooled
    np.testing.assert_allclose(loo.mean, z32[members[1:]].mean(0))
    np.testing.assert_allclose(loo.cholesky @ loo.cholesky.T, direct.covariance_, rtol=1e-8, atol=1e-10)


def test_extra_variables_are_stored_and_the_spill_is_removed(rng, tmp_path):
    z, labels = _data(rng, n=30)
    extra = xr.Dataset({"concept_vector": (("concept", "feature"), np.ones((2, 4)))}, coords={"concept": ["x", "y"]})
    write_reference_store(da.from_array(z, chunks=(10, 6)), labels, ["a", "b", "c"], tmp_path / "reference.zarr", 2, extra=extra)
    assert open_zarr(tmp_path / "reference.zarr")["concept_vector"].shape == (2, 4)
    assert [p.name for p in tmp_path.iterdir()] == ["reference.zarr"]


def test_condition_number_estimate_is_close_to_the_exact_one_norm_condition(rng):
    for k in (4, 300):
        basis, _ = np.linalg.qr(rng.normal(size=(k, k)))
        covariance = basis @ np.diag(np.geomspace(0.01, 40.0, k)) @ basis.T
        exact = np.linalg.cond(covariance, 1)
        estimate = condition_number(np.linalg.cholesky(covariance), covariance)
        assert exact / 3 <= estimate <= exact * (1 + 5e-4)  # rounded to 4 significant digits


def test_small_and_empty_classes_fall_back_instead_of_failing(rng, tmp_path):
    labels = np.array([0] * 30 + [1] * 3 + [2] * 1)
    z = (rng.normal(size=(34, 4)) * np.array([1.0, 4.0, 0.3, 2.0]) + labels[:, None]).astype(np.float32).astype(np.float64)
    store = _store(tmp_path, z, labels, ["a", "b", "c", "d"], min_images=5, chunk=10)  # class d is empty
    source = dict(zip(store["group"].values, store["covariance"].values))
    assert source["class:a"] == "own" and source["class:b"] == "pooled" and source["class:c"] == "pooled" and source["class:d"] == "none"

    centred = np.concatenate([z[labels == c] - z[labels == c].mean(0) for c in range(3)])
    scatter = centred.T @ centred / (34 - 3)  # N − C degrees of freedom
    pooled = group_from_store(store, "pooled-within-class")
    assert 0 < pooled.shrinkage < 1
    shrunk = (1 - pooled.shrinkage) * scatter + pooled.shrinkage * np.trace(scatter) / 4 * np.eye(4)
    np.testing.assert_allclose(pooled.cholesky @ pooled.cholesky.T, shrunk, rtol=1e-8)

    small = group_from_store(store, "class:b")
    assert small.pooled
    np.testing.assert_allclose(small.mean, z[labels == 1].mean(0))
    np.testing.assert_allclose(small.cholesky, pooled.cholesky)
    with pytest.raises(ValueError, match="has no images"):
        group_from_store(store, "class:d")
    with pytest.raises(ValueError, match="has no images"):
        group_precision(store, "class:d")
    np.testing.assert_array_equal(group_precision(store, "class:b")[1], group_precision(store, "pooled-within-class")[1])

    table = anomaly_table(z, labels, labels, np.arange(34).astype(str), np.full(34, "audit"), LeaveOneOut(store), ["a", "b", "c", "d"])
    singleton = table[table["label"] == 2].iloc[0]
    assert np.isnan(singleton["score"]) and pd.isna(singleton["rank"])  # a lone image: unscored, unranked
    assert table.loc[table["label"] == 1, "pooled"].all() and not table.loc[table["label"] == 0, "pooled"].any()
    assert table.loc[table["label"] != 2, "score"].notna().all()


def test_group_with_one_image_is_a_clear_error():
    with pytest.raises(ValueError, match="at least 2 images"):
        oas_gaussian(1, np.ones(3), np.eye(3))


def test_nan_and_infinite_features_are_left_out_and_counted(rng, tmp_path):
    z, labels = _data(rng, n=60)
    z = z.astype(np.float32).astype(np.float64)
    broken = z.copy()
    broken[[3, 10, 11]] = np.nan
    broken[20, 2] = np.inf
    keep = np.isfinite(broken).all(axis=1)
    store = _store(tmp_path / "broken", broken, labels, ["a", "b", "c"], min_images=2, chunk=16)
    clean = _store(tmp_path / "clean", z[keep], labels[keep], ["a", "b", "c"], min_images=2, chunk=16)
    np.testing.assert_allclose(store["class_outer"].values, clean["class_outer"].values)
    np.testing.assert_allclose(store["cholesky"].values, clean["cholesky"].values)
    assert list(store["class_nonfinite"].values) == [int((labels[~keep] == c).sum()) for c in range(3)]
    assert clean["class_nonfinite"].sum() == 0

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


def test_a_spill_left_by_a_killed_run_is_removed(rng, tmp_path):
    z, labels = _data(rng, n=30)
    (tmp_path / ".reference.zarr.spill-old").mkdir()
    write_reference_store(da.from_array(z, chunks=(10, 6)), labels, ["a", "b", "c"], tmp_path / "reference.zarr", 2)
    assert [p.name for p in tmp_path.iterdir()] == ["reference.zarr"]


def test_closed_form_leave_one_out_scores_equal_one_factorisation_per_member(rng, tmp_path):
    """member_scores (one eigendecomposition per class, Sherman–Morrison per member) against group() per member:
    a class with more features than members (λ does the work), a class with fewer features, a small class on the
    pooled covariance, and a class of one (NaN)."""
    k = 24
    labels = np.repeat([0, 1, 2, 3], [15, 60, 6, 1])
    z = rng.normal(size=(len(labels), k)) * rng.uniform(0.2, 3.0, size=k) + labels[:, None]
    z[3] += 8.0
    store = _store(tmp_path, z, labels, ["few", "many", "small", "one"], min_images=8)
    leave_one_out = LeaveOneOut(store)
    z32 = z.astype(np.float32).astype(np.float64)
    for label in range(4):
        members = z32[labels == label]
        scores, shrinkage, pooled = leave_one_out.member_scores(label, members)
        for i, member in enumerate(members):
            group = leave_one_out.group(label, member)
            if group is None:
                assert np.isnan(scores[i]) and np.isnan(shrinkage[i])
                continue
            np.testing.assert_allclose(scores[i], group.mahalanobis_squared(member)[0], rtol=1e-8)
            assert shrinkage[i] == pytest.approx(group.shrinkage, rel=1e-9) and pooled[i] == group.pooled
    assert leave_one_out.member_scores(2, z32[labels == 2])[2].all()  # 5 left < min_images: pooled
