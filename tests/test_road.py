"""ROAD: the vectorised imputation against the reference imputer and the grad-cam package's ROAD scores."""
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from pytorch_grad_cam.metrics.road import NoisyLinearImputer, ROADLeastRelevantFirstAverage, ROADMostRelevantFirstAverage
from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

from audit.explain.store import saliency_dataset
from audit.metrics.evaluate import evaluate_saliency
from audit.settings import MetricSettings
from audit.metrics.perturbation import removal_masks
from audit.metrics.imputation import CACHE_WORKING_ELEMENTS, linear_imputation, noisy_linear_imputation, working_set_elements
from audit.models.preprocess import normalise
from tests.test_metrics import META, QuadrantModel


def _smooth(shape, seed):
    return F.avg_pool2d(torch.rand(shape, generator=torch.Generator().manual_seed(seed)), 5, 1, 2)


@pytest.mark.parametrize("compiled", [True, False], ids=["cpu-kernel", "torch"])
@pytest.mark.parametrize("size", [(24, 24), (17, 30)])
def test_imputation_matches_the_reference_sparse_solve(size, compiled):
    """Same masks, noise off: both CG solves (compiled CPU kernel, batched torch) equal the reference's per-image spsolve."""
    images = _smooth((12, 3, *size), 0)
    saliency = _smooth((12, 1, *size), 1)[:, 0]
    fractions = torch.tensor([0.1, 0.5, 0.9])
    removed = torch.cat([removal_masks(saliency[:4], fractions), removal_masks(-saliency[4:8], fractions), removal_masks(saliency[8:], fractions)])
    removed = removed.reshape(-1, *size)
    repeated = images.repeat_interleave(3, dim=0)
    ours = linear_imputation(repeated, removed, compiled=compiled)
    reference = torch.stack([NoisyLinearImputer(noise=0.0)(repeated[i], (~removed[i]).float()) for i in range(len(removed))])
    assert (ours - reference).abs().max() < 1e-3
    torch.testing.assert_close(ours[~removed[:, None].expand_as(ours)], repeated[~removed[:, None].expand_as(ours)])


def test_the_torch_solve_gives_the_same_infill_whatever_its_working_set():
    """Two systems at a time or all at once (as a GPU's working set holds them): the same infill within the solve's
    tolerance; off CUDA the working set is the cache-sized default."""
    images = _smooth((10, 3, 24, 24), 4)
    removed = _smooth((10, 1, 24, 24), 5)[:, 0] > 0.5
    streamed = linear_imputation(images, removed, compiled=False, working_elements=2 * 3 * 24 * 24)
    together = linear_imputation(images, removed, compiled=False, working_elements=1 << 30)
    assert (streamed - together).abs().max() < 1e-3
    assert working_set_elements(torch.device("cpu")) == CACHE_WORKING_ELEMENTS


@pytest.mark.parametrize("compiled", [True, False], ids=["cpu-kernel", "torch"])
def test_a_mixed_batch_solves_greyscale_images_once_and_each_image_on_its_own(compiled):
    """Grey (equal-channel) and RGB images in one batch: each equals its own solve, grey ones stay grey."""
    images = _smooth((4, 3, 20, 20), 2)
    images[1:3] = images[1:3, :1].clone().expand(-1, 3, -1, -1)
    removed = _smooth((4, 1, 20, 20), 3)[:, 0] > 0.5
    batch = linear_imputation(images, removed, compiled=compiled)
    for i in range(4):
        alone = linear_imputation(images[i : i + 1], removed[i : i + 1], compiled=compiled)[0]
        torch.testing.assert_close(batch[i], alone)
    torch.testing.assert_close(batch[1:3], batch[1:3, :1].expand(-1, 3, -1, -1))


def test_noise_only_on_imputed_pixels_and_a_fully_removed_image_is_refused():
    images = torch.rand(2, 3, 8, 8)
    removed = torch.zeros(2, 8, 8, dtype=torch.bool)
    removed[:, :4] = True
    noisy = noisy_linear_imputation(images, removed, torch.tensor([0.1, 0.2, 0.3]), torch.randn(images.shape, generator=torch.Generator().manual_seed(0)))
    exact = linear_imputation(images, removed)
    difference = noisy - exact
    assert (difference[:, :, 4:] == 0).all()
    np.testing.assert_allclose(difference[:, :, :4].std(dim=(0, 2, 3)).numpy(), [0.1, 0.2, 0.3], rtol=0.3)
    with pytest.raises(ValueError, match="at least one kept pixel"):
        linear_imputation(images, torch.ones(2, 8, 8, dtype=torch.bool))


