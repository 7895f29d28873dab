"""The insertion test of the report's "why a, not b": is the difference the contrastive maps show really there?

A report pair direction (a, b) shows a few a-images (the most b-like ones, :mod:`audit.explain.plan`) with maps that
contrast a with b (Finer-CAM against b, DiffCAM against class b). Each such map claims "what makes this image a and
not b lies *here*". The test, per method and direction:

* **region**: each subject's map (at image resolution, positive part) thresholded at half its maximum
  (:func:`audit.intervention.half_maximum_region`, at most a quarter of the image);
* **insertion**: the region's pixels of subject j pasted at the same place onto held-out b-images (target i gets
  subject i mod s): the change of p(a) and the share of targets whose prediction becomes a;
* **control**: the same-size region mirrored through the image centre, from the same subject, pasted at its place
  (a-content of the same area from elsewhere: where the map points must matter more than how much is pasted);
* **verdict** as the shortcut test's (:func:`audit.intervention.insertion_verdict`): **confirmed** when the
  insertion's 95 % interval of Δp(a) lies above the control's and the paired difference's starts at ``min_effect``.

Cost per direction and method: 3 · ``targets`` forwards (the targets unchanged, with the region, with the control).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr
from torch import nn
from tqdm import tqdm

from audit.intervention import class_probability, half_maximum_region, insertion_verdict, mirrored, pasted
from audit.models.checkpoint import ModelMeta

PAIR_TEST_COLUMNS = [
    "class_a", "class_b", "name_a", "name_b", "method", "variant", "subjects", "region_share", "targets_tested",
    "inserted", "inserted_low", "inserted_high", "inserted_control", "inserted_control_low", "inserted_control_high",
    "moved", "moved_low", "moved_high", "moved_control", "moved_control_low", "moved_control_high",
    "effect", "effect_low", "effect_high", "tested", "confirmed",
]


def contrastive_pair_rows(store: xr.Dataset) -> pd.DataFrame:
    """The rows of a saliency store that explain a pair subject *against its pair class* b (the row's ``compare``):
    Finer-CAM rows whose only contrast is b, DiffCAM rows whose reference is class b. Columns: ``map`` (position in
    the store), ``image_id``, ``class_a`` (the row's target), ``class_b``, ``variant``."""
    rows = pd.DataFrame(
        {
            "map": np.arange(store.sizes["map"]), "image_id": store["image_id"].values.astype(str), "purpose": store["purpose"].values.astype(str),
            "class_a": store["target"].values.astype(np.int64), "class_b": store["compare"].values.astype(np.int64),
            "contrasts": store["contrasts"].values.astype(str), "reference": store["reference"].values.astype(str), "variant": store["variant"].values.astype(str),
        }
    )
    against_b = (rows["contrasts"] == rows["class_b"].astype(str)) | (rows["reference"] == "class:" + rows["class_b"].astype(str))
    return rows.loc[(rows["purpose"] == "pair") & against_b, ["map", "image_id", "class_a", "class_b", "variant"]].reset_index(drop=True)


def pair_insertion(
    model: nn.Module, meta: ModelMeta, subjects: np.ndarray, regions: np.ndarray, targets: np.ndarray, class_a: int,
    batch_size: int = 64, device: str | None = None,
) -> dict[str, np.ndarray]:
    """Per-target effects of pasting subject i mod s's region (and, for the control, its mirror image) onto each of
    ``targets``: ``inserted`` / ``inserted_control`` (change of p(a)) and ``moved`` / ``moved_control`` (1 where the
    prediction becomes a). ``subjects`` uint8 (s, 3, H, W), ``regions`` bool (s, H, W), ``targets`` uint8 (n, 3, H, W)."""
    which = np.arange(len(targets)) % len(subjects)
    sources, chosen = subjects[which], regions[which]
    before, predicted_before = class_probability(model, meta, targets, class_a, batch_size, device)
    outcome: dict[str, np.ndarray] = {}
    for name, region in (("inserted", chosen), ("inserted_control", mirrored(chosen))):
        after, predicted = class_probability(model, meta, pasted(targets, sources, region), class_a, batch_size, device)
        outcome[name] = after - before
        outcome[name.replace("inserted", "moved")] = ((predicted == class_a) & (predicted_before != class_a)).astype(np.float64)
    return outcome


def pair_tests(
    saliency: dict[str, xr.Dataset], images, labels: np.ndarray, held_out: np.ndarray, image_ids: np.ndarray, class_names: list[str],
    model: nn.Module, meta: ModelMeta, settings, batch_size: int = 64, device: str | None = None,
) -> pd.DataFrame:
    """Test every pair direction's contrastive maps by insertion (module docstring): one row per method and direction
    (``PAIR_TEST_COLUMNS``). ``images``: the audit's pixels (N, 3, H, W), indexable (only the sampled images are
    read); ``settings``: :class:`audit.settings.ConfirmSettings` (``targets``, ``bootstrap``, ``seed``, ``min_effect``).
    A direction without a region or without held-out b-images is ``tested`` False."""
    index = {str(i): n for n, i in enumerate(image_ids)}
    jobs = [(method, key, group) for method, store in saliency.items() for key, group in contrastive_pair_rows(store).groupby(["class_a", "class_b"], sort=True)]
    rows = []
    for method, (a, b), group in tqdm(jobs, desc="pair tests", unit="direction"):
        maps = saliency[method]["image_map"].values[group["map"].to_numpy()]
        regions = np.stack([half_maximum_region(m) for m in maps])
        kept = regions.any(axis=(1, 2))
        rng = np.random.default_rng([settings.seed, int(a), int(b)])
        pool = np.flatnonzero((labels == b) & held_out) if ((labels == b) & held_out).any() else np.flatnonzero(labels == b)
        targets = np.sort(rng.choice(pool, size=min(settings.targets, len(pool)), replace=False))
        row = {
            "class_a": int(a), "class_b": int(b), "name_a": class_names[a], "name_b": class_names[b], "method": method,
            "variant": str(group["variant"].iloc[0]), "subjects": int(kept.sum()), "region_share": float(regions[kept].mean()) if kept.any() else 0.0,
            "targets_tested": len(targets), "tested": bool(kept.any() and len(targets)),
        }
        if row["tested"]:
            subjects = np.asarray(images[np.array([index[i] for i in group["image_id"][kept]])])
            outcome = pair_insertion(model, meta, subjects, regions[kept], np.asarray(images[targets]), int(a), batch_size, device)
            row.update(insertion_verdict(outcome, settings.bootstrap, settings.seed, settings.min_effect))
        else:
            row["confirmed"] = False
        rows.append(row)
    table = pd.DataFrame(rows).reindex(columns=PAIR_TEST_COLUMNS)
    return table.astype({"tested": bool, "confirmed": bool}) if len(table) else table
