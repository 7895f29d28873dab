"""Where the explained layer's cells sit in the image: the grid registration used to draw layer maps on pixels.

A layer map's cell (i, j) is centred at image pixel coordinates
(origin_y + i·step_y, origin_x + j·step_x), pixel k spanning [k, k + 1).
Plain bilinear upsampling assumes origin = step / 2 (cell i covers pixels
[i·step, (i + 1)·step)); padding, strides and dilations move a CNN cell's
effective receptive-field centre away from that, by about a cell for the
demo's resnet10t at ``output_stride`` 8, so maps drawn that way sit a cell off
the evidence they point at.

For a CNN the registration is measured once per model and layer: for cells
off the border (at most 4 × 4 of them, spread over the grid), the peak of
|∂(Σ_k A_k,ij)/∂x| summed over a few seeded noise images and over colours,
smoothed by a box of one stride: where an input change moves the cell most.
The step is the stride (input side / grid side) and the origin the mean of
c_i − i·step over those cells. (The gradient's centre of mass was tried
first: the receptive field's tails, cut by the image border, pull it toward
the image centre, 4.3 px on the trained demo model against ≈ 7 px for the
peak, and squares on its centres moved the intended cell in 42 of 49 cases
instead of 49.) For a ViT the patch
tokens are the patches: origin = patch / 2, no offset.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from audit.models.hooks import recorded
from audit.models.placement import device_of
from audit.models.tokens import spatial_map, token_layout


@dataclass(frozen=True)
class GridRegistration:
    """Cell (i, j) of a (h, w) layer grid is centred at (origin[0] + i·step[0], origin[1] + j·step[1]) in pixels."""

    origin: tuple[float, float]
    step: tuple[float, float]

    @classmethod
    def plain(cls, layer_size: tuple[int, int], image_size: tuple[int, int]) -> GridRegistration:
        """The registration plain bilinear upsampling (half-pixel centres) assumes."""
        step = (image_size[0] / layer_size[0], image_size[1] / layer_size[1])
        return cls((step[0] / 2, step[1] / 2), step)

    def offset(self) -> tuple[float, float]:
        """How far (pixels, y and x) the cells' centres lie from the plain registration's."""
        return (self.origin[0] - self.step[0] / 2, self.origin[1] - self.step[1] / 2)

    def attrs(self) -> dict[str, list[float]]:
        """The registration as store attrs."""
        return {"grid_origin": [float(v) for v in self.origin], "grid_step": [float(v) for v in self.step], "grid_offset": [float(v) for v in self.offset()]}

    @classmethod
    def from_attrs(cls, attrs: dict) -> GridRegistration:
        return cls(tuple(attrs["grid_origin"]), tuple(attrs["grid_step"]))

    def _cell_coordinate(self, pixels: int, axis: int) -> np.ndarray:
        """(pixels,) each pixel centre k + ½ along ``axis`` in cell units: (k + ½ − origin) / step (cell i's centre at i)."""
        return (np.arange(pixels) + 0.5 - self.origin[axis]) / self.step[axis]

    def interpolation(self, cells: int, pixels: int, axis: int) -> np.ndarray:
        """(pixels, cells) bilinear weights along one axis: pixel centres k + ½ at cell coordinate (k + ½ − origin) / step, clamped to the grid."""
        position = np.clip(self._cell_coordinate(pixels, axis), 0.0, cells - 1)
        low = np.floor(position).astype(int)
        high = np.minimum(low + 1, cells - 1)
        weight = position - low
        matrix = np.zeros((pixels, cells))
        np.add.at(matrix, (np.arange(pixels), low), 1.0 - weight)
        np.add.at(matrix, (np.arange(pixels), high), weight)
        return matrix

    def upsample(self, maps: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
        """Maps (M, h, w) on the layer grid → (M, H, W) on the image, bilinear between registered cell centres."""
        maps = np.asarray(maps, dtype=np.float32)
        rows = self.interpolation(maps.shape[1], image_size[0], 0).astype(np.float32)
        columns = self.interpolation(maps.shape[2], image_size[1], 1).astype(np.float32)
        return np.einsum("yi,mij,xj->myx", rows, maps, columns, optimize=True)


    def nearest(self, maps: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
        """Maps (M, h, w) on the layer grid → (M, H, W) on the image, each pixel taking the cell whose registered centre
        is nearest (clamped to the grid): each cell reads as one block, for maps of per-cell values."""
        maps = np.asarray(maps)
        rows = [np.clip(np.floor(self._cell_coordinate(pixels, axis) + 0.5), 0, cells - 1).astype(int)
                for axis, (pixels, cells) in enumerate(zip(image_size, maps.shape[1:]))]
        return maps[:, rows[0]][:, :, rows[1]]

    def cell_box(self, row: int, column: int) -> tuple[float, float, float, float]:
        """The pixels (top, left, bottom, right) of cell (``row``, ``column``): its registered centre ± half a step."""
        y, x = self.origin[0] + row * self.step[0], self.origin[1] + column * self.step[1]
        return (y - self.step[0] / 2, x - self.step[1] / 2, y + self.step[0] / 2, x + self.step[1] / 2)


def register_grid(model: nn.Module, layer: str, input_size: tuple[int, int], samples: int = 4, seed: int = 0, per_axis: int = 4) -> GridRegistration:
    """The registration of ``model``'s ``layer`` at input (H, W) ``input_size`` (see the module docstring).

    The model is used in eval mode and left as it was.
    """
    layout = token_layout(model, input_size)
    was_training = model.training
    model.eval()
    try:
        if layout is not None:
            return GridRegistration.plain(layout.grid, input_size)
        x = torch.randn(samples, 3, *input_size, generator=torch.Generator().manual_seed(seed)).to(device_of(model))
        x.requires_grad_(True)
        with recorded(model.get_submodule(layer), {}, "A") as store, torch.enable_grad():
            model(x)
            cells = spatial_map(model, store["A"], input_size).sum(dim=1)  # (n, h, w): Σ_k A_k,ij
            height, width = cells.shape[1:]
            grid_i, grid_j = np.meshgrid(_inner(height, per_axis), _inner(width, per_axis), indexing="ij")
            grid_i, grid_j = grid_i.ravel(), grid_j.ravel()
            grad_outputs = torch.zeros(len(grid_i), *cells.shape, device=cells.device)
            grad_outputs[np.arange(len(grid_i)), :, grid_i, grid_j] = 1.0
            (gradients,) = torch.autograd.grad(cells, x, grad_outputs, is_grads_batched=True)
        step = (input_size[0] / height, input_size[1] / width)
        weight = gradients.abs().sum(dim=(1, 2))[:, None]  # (cells, 1, H, W): over samples and colours
        box = (max(1, round(step[0])), max(1, round(step[1])))
        smoothed = F.avg_pool2d(F.pad(weight, (box[1] // 2, (box[1] - 1) // 2, box[0] // 2, (box[0] - 1) // 2), mode="replicate"), box, stride=1)
        peak = smoothed.flatten(1).argmax(dim=1).cpu().numpy()
        centre_y, centre_x = peak // input_size[1] + 0.5, peak % input_size[1] + 0.5
        origin = (float(np.mean(centre_y - grid_i * step[0])), float(np.mean(centre_x - grid_j * step[1])))
        return GridRegistration(origin, step)
    finally:
        model.train(was_training)


def _inner(size: int, count: int) -> np.ndarray:
    """Up to ``count`` cell indices spread over a grid side of ``size``, off the border (all cells when it has fewer than 4)."""
    inner = np.arange(1, size - 1) if size >= 4 else np.arange(size)
    return np.unique(inner[np.linspace(0, len(inner) - 1, min(count, len(inner))).round().astype(int)])
