"""Confirmation by intervention: the candidate's region, the verdict's rule and the interventions on a model."""
import numpy as np
import pytest

from audit.intervention import REGION_LIMIT, InterventionOutcome, candidate_region, mirrored, pasted, verdict
from audit.models.registration import GridRegistration


def test_the_region_is_the_difference_maps_upper_half_drawn_on_the_image():
    difference = np.zeros((8, 8))
    difference[0, 7] = 1.0  # the top-right cell
    region = candidate_region(difference, GridRegistration.plain((8, 8), (64, 64)), (64, 64))
    ys, xs = np.nonzero(region)
    assert region.any() and ys.max() < 16 and xs.min() >= 48  # around the cell's centre (4, 60), within a cell of it
    assert not candidate_region(-difference, GridRegistration.plain((8, 8), (64, 64)), (64, 64)).any()  # nothing positive: no region
    assert candidate_region(np.ones((8, 8)), GridRegistration.plain((8, 8), (64, 64)), (64, 64)).mean() <= REGION_LIMIT
    assert (mirrored(region)[::-1, ::-1] == region).all() and not (mirrored(region) & region).any()


def test_pasting_takes_the_regions_pixels_from_the_source():
    targets, sources = np.zeros((2, 3, 4, 4), np.uint8), np.full((2, 3, 4, 4), 9, np.uint8)
    region = np.zeros((4, 4), bool)
    region[1:3, 0] = True
    out = pasted(targets, sources, region)
    assert (out[:, :, 1:3, 0] == 9).all() and out.sum() == 9 * 2 * 3 * 2
    each = np.stack([region, mirrored(region)])  # one region per image
    out = pasted(targets, sources, each)
    assert (out[0, :, 1:3, 0] == 9).all() and (out[1, :, 1:3, 3] == 9).all() and out.sum() == 9 * 2 * 3 * 2
    assert (mirrored(each)[1] == region).all()


def _outcome(inserted, control, rng):
    n = 64
    return InterventionOutcome(
        inserted=inserted + 0.01 * rng.standard_normal(n), inserted_control=control + 0.01 * rng.standard_normal(n), moved=np.zeros(n),
        moved_control=np.zeros(n), removed=np.zeros(16), removed_control=np.zeros(16), examples=[],
    )


@pytest.mark.parametrize("inserted, control, confirmed", [(0.3, 0.0, True), (0.06, 0.01, True), (0.02, 0.0, True), (0.002, 0.0, False), (0.05, 0.05, False), (0.0, 0.0, False)])
def test_the_verdict_needs_an_insertion_above_its_control_by_a_material_margin(rng, inserted, control, confirmed):
    """+0.002 against +0.000 with tight intervals is real but immaterial: not confirmed (min_effect 0.005)."""
    row = verdict(_outcome(inserted, control, rng), 1000, 0, 0.005)
    assert row["confirmed"] is confirmed
    assert row["inserted_low"] <= row["inserted"] <= row["inserted_high"] and row["effect"] == pytest.approx(row["inserted"] - row["inserted_control"])


def test_an_audit_without_candidates_writes_an_empty_shortcut_table():
    import pandas as pd

    from audit.intervention import SHORTCUT_COLUMNS, shortcut_table
    from audit.strategies import CANDIDATE_COLUMNS

    table = shortcut_table(pd.DataFrame(columns=CANDIDATE_COLUMNS), pd.DataFrame([]))
    assert table.empty and list(table.columns) == SHORTCUT_COLUMNS


