"""DiffCAM: closed form, Fisher optimality, Mahalanobis decomposition."""
import numpy as np
import pytest
from scipy.optimize import minimize

from audit.explain.diffcam import diffcam_maps, diffcam_weights, precision_weights
from audit.reference_groups.gaussian import ShrunkGaussian, oas_gaussian


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


@pytest.mark.parametrize("threads", [1, 2])
def test_the_channel_sum_kernel_is_the_weighted_sum_of_each_rows_image(rng, threads):
    """Rows in any order, several per image, images without rows, more images than one thread's share: each row's map
    is Σ_k w_k A_k of its own image (an einsum in float64 as the oracle), float32 and float64 activations alike."""
    from audit.explain.channel_sum_kernel import weighted_channel_sums
    from audit.explain.weighting import direction_maps

    activations = rng.normal(size=(150, 7, 3, 4)).astype(np.float32)
    positions = rng.integers(0, 150, size=260)
    positions[:5] = [149, 0, 149, 3, 0]
    weights = rng.normal(size=(260, 7)).astype(np.float32)
    expected = np.einsum("rk,rkyx->ryx", weights.astype(np.float64), activations[positions].astype(np.float64))
    got = weighted_channel_sums(activations, weights, positions, threads)
    assert got.dtype == np.float32 and got.shape == (260, 3, 4)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    offsets = rng.normal(size=260)
    for dtype in (np.float32, np.float64):  # float64 takes torch's batched product
        np.testing.assert_allclose(direction_maps(activations.astype(dtype), weights, offsets, positions), expected - offsets[:, None, None], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("condition", [1e2, 1e4, 1.3e5, 1e6])
def test_float32_weights_are_the_float64_solve_within_1e_5(rng, condition):
    """The maps' S⁻¹ d in float32 (:data:`audit.explain.diffcam.MAP_DTYPE`), by the float32 solve and by the product
    with the stored float32 precision: each column within 1e-5 of the float64 solve's norm, at the condition numbers
    a reference store records (up to 1.3e5 seen)."""
    k = 64
    basis, _ = np.linalg.qr(rng.normal(size=(k, k)))
    spectrum = np.geomspace(1.0, 1.0 / condition, k)
    mean = rng.normal(size=k)
    group = ShrunkGaussian(mean=mean, cholesky=np.linalg.cholesky((basis * spectrum) @ basis.T), shrinkage=0.0, count=float(k))
    rhs = rng.normal(size=(k, 50)) * np.sqrt(spectrum.mean())
    exact = group.solve(rhs)
    for got in (group.solve(rhs, np.float32), precision_weights(rhs.T + mean, mean, group.precision()).T):
        assert got.dtype == np.float32
        assert (np.linalg.norm(got - exact, axis=0) / np.linalg.norm(exact, axis=0)).max() < 1e-5