def _quadrant_store(maps):
    count = len(maps)
    plan = pd.DataFrame(
        {"method": "m", "image_index": np.zeros(count, int), "image_id": "i", "purpose": "anomaly", "variant": "m",
         "target": 0, "contrasts": [[]] * count, "reference": "", "compare": 1}
    )
    return saliency_dataset(plan, maps, (8, 8), (8, 8), {})


def test_road_on_the_quadrant_model_is_hand_computable():
    """A hole bordered only by one value is filled with it: removing the bright quadrant (MoRF, 1/4) fills it with 0;
    removing everything else (LeRF, 3/4) fills it with 1, so the logit keeps its value 20."""
    image = np.zeros((1, 3, 8, 8), np.uint8)
    image[:, :, :4, :4] = 255
    right = np.zeros((1, 8, 8), np.float32)
    right[:, :4, :4] = 1.0
    right += np.linspace(0, 1e-3, 64, dtype=np.float32).reshape(1, 8, 8)  # no ties
    settings = MetricSettings(road_fractions=(0.25, 0.75), metrics=("road",), batch_size=4)
    table = evaluate_saliency(QuadrantModel(), META, image, _quadrant_store(right), "m", settings).set_index(["metric", "fraction"])["value"]
    low, high = (torch.softmax(torch.tensor([logit, 5.0]), 0)[0].item() for logit in (0.0, 20.0))
    # noise 0.01 per pixel moves the quadrant's mean by ~0.0025, the logit by ~0.05
    assert table[("road_morf", 0.25)] == pytest.approx(low, rel=0.2)
    assert table[("road_lerf", 0.75)] == pytest.approx(high, abs=1e-4)
    combined = evaluate_saliency(QuadrantModel(), META, image, _quadrant_store(right), "m", settings)
    row = combined[combined["metric"] == "road_combined"]["value"].item()
    morf = combined[combined["metric"] == "road_morf_mean"]["value"].item()
    lerf = combined[combined["metric"] == "road_lerf_mean"]["value"].item()
    assert row == pytest.approx((lerf - morf) / 2) and row > 0.4


def test_road_agrees_with_the_grad_cam_package(trained, digits_small):
    """Same maps: our MoRF/LeRF means minus the unperturbed probability equal the package's averages
    (its percentile p removes the top / bottom (100 − p) %, i.e. fraction removed 1 − p/100)."""
    model, meta = trained
    count = 6
    images = digits_small.images[:count]
    maps = _smooth((count, 1, 32, 32), 3)[:, 0].numpy()
    plan = pd.DataFrame(
        {"method": "m", "image_index": np.arange(count), "image_id": digits_small.image_ids[:count], "purpose": "anomaly", "variant": "m",
         "target": digits_small.labels[:count], "contrasts": [[]] * count, "reference": "", "compare": 0}
    )
    store = saliency_dataset(plan, maps, (32, 32), (32, 32), {})
    table = evaluate_saliency(model, meta, images, store, "m", MetricSettings(metrics=("road", "deletion"), batch_size=64))
    value = table.set_index(["metric", "map"])["value"]
    start = np.array([table[(table["metric"] == "deletion_curve") & (table["fraction"] == 0.0)].set_index("map")["value"][i] for i in range(count)])
    x = normalise(torch.as_tensor(images).float() / 255, meta.mean, meta.std)
    targets = [ClassifierOutputSoftmaxTarget(int(t)) for t in digits_small.labels[:count]]
    torch.manual_seed(0)
    package_morf = ROADMostRelevantFirstAverage()(x, maps, targets, model)
    package_lerf = ROADLeastRelevantFirstAverage()(x, maps, targets, model)
    ours_morf = np.array([value[("road_morf_mean", i)] for i in range(count)]) - start
    ours_lerf = np.array([value[("road_lerf_mean", i)] for i in range(count)]) - start
    assert np.abs(package_morf).max() > 5e-3  # the perturbations move the probabilities
    # noise (0.01 in normalised units, drawn differently) and a pixel at the percentile boundary are the only differences
    np.testing.assert_allclose(ours_morf, package_morf, atol=3e-4)
    np.testing.assert_allclose(ours_lerf, package_lerf, atol=3e-4)
