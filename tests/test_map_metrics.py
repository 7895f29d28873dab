"""The map-only and region metrics on hand-computed cases, and the random-logit check through the evaluator."""
import numpy as np
import pandas as pd
import pytest

from audit.explain.store import saliency_dataset
from audit.metrics.evaluate import evaluate_saliency
from audit.metrics.localization import object_contrast, otsu_f_measure
from audit.metrics.map_properties import complexity, concentration, sparseness
from audit.settings import MetricSettings
from tests.test_metrics import META, QuadrantModel


def test_sparseness_is_the_gini_index_of_the_magnitudes():
    one_hot = np.zeros((1, 2, 2))
    one_hot[0, 0, 0] = -3.0  # the sign does not matter: |S|
    uniform = np.full((1, 2, 2), 2.0)
    ramp = np.array([[[1.0, 2.0], [3.0, 4.0]]])
    got = sparseness(np.concatenate([one_hot, uniform, ramp, np.zeros((1, 2, 2))]))
    # n = 4, sorted a = (0, 0, 0, 3): Σ(2i − n − 1) a_i = 3·3 = 9; 9 / (4 · 3) = 0.75 (Gini of one spike among n: (n − 1)/n)
    # ramp (1, 2, 3, 4): (−3·1 − 1·2 + 1·3 + 3·4) / (4 · 10) = 10 / 40 = 0.25
    np.testing.assert_allclose(got[:3], [0.75, 0.0, 0.25], atol=1e-6)
    assert np.isnan(got[3])


def test_complexity_is_the_entropy_of_the_normalised_magnitudes():
    maps = np.array([[[1.0, 1.0], [1.0, 1.0]], [[5.0, 0.0], [0.0, 0.0]], [[1.0, -1.0], [2.0, 0.0]]])
    got = complexity(maps)
    p = np.array([0.25, 0.25, 0.5])
    np.testing.assert_allclose(got, [np.log(4), 0.0, -(p * np.log(p)).sum()], atol=1e-12)


def test_concentration_is_the_positive_energy_inside_the_maps_otsu_region():
    two_levels = np.array([[[1.0, 1.0, 0.2, 0.2], [0.2, 0.2, 0.2, 0.2]]])  # Otsu splits 1.0 from 0.2
    negative_tail = np.array([[[1.0, -5.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]])  # only positive energy counts
    got = concentration(np.concatenate([two_levels, negative_tail, -np.ones((1, 2, 4))]))
    np.testing.assert_allclose(got[:2], [2.0 / (2.0 + 6 * 0.2), 1.0])
    assert np.isnan(got[2])  # no positive evidence


def test_object_contrast_and_otsu_f_measure_against_a_region():
    region = np.zeros((1, 2, 4), bool)
    region[0, :, :2] = True  # the left half
    inside_heavy = np.array([[[1.0, 1.0, 0.5, 0.5], [1.0, 1.0, 0.5, 0.5]]])
    contrast = object_contrast(np.concatenate([inside_heavy, np.where(region, 1.0, 0.0)]), np.concatenate([region, region]))
    assert contrast[0] == pytest.approx(2.0)  # mean 1.0 inside over mean 0.5 outside
    assert np.isnan(contrast[1])  # nothing positive outside: unbounded
    # Otsu region of inside_heavy = the four 1.0 pixels = the region: F1 = 1; a map on the wrong half: F1 = 0;
    # a map covering the region and one more pixel: P = 4/5, R = 1, F1 = 2·0.8/1.8.
    spill = np.where(region, 1.0, 0.0)
    spill[0, 0, 2] = 1.0
    wrong = np.where(region, 0.0, 1.0)
    f = otsu_f_measure(np.concatenate([inside_heavy, wrong, spill]), np.concatenate([region] * 3))
    np.testing.assert_allclose(f, [1.0, 0.0, 2 * 0.8 / 1.8])


def test_random_logit_similarity_through_the_evaluator():
    maps = np.random.default_rng(0).random((3, 8, 8)).astype(np.float32)
    random_class = [maps[0], -maps[1], None]  # the same map, the reversed map, none
    plan = pd.DataFrame(
        {"method": "m", "image_index": 0, "image_id": "i", "purpose": "anomaly", "variant": "m", "target": 0, "contrasts": [[]] * 3,
         "reference": "", "compare": 1, "random_class": 1}
    )
    store = saliency_dataset(plan, maps, (8, 8), (8, 8), {}, checks={"random_class_map": random_class})
    table = evaluate_saliency(QuadrantModel(), META, np.zeros((1, 3, 8, 8), np.uint8), store, "m", MetricSettings(metrics=("random_logit",)))
    values = table.set_index("map")["value"]
    assert values[0] == pytest.approx(1.0) and values[1] == pytest.approx(-1.0) and np.isnan(values[2])
    assert set(table["metric"]) == {"random_logit_similarity"} and (table["score"] == "saliency").all()
    assert (store["random_class"] == 1).all()
