"""Confirmation of shortcut candidates by intervention on the model (Reveal to Revise's artifact insertion, ClArC).

A candidate found in the maps (a cluster or a hot spot of class c's dataset maps, :mod:`audit.strategies`,
:mod:`audit.hotspots`) is a hypothesis: "the model calls these images c because of what lies *there*". It is
tested on the model:

* **region**: the candidate's difference map (its members' mean share map minus the rest of the class's,
  on the layer grid) drawn on the image through the grid registration, positive part, thresholded at half
  its maximum (:func:`candidate_region`); at most ``REGION_LIMIT`` of the image.
* **insertion**: the region's pixels from a member pasted, at the same place, onto held-out images of other
  classes: the change of p(c) and whether the prediction becomes c. **Control**: the same region's pixels
  from images of class c that are not members, pasted the same way (the class's usual content there).
* **removal**: the region replaced by the metric baseline in the members: the drop of p(c). **Control**: the
  same region mirrored through the image centre (a same-size region elsewhere in the same images).
* each effect is a mean over target images with a percentile-bootstrap 95 % interval, and so is the paired
  difference of the insertion and its control on the same targets (``effect``); the verdict is **confirmed** when
  the insertion effect's interval lies wholly above the control's *and* the lower end of the difference's interval
  is at least ``min_effect`` (0.005 by default: half a point of probability; a tight interval around +0.002 is
  real but immaterial), else **not confirmed**. The floor is low on purpose: a redundant mark (the class is
  recognisable without it) that a model has learnt moves p(class) on other classes' images by only +0.01 to
  +0.03 on the digits (measured), since their own class's evidence dominates; the size of the effect is reported
  beside the verdict.

Cost per candidate: 3 · ``targets`` + 3 · ``members`` forwards (each target unchanged, with the region and with the
control; each member unchanged, without the region and without its mirror): 240 with the defaults. A candidate that
cannot be tested (no region, no member, donor or target left) is marked ``tested`` False, never "not confirmed".
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import xarray as xr
from torch import nn
from tqdm import tqdm

from audit.bootstrap import percentile_interval
from audit.metrics.perturbation import baseline_images, model_logits
from audit.models.checkpoint import ModelMeta
from audit.models.placement import device_of
from audit.models.registration import GridRegistration

REGION_LIMIT = 0.25
"""Largest share of the image a candidate's region may cover: a region larger than that localizes nothing."""


def candidate_region(difference_map: np.ndarray, registration: GridRegistration, image_size: tuple[int, int]) -> np.ndarray:
    """Boolean region (H, W) of a candidate: its layer-grid difference map (h, w) drawn on the image (bilinear
    between registered cell centres), thresholded by :func:`half_maximum_region`."""
    drawn = registration.upsample(np.nan_to_num(np.asarray(difference_map, dtype=np.float32))[None], image_size)[0]
    return half_maximum_region(drawn)


def half_maximum_region(drawn: np.ndarray) -> np.ndarray:
    """Boolean region (H, W) of a map at image resolution (H, W): where it is at least half its maximum; empty when
    the map has no positive value; when that would exceed ``REGION_LIMIT`` of the image, its highest pixels up to
    that share."""
    drawn = np.nan_to_num(np.asarray(drawn, dtype=np.float32))
    peak = float(drawn.max())
    if peak <= 0:
        return np.zeros(drawn.shape, dtype=bool)
    region = drawn >= peak / 2
    limit = int(REGION_LIMIT * region.size)
    if region.sum() > limit:
        region = np.zeros(drawn.shape, dtype=bool)
        region.flat[np.argsort(-drawn, axis=None, kind="stable")[:limit]] = True
    return region


def mirrored(region: np.ndarray) -> np.ndarray:
    """The region (H, W), or each of regions (n, H, W), mirrored through the image centre: the same size elsewhere,
    the removal's control (and the pair test's)."""
    return np.ascontiguousarray(region[..., ::-1, ::-1])


