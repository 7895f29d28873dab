"""Box sensitivity (CDAM): does the saliency in a box predict the logit drop when the box is blurred?"""
from __future__ import annotations

import torch


def random_boxes(count: int, sides: list[float], per_side: int, size: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """Boxes (count, len(sides) · per_side, 4) as integer y0, x0, y1, x1, uniformly placed, square of each side × image side."""
    h, w = size
    boxes = []
    for side in sides:
        bh, bw = max(1, round(side * h)), max(1, round(side * w))
        y0 = torch.randint(0, h - bh + 1, (count, per_side), generator=generator)
        x0 = torch.randint(0, w - bw + 1, (count, per_side), generator=generator)
        boxes.append(torch.stack([y0, x0, y0 + bh, x0 + bw], dim=-1))
    return torch.cat(boxes, dim=1)


def box_masks(boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Boolean masks (B, K, H, W) of boxes (B, K, 4) given as y0, x0, y1, x1."""
    ys = torch.arange(size[0], device=boxes.device)[None, None, :, None]
    xs = torch.arange(size[1], device=boxes.device)[None, None, None, :]
    y0, x0, y1, x1 = (boxes[..., i, None, None] for i in range(4))
    return (ys >= y0) & (ys < y1) & (xs >= x0) & (xs < x1)


def pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation along the last dimension; NaN where either side is constant."""
    a = a - a.mean(dim=-1, keepdim=True)
    b = b - b.mean(dim=-1, keepdim=True)
    denominator = (a.square().sum(-1) * b.square().sum(-1)).sqrt()
    return torch.where(denominator > 0, (a * b).sum(-1) / denominator.clamp_min(1e-30), torch.full_like(denominator, float("nan")))
