"""DiffCAM: closed form, Fisher optimality, Mahalanobis decomposition."""
import numpy as np
import pytest
from scipy.optimize import minimize

from audit.explain.diffcam import diffcam_maps, diffcam_weights
from audit.reference_groups.gaussian import oas_gaussian


def _group(rng, n=80, k=8):
    mixing = rng.normal(size=(k, k))
    z = rng.normal(size=(n, k)) @ mixing + rng.normal(size=k)
    return oas_gaussian(n, z.sum(0), z.T @ z)


def test_closed_form_maximises_the_fisher_ratio(rng):
    group = _group(rng)
    covariance = group.cholesky @ group.cholesky.T
    z = rng.normal(size=8) * 3
    diff = z - group.mean

    def negative_ratio(w):
        return -((w @ diff) ** 2) / (w @ covariance @ w)

    best = max(
        (minimize(negative_ratio, rng.normal(size=8), method="BFGS", options={"gtol": 1e-12}) for _ in range(5)),
        key=lambda result: -result.fun,
    )
    closed = diffcam_weights(z, group)[0]
    cosine = abs(closed @ best.x) / np.linalg.norm(closed) / np.linalg.norm(best.x)
    assert cosine > 0.9999
    assert -negative_ratio(closed) == pytest.approx(-best.fun, rel=1e-8)


def test_centred_map_mean_is_squared_mahalanobis_distance(rng):
    group = _group(rng)
    activations = rng.normal(size=(5, 8, 4, 6)) + 2.0
    maps = diffcam_maps(activations, group, centre=True)
    assert maps.shape == (5, 4, 6)
    np.testing.assert_allclose(maps.mean(axis=(1, 2)), group.mahalanobis_squared(activations.mean(axis=(2, 3))), rtol=1e-10)


def test_uncentred_map_is_weighted_channel_sum(rng):
    group = _group(rng)
    activations = rng.normal(size=(3, 8, 2, 2))
    covariance = group.cholesky @ group.cholesky.T
    weights = np.linalg.solve(covariance, (activations.mean(axis=(2, 3)) - group.mean).T).T
    expected = np.einsum("mk,mkhw->mhw", weights, activations)
    np.testing.assert_allclose(diffcam_maps(activations, group, centre=False), expected, rtol=1e-9)