def pasted(targets: np.ndarray, sources: np.ndarray, region: np.ndarray) -> np.ndarray:
    """uint8 images (n, 3, H, W): ``targets`` with the pixels of ``region`` taken from ``sources`` (n, 3, H, W);
    ``region`` is one for all (H, W) or one per image (n, H, W)."""
    return np.where(region[None, None] if region.ndim == 2 else region[:, None], sources, targets)


def class_probability(model: nn.Module, meta: ModelMeta, pixels: np.ndarray, target: int, batch_size: int, device: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """p(target) (n,) and the predicted class (n,) of uint8 images (n, 3, H, W), run on ``device`` (default: the model's)."""
    x = torch.as_tensor(np.ascontiguousarray(pixels), device=device or device_of(model)).float().div_(255.0)
    probabilities = torch.softmax(model_logits(model, meta, x, batch_size), dim=-1)
    return probabilities[:, target].cpu().numpy().astype(np.float64), probabilities.argmax(-1).cpu().numpy()


def removed(pixels: np.ndarray, region: np.ndarray, baseline: str) -> np.ndarray:
    """uint8 images (n, 3, H, W) with ``region`` replaced by the metric baseline (``zero``, ``mean``, ``blur``)."""
    x = torch.as_tensor(pixels).float().div_(255.0)
    replacement = (baseline_images(x, baseline) * 255.0).round().clamp_(0, 255).to(torch.uint8).numpy()
    return np.where(region[None, None], replacement, pixels)


def mean_and_interval(values: np.ndarray, resamples: int, rng: np.random.Generator) -> tuple[float, float, float]:
    """Mean and percentile-bootstrap 95 % interval of ``values`` (n,); NaN for none."""
    values = np.asarray(values, dtype=np.float64)
    if not len(values):
        return float("nan"), float("nan"), float("nan")
    return (float(values.mean()), *percentile_interval(values, rng, resamples))


@dataclass(frozen=True)
class InterventionSample:
    """The images one candidate is tested on (uint8, (n, 3, H, W)): ``members`` (the candidate's images),
    ``donors`` (images of its class that are not members: the insertion's control) and ``targets`` (held-out
    images of other classes)."""

    members: np.ndarray
    donors: np.ndarray
    targets: np.ndarray


@dataclass(frozen=True)
class InterventionOutcome:
    """Per-image effects of one candidate's interventions (the table's intervals come from these).

    Attributes:
        inserted, inserted_control: p(c) after minus before pasting (targets,).
        moved, moved_control: 1 where the prediction became c after pasting (targets,).
        removed, removed_control: p(c) before minus after removing the region / the mirrored region (members,).
        examples: (before, after) uint8 image pairs of the first targets, with p(c) before and after.
    """

    inserted: np.ndarray
    inserted_control: np.ndarray
    moved: np.ndarray
    moved_control: np.ndarray
    removed: np.ndarray
    removed_control: np.ndarray
    examples: list[tuple[np.ndarray, np.ndarray, float, float]]


def intervene(
    model: nn.Module, meta: ModelMeta, sample: InterventionSample, region: np.ndarray, target: int, baseline: str,
    batch_size: int = 64, device: str | None = None, examples: int = 3,
) -> InterventionOutcome:
    """Insertion into ``sample.targets`` (member i mod m pasted onto target i; donor i mod d for the control) and
    removal from ``sample.members`` (region and its mirror image), for class ``target``."""
    count = len(sample.targets)
    sources = sample.members[np.arange(count) % len(sample.members)]
    controls = sample.donors[np.arange(count) % len(sample.donors)]
    before, predicted_before = class_probability(model, meta, sample.targets, target, batch_size, device)
    with_region = pasted(sample.targets, sources, region)
    after, predicted = class_probability(model, meta, with_region, target, batch_size, device)
    after_control, predicted_control = class_probability(model, meta, pasted(sample.targets, controls, region), target, batch_size, device)
    kept, _ = class_probability(model, meta, sample.members, target, batch_size, device)
    without, _ = class_probability(model, meta, removed(sample.members, region, baseline), target, batch_size, device)
    without_elsewhere, _ = class_probability(model, meta, removed(sample.members, mirrored(region), baseline), target, batch_size, device)
    shown = [(sample.targets[i], with_region[i], float(before[i]), float(after[i])) for i in np.argsort(before - after, kind="stable")[:examples]]
    return InterventionOutcome(
        inserted=after - before, inserted_control=after_control - before,
        moved=((predicted == target) & (predicted_before != target)).astype(np.float64),
        moved_control=((predicted_control == target) & (predicted_before != target)).astype(np.float64),
        removed=kept - without, removed_control=kept - without_elsewhere, examples=shown,
    )


def verdict(outcome: InterventionOutcome, resamples: int, seed: int, min_effect: float) -> dict[str, float | bool]:
    """The table row of one candidate's outcome: each effect's mean with its 95 % interval, the paired ``effect``
    (insertion minus its control) with its interval, and ``confirmed`` (module docstring)."""
    effects = {name: getattr(outcome, name) for name in ("inserted", "inserted_control", "moved", "moved_control", "removed", "removed_control")}
    return insertion_verdict(effects, resamples, seed, min_effect)


def insertion_verdict(effects: dict[str, np.ndarray], resamples: int, seed: int, min_effect: float) -> dict[str, float | bool]:
    """Mean and 95 % interval (``name``, ``name_low``, ``name_high``) of each per-image effect in ``effects``, which
    holds at least ``inserted`` and ``inserted_control`` (on the same targets), of their paired difference
    ``effect``, and ``confirmed``: the insertion's interval lies above the control's and the difference's interval
    starts at ``min_effect`` or more."""
    rng = np.random.default_rng(seed)
    row: dict[str, float | bool] = {}
    effects = {**effects, "effect": effects["inserted"] - effects["inserted_control"]}
    for name, values in effects.items():
        row[name], row[f"{name}_low"], row[f"{name}_high"] = mean_and_interval(values, resamples, rng)
    row["confirmed"] = bool(row["inserted_low"] > row["inserted_control_high"] and row["effect_low"] >= min_effect)
    return row


def sample_for(
    candidate_members: np.ndarray, class_index: int, labels: np.ndarray, held_out: np.ndarray, members: int, targets: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image indices (seeded) of one candidate's test: up to ``members`` of its members, as many donors (images of
    its class that are not members) and up to ``targets`` targets (held-out images of other classes; every image of
    another class when none is held out). ``candidate_members``: bool (N,) over the images."""
    rng = np.random.default_rng(seed)
    own = labels == class_index
    others = ~own & held_out if (~own & held_out).any() else ~own

    def pick(mask: np.ndarray, count: int) -> np.ndarray:
        chosen = np.flatnonzero(mask)
        return np.sort(rng.choice(chosen, size=min(count, len(chosen)), replace=False))

    return pick(candidate_members, members), pick(own & ~candidate_members, members), pick(others, targets)


def confirm_candidates(
    candidates: pd.DataFrame, candidate_maps: np.ndarray, images, labels: np.ndarray, held_out: np.ndarray, image_ids: np.ndarray,
    model: nn.Module, meta: ModelMeta, registration: GridRegistration, settings, baseline: str, batch_size: int = 64, device: str | None = None,
):
    """Test every candidate (rows of ``shortcut_candidates.parquet``) by intervention (module docstring).

    ``candidate_maps`` (candidates, h, w): their difference maps. ``images``: the audit's pixels (N, 3, H, W),
    indexable (lazy is fine: only the sampled images are read). ``settings``: :class:`audit.settings.ConfirmSettings`.
    Returns the table (one row per candidate: its ids, region area, each effect's mean and interval, ``confirmed``)
    and the examples: a list of (candidate, before, after, p before, p after).
    """
    size = tuple(images.shape[-2:])
    index = {str(i): n for n, i in enumerate(image_ids)}
    rows, examples = [], []
    for row, difference in tqdm(zip(candidates.to_dict("records"), candidate_maps), total=len(candidates), desc="confirm", unit="candidate"):
        members = np.zeros(len(image_ids), dtype=bool)
        members[[index[i] for i in row["members"] if i in index]] = True
        target = int(row["class"])
        chosen_members, donors, targets = sample_for(members, target, labels, held_out, settings.members, settings.targets, settings.seed + int(row["candidate"]))
        region = candidate_region(difference, registration, size)
        tested = bool(region.any() and len(chosen_members) and len(donors) and len(targets))
        result = {
            "candidate": int(row["candidate"]), "region_share": float(region.mean()), "members_tested": len(chosen_members),
            "targets_tested": len(targets), "tested": tested,
        }
        if tested:
            sample = InterventionSample(np.asarray(images[chosen_members]), np.asarray(images[donors]), np.asarray(images[targets]))
            outcome = intervene(model, meta, sample, region, target, baseline, batch_size, device)
            result.update(verdict(outcome, settings.bootstrap, settings.seed, settings.min_effect))
            examples += [(int(row["candidate"]), *example) for example in outcome.examples]
        else:
            result["confirmed"] = False
        rows.append(result)
    return pd.DataFrame(rows), examples


def example_store(examples: list[tuple[int, np.ndarray, np.ndarray, float, float]], side: tuple[int, int, int]) -> xr.Dataset:
    """``shortcut_examples.zarr`` from :func:`confirm_candidates`' examples: ``before``, ``after`` (example, channel, y,
    x) uint8, ``p_before``, ``p_after`` (example,) and coordinate ``candidate``. ``side``: an image's (3, H, W)."""
    def stacked(n: int) -> np.ndarray:
        return np.stack([e[n] for e in examples]) if examples else np.zeros((0, *side), np.uint8)

    return xr.Dataset(
        {
            "before": (("example", "channel", "y", "x"), stacked(1)),
            "after": (("example", "channel", "y", "x"), stacked(2)),
            "p_before": ("example", np.array([e[3] for e in examples], np.float64)),
            "p_after": ("example", np.array([e[4] for e in examples], np.float64)),
        },
        coords={"candidate": ("example", np.array([e[0] for e in examples], np.int64))},
    )


SHORTCUT_COLUMNS = [
    "candidate", "class", "class_name", "kind", "variant", "cluster", "window", "size", "share", "strength", "region_share", "members_tested",
    "targets_tested", "inserted", "inserted_low", "inserted_high", "inserted_control", "inserted_control_low", "inserted_control_high",
    "moved", "moved_low", "moved_high", "moved_control", "moved_control_low", "moved_control_high",
    "removed", "removed_low", "removed_high", "removed_control", "removed_control_low", "removed_control_high", "effect", "effect_low", "effect_high",
    "tested", "confirmed",
]


def shortcut_table(candidates: pd.DataFrame, results: pd.DataFrame) -> pd.DataFrame:
    """``shortcuts.parquet``: each candidate's description joined with its test (``SHORTCUT_COLUMNS``), confirmed
    ones first, then by the insertion effect."""
    if "candidate" not in results:  # no candidate was tested
        results = results.assign(candidate=pd.Series(dtype="int64"))
    table = candidates.drop(columns=["members", "split_p", "ratio", "even"]).merge(results, on="candidate", how="left")
    table = table.reindex(columns=SHORTCUT_COLUMNS)
    table["confirmed"] = table["confirmed"].fillna(False).astype(bool)
    table["tested"] = table["tested"].fillna(False).astype(bool)
    return confirmed_first(table)


def confirmed_first(table: pd.DataFrame) -> pd.DataFrame:
    """Shortcut rows (``SHORTCUT_COLUMNS``), confirmed ones first, then by the insertion effect, then by candidate."""
    return table.sort_values(["confirmed", "inserted", "candidate"], ascending=[False, False, True], na_position="last", kind="stable").reset_index(drop=True)
