"""DiffCAM: data-driven maps of a target against a reference group (no gradients).

With the reference group's mean μ and (shrunk) covariance S, the direction that
maximises the Fisher ratio (wᵀ(z − μ))² / wᵀSw for the target embedding z is
w* = S⁻¹(z − μ). The map is Σ_k w*_k A_k or, centred, Σ_k w*_k (A_k − μ_k),
whose spatial mean is exactly the squared Mahalanobis distance
(z − μ)ᵀ S⁻¹ (z − μ): the centred map decomposes the anomaly score in space.
Maps are signed (no ReLU).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd
from tqdm import tqdm

from audit.explain.explainer import Explainer, ReportColumn, Subject
from audit.explain.weighting import direction_maps
from audit.reference_groups.gaussian import ShrunkGaussian
from audit.reference_groups.leave_one_out import LeaveOneOut
from audit.reference_groups.store import group_from_store, group_precision

if TYPE_CHECKING:
    import xarray as xr

    from audit.settings import ExplainSettings


MAP_DTYPE = np.float32
"""The precision of the weights behind DiffCAM's maps: the product with a group's stored float32 precision S⁻¹
(vs a group) and the last product (leave-one-out). The channel sum runs in float32 anyway. Against float64: at most
1e-6 of the weights' norm at conditions up to 1e6 (tested), 4e-7 of a map's largest magnitude on 512 synthetic
channels, 9e-7 on the tests' trained model; the dataset-map store keeps float16 (5e-4). Anomaly scores keep float64."""


def diffcam_weights(embedding: np.ndarray, group: ShrunkGaussian, dtype: type = np.float64) -> np.ndarray:
    """w* = S⁻¹(z − μ) (M, K) for embeddings ``embedding`` (M, K), by Cholesky solve in ``dtype``."""
    diff = np.atleast_2d(np.asarray(embedding, dtype=np.float64)) - group.mean
    return group.solve(diff.T, dtype).T


def precision_weights(embedding: np.ndarray, mean: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """w* = S⁻¹(z − μ) (M, K) in ``precision``'s dtype for embeddings (M, K), from a stored precision S⁻¹ (K, K):
    one product (S⁻¹ is symmetric, so the rows' product is (z − μ) S⁻¹)."""
    diff = (np.atleast_2d(np.asarray(embedding, dtype=np.float64)) - mean).astype(precision.dtype)
    return diff @ precision


def diffcam_maps(activations: np.ndarray, group: ShrunkGaussian, centre: bool = True) -> np.ndarray:
    """DiffCAM maps (M, h, w) of activations (M, K, h, w) against one reference group.

    The embedding is the spatial mean of the activations, as in the feature store.
    """
    a = np.asarray(activations)
    weights = diffcam_weights(a.reshape(*a.shape[:2], -1).mean(axis=2, dtype=np.float64), group)
    return direction_maps(a, weights, weights @ group.mean if centre else None)


@dataclass(frozen=True)
class DiffCam(Explainer):
    """DiffCAM from stored activations and the reference store: no model, no gradients, no labels.

    Rows of a subject: against all other classes ("why is it c"), and against its
    own class without it (anomaly subjects: "what is odd about this one") or the
    pair class (pair subjects: "why a, not b"). Only "vs all others" has a
    class-swapped counterpart (all classes but the other one).
    """

    needs: frozenset[str] = frozenset()
    signed: bool = True
    explains_head: bool = False
    needs_head: bool = False
    parameters: tuple[str, ...] = ("diffcam_centre",)

    uses_model: ClassVar[bool] = False

    def rows(self, subject: Subject) -> list[dict[str, Any]]:
        base = {**subject.base(), "method": self.name}
        if subject.pair_class is None:
            specific, words = f"own-class-loo:{subject.target}", "vs own class"
        else:
            specific, words = f"class:{subject.pair_class}", "vs pair class"
        return [
            {**base, "variant": f"{self.name} vs all others", "reference": f"others:{subject.target}"},
            {**base, "variant": f"{self.name} {words}", "reference": specific},
        ]

    def swapped(self, row: Mapping[str, Any], other: int) -> dict[str, Any] | None:
        swapped = super().swapped(row, other)
        if swapped is None or not str(row["reference"]).startswith("others:"):
            return None
        return {**swapped, "reference": f"others:{other}"}

    def attrs(self, settings: ExplainSettings) -> dict[str, Any]:
        return {**super().attrs(settings), "covariance": "oas"}

    def stored_directions(self, embedding: np.ndarray, reference: xr.Dataset, rows: pd.DataFrame, settings: ExplainSettings) -> tuple[np.ndarray, np.ndarray]:
        """w* = S⁻¹(z − μ) (M, K) float32 (:data:`MAP_DTYPE`) of each row against its reference group, and the centring
        offset w*·μ (M,) float64 (0 uncentred).

        ``others:<c>`` and ``class:<c>`` name groups of the reference store;
        ``own-class-loo:<c>`` is class c without the image itself, in closed form
        per class (``LeaveOneOut.member_directions``: one eigendecomposition per
        class, not one factorisation per image). A group's weights are one product
        with its stored precision (a Cholesky solve for a store without one).
        """
        class_names = list(reference["class"].values)
        leave_one_out = LeaveOneOut(reference)
        embedding = np.asarray(embedding)  # float64 a group at a time, below
        weights, offsets = np.empty(embedding.shape, MAP_DTYPE), np.zeros(len(rows))
        groups = rows.groupby("reference", sort=False).indices  # name → the rows' positions
        for reference_name, positions in tqdm(groups.items(), desc="diffcam", unit="group"):
            kind, c = reference_name.split(":")
            if kind == "own-class-loo":
                group_weights, centred, _, _ = leave_one_out.member_directions(int(c), embedding[positions], MAP_DTYPE)
            else:
                name = f"{kind}:{class_names[int(c)]}"
                stored = group_precision(reference, name)
                if stored is not None:
                    mean, precision = stored
                    group_weights = precision_weights(embedding[positions], mean, precision)
                else:
                    group = group_from_store(reference, name)
                    mean = group.mean
                    group_weights = diffcam_weights(embedding[positions], group, MAP_DTYPE)
                centred = group_weights @ mean
            weights[positions] = group_weights
            if settings.diffcam_centre:
                offsets[positions] = centred
        return weights, offsets


DIFFCAM = DiffCam(
    "diffcam", "DiffCAM",
    report=(
        ReportColumn(
            "anomaly", "own-class-loo", "DiffCAM vs own class (− its mean)", relative=True,
            legend="where the image departs from its own class: the map's mean is the anomaly score, so it is drawn minus "
            "that mean; red: these cells add more than average to the distance from the class, blue: less",
        ),
        ReportColumn(
            "anomaly", "others", "DiffCAM vs all others",
            legend="red: these cells move the image away from all other classes (towards its own), blue: towards them",
        ),
        ReportColumn("pair", "class", "DiffCAM vs {b}", legend="red: these cells make the image less {b}-like, blue: more {b}-like"),
    ),
)