def test_the_demos_planted_shortcut_is_recorded_and_the_detection_scored_against_it():
    """`dataset.shortcut` marks share of a class's digits (both splits) with a white square; the listing records which,
    and the report's score finds the best-matching candidate, its precision, recall and verdict."""
    import pandas as pd

    from audit.data.listing import planted_shortcut
    from audit.report.shortcuts import planted_score
    from audit.settings import DatasetSettings

    spec = {"class": "7", "share": 0.3, "corner": "top-left", "size": 4, "fade": 0.5}
    settings = DatasetSettings(source="digits", limit=300, shortcut=spec)
    recorded = planted_shortcut(settings, 32)
    from audit.data.listing import digits_dataset

    data = digits_dataset(settings, 32)
    marked = data.images[data.planted]
    assert recorded["images"] == list(data.image_ids[data.planted]) and (data.labels[data.planted] == 7).all()
    assert len(recorded["images"]) == round(0.3 * (data.labels == 7).sum()) and (marked[:, :, 1:5, 1:5] == 255).all()
    assert {"train", "audit"} <= set(data.split[data.planted])
    truth = recorded["images"]
    candidates = pd.DataFrame({
        "candidate": [0, 1], "class_name": ["7", "7"], "kind": ["hot spot", "cluster"], "variant": ["gradcam", "gradcam"], "cluster": [-1, 1],
        "window": ["cells y 0–0, x 0–0", ""], "members": [truth[:-1] + ["digits-0000"], truth[:3]],
    })
    score = planted_score(recorded, candidates, pd.DataFrame({"candidate": [0, 1], "confirmed": [True, False]}))
    assert score["found"] and score["confirmed"] and "hot spot" in score["what"]
    assert float(score["recall"]) == round((len(truth) - 1) / len(truth), 2) and float(score["precision"]) == round((len(truth) - 1) / len(truth), 2)
    assert planted_score(None, candidates, None) is None and not planted_score(recorded, candidates.iloc[:0], None)["found"]


def test_a_candidate_without_a_region_is_not_tested_rather_than_not_confirmed():
    """A difference map with nothing positive has no region to paste: the table says it was not tested (a verdict of
    "not confirmed" would claim a test that never ran)."""
    import pandas as pd
    import torch

    from audit.intervention import confirm_candidates, shortcut_table
    from audit.models.checkpoint import ModelMeta, build_model
    from audit.settings import ConfirmSettings
    from audit.strategies import CANDIDATE_COLUMNS

    meta = ModelMeta("resnet10t", {}, ["a", "b"], (3, 32, 32), (0.5,) * 3, (0.5,) * 3, "layer4")
    torch.manual_seed(0)
    images = np.random.default_rng(0).integers(0, 256, (12, 3, 32, 32), dtype=np.uint8)
    labels = np.repeat([0, 1], 6)
    ids = np.array([f"i{n}" for n in range(12)])
    row = dict.fromkeys(CANDIDATE_COLUMNS, np.nan) | {"candidate": 0, "class": 0, "class_name": "a", "kind": "hot spot", "members": ["i0", "i1", "i2"]}
    candidates = pd.DataFrame([row], columns=CANDIDATE_COLUMNS)
    results, _ = confirm_candidates(
        candidates, -np.ones((1, 1, 1)), images, labels, np.ones(12, bool), ids, build_model(meta).eval(), meta,
        GridRegistration.plain((1, 1), (32, 32)), ConfirmSettings(targets=4, members=2), "zero",
    )
    table = shortcut_table(candidates, results)
    assert not table.loc[0, "tested"] and not table.loc[0, "confirmed"] and np.isnan(table.loc[0, "inserted"])


def test_classes_with_a_confirmed_shortcut_lead_the_strategies_section():
    """Confirmed first, then any candidate (a hot spot counts as one), then the most distinct cluster."""
    import pandas as pd

    from audit.report.strategy_section import ranked_classes

    strategies = pd.DataFrame({
        "class": [0, 0, 1, 2, 3], "class_name": ["a", "a", "b", "c", "d"], "cluster": [0, 1, 0, 0, 0], "size": [30, 10, 40, 40, 40],
        "clusters": [2, 2, 1, 1, 1], "distinctness": [0.9, 0.9, 0.2, 0.1, 0.3], "share": [0.75, 0.25, 1.0, 1.0, 1.0],
        "candidate_shortcut": [False, True, False, False, False],
    })
    assert list(ranked_classes(strategies).index) == [0, 3, 1, 2]
    shortcuts = pd.DataFrame({"class": [0, 2, 1], "confirmed": [False, True, False]})  # class 1 and 2 by hot spots
    ranked = ranked_classes(strategies, shortcuts)
    assert list(ranked.index) == [2, 0, 1, 3] and list(ranked["confirmed"]) == [True, False, False, False]
    assert list(ranked["shortcut"]) == [True, True, True, False]
