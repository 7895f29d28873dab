"""The report's gallery: every map of every configured method for one subject image, each with its own metrics.

The class and pair grids show each method's headline columns; the gallery shows
all of a subject's maps (every method, ``package-*`` ones included, every
variant and reference), as small overlays drawn like ``images.parquet``'s
(:func:`audit.export.overlay`), grouped by purpose, each captioned with the
method's name, the map's variant and reference, and its deletion and
insertion AUC where the metrics scored it.
"""
from __future__ import annotations

import base64
import io

import numpy as np
import pandas as pd
import xarray as xr
from PIL import Image

from audit.explain.registry import explainer
from audit.export import overlay

TILE = 112  # pixels: the side of a gallery tile
TILE_METRICS = {"deletion_auc": "deletion AUC ↓", "insertion_auc": "insertion AUC ↑"}


def png_data_uri(picture: np.ndarray) -> str:
    """A uint8 (H, W, 3) picture as a PNG data URI, resized to ``TILE`` pixels on its longer side."""
    image = Image.fromarray(picture)
    scale = TILE / max(image.size)
    image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.NEAREST if scale > 1 else Image.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


class Gallery:
    """Tiles of every map, by subject: built once from the saliency stores and the metrics table."""

    def __init__(self, images: xr.DataArray, image_index: dict[str, int], saliency: dict[str, xr.Dataset], metrics: pd.DataFrame, class_names: list[str]):
        self.images, self.image_index, self.class_names = images, image_index, class_names
        self.rows = []
        for method, store in saliency.items():
            coords = {name: store[name].values for name in ("image_id", "purpose", "target", "compare", "variant", "reference")}
            for row in range(store.sizes["map"]):
                self.rows.append({"method": method, "map": row, **{name: values[row] for name, values in coords.items()}})
        self.rows = pd.DataFrame(self.rows, columns=["method", "map", "image_id", "purpose", "target", "compare", "variant", "reference"])
        self.saliency = saliency
        scored = metrics[metrics["metric"].isin(list(TILE_METRICS))] if not metrics.empty else metrics
        self.scores = {(m, int(i), name): v for m, i, name, v in zip(scored.get("method", []), scored.get("map", []), scored.get("metric", []), scored.get("value", []))}

    def tiles(self, image_id: str, purpose: str, target: int, compare: int | None = None) -> list[dict]:
        """The subject's maps for ``purpose`` and ``target`` (and the pair class ``compare``), in method order: {src, title, detail, metrics}."""
        chosen = self.rows[(self.rows["image_id"].astype(str) == image_id) & (self.rows["purpose"] == purpose) & (self.rows["target"] == target)]
        if compare is not None:
            chosen = chosen[chosen["compare"] == compare]
        picture = self.images[self.image_index[image_id]].values
        tiles = []
        for row in chosen.itertuples():
            store = self.saliency[row.method]
            saliency = store["image_map"][row.map].values.astype(np.float32)
            kind = str(row.reference).partition(":")[0]
            relative = any(column.relative and column.kind == kind for column in explainer(row.method).report)
            if relative:
                saliency = saliency - np.nanmean(saliency)  # drawn as in the grids: around its mean (ReportColumn.relative)
            metrics = [f"{label} {self.scores[(row.method, row.map, name)]:.3f}" for name, label in TILE_METRICS.items() if (row.method, row.map, name) in self.scores]
            tiles.append(
                {
                    "src": png_data_uri(overlay(picture, saliency, bool(store.attrs.get("signed", 0)) or relative)),
                    "title": explainer(row.method).display,
                    "detail": str(row.variant).removeprefix(row.method).strip() or self._reference(str(row.reference)),
                    "metrics": "; ".join(metrics),
                }
            )
        return tiles

    def _reference(self, reference: str) -> str:
        """A plan reference (``others:3``) in words, with the class's name."""
        kind, _, index = reference.partition(":")
        if not index.isdigit():
            return reference
        name = self.class_names[int(index)]
        return {"others": f"vs all but {name}", "class": f"vs class {name}", "own-class-loo": f"vs own class {name} without it"}.get(kind, reference)
