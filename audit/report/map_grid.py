"""The report's map grids: each image's maps from every computed method, with what each column's colours mean."""
from __future__ import annotations

import numpy as np
import xarray as xr

from audit.explain.explainer import ReportColumn
from audit.explain.registry import explainer
from audit.models.registration import GridRegistration
from audit.report import figures
from audit.report.local import LOCAL_MEANING, LOCAL_TITLE, local_column


class MapIndex:
    """Image-resolution maps by (method, reference kind, purpose, image_id, target), the report's map columns, and
    where the layer's cells lie in the image (``registration``, from the stores' attrs; None without)."""

    def __init__(self, saliency: dict[str, xr.Dataset]):
        self._maps = {}
        self.signed = {}
        for method, store in saliency.items():
            image_map = store["image_map"].values.astype(np.float32)
            kinds = [str(r).partition(":")[0] if ":" in str(r) else "" for r in store["reference"].values]
            keys = zip(kinds, store["purpose"].values, store["image_id"].values, store["target"].values)
            for m, (kind, purpose, image_id, target) in enumerate(keys):
                self._maps[(method, kind, str(purpose), str(image_id), int(target))] = image_map[m]
            self.signed[method] = bool(store.attrs.get("signed", 0))
        registered = [store.attrs for store in saliency.values() if "grid_origin" in store.attrs]
        self.registration = GridRegistration.from_attrs(registered[0]) if registered else None  # one model and layer: any store's

    def get(self, method: str, column: ReportColumn, image_id: str, target: int) -> np.ndarray | None:
        return self._maps.get((method, column.kind, column.purpose, image_id, int(target)))

    def columns(self, purpose: str) -> list[tuple[str, ReportColumn]]:
        """(method, column) pairs the report shows for ``purpose``, in the order of the configured methods."""
        return [(method, column) for method in self.signed for column in explainer(method).report if column.purpose == purpose]


def map_grid(
    images, maps: MapIndex, purpose: str, ids: list[str], target: int, image_index: dict, row_labels: list[str], names: dict[str, str],
    local_maps: xr.Dataset | None = None,
) -> dict:
    """A map grid for ``ids`` with the report columns of every computed method, and what each column's colours mean.

    ``names`` fills the titles' and legends' {a} and {b}; with ``local_maps`` a last column shows each image's cell
    distances with the cell where they peak outlined. Returns {"figure": data URI, "legend": [(title, meaning)]}.
    """
    columns = maps.columns(purpose)
    pictures = [images[image_index[i]].values for i in ids]
    rows = [[maps.get(method, column, i, target) for method, column in columns] for i in ids]
    titles = [column.title.format(**names) for _, column in columns]
    signed, relative = [maps.signed[method] for method, _ in columns], [column.relative for _, column in columns]
    legend = [(column.title.format(**names), meaning(column, maps.signed[method]).format(**names)) for method, column in columns]
    boxes = None
    if local_maps is not None:
        local, outlines = local_column(local_maps, ids, pictures[0].shape[1:], maps.registration)
        rows = [row + [m] for row, m in zip(rows, local)]
        boxes = [[None] * len(columns) + [box] for box in outlines]
        titles, signed, relative = titles + [LOCAL_TITLE], signed + [False], relative + [False]
        legend.append((LOCAL_TITLE, LOCAL_MEANING))
    figure = figures.map_grid(pictures, rows, row_labels, titles, signed=signed, relative=relative, boxes=boxes)
    return {"figure": figure, "legend": legend}


def meaning(column: ReportColumn, signed: bool) -> str:
    if column.legend:
        return column.legend
    if signed:
        return "red: evidence for the target, blue: against it (centred at zero)"
    return "bright: the most evidence for the target, dark: none (from zero to the map's maximum)"
