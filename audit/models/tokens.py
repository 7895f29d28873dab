"""Vision transformers' tokens as spatial maps.

A ViT block outputs tokens (B, N, D): ``num_prefix_tokens`` CLS and register
tokens, then the patch tokens in row-major order on the model's patch grid
(h, w), which need not be square. Explaining a ViT layer means viewing the
patch tokens as a map (B, D, h, w).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class TokenLayout:
    """How a ViT block's tokens (B, N, D) map to a spatial grid: ``prefix`` leading tokens, then ``grid`` (h, w) patches."""

    prefix: int
    grid: tuple[int, int]

    def to_spatial(self, tokens: torch.Tensor) -> torch.Tensor:
        """Patch tokens (B, N, D) → map (B, D, h, w)."""
        patches = tokens[:, self.prefix :]
        return patches.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *self.grid)


def token_layout(model: nn.Module, input_size: tuple[int, int]) -> TokenLayout | None:
    """The token layout of a timm ViT at ``input_size`` (H, W); None for models without a patch embedding."""
    patch_embed = getattr(model, "patch_embed", None)
    if patch_embed is None or not hasattr(model, "num_prefix_tokens"):
        return None
    if hasattr(patch_embed, "dynamic_feat_size"):
        grid = tuple(int(v) for v in patch_embed.dynamic_feat_size(input_size))
    else:
        grid = tuple(int(v) for v in patch_embed.grid_size)
    return TokenLayout(int(model.num_prefix_tokens), grid)


def as_map(output: torch.Tensor, layout: TokenLayout | None) -> torch.Tensor:
    """A layer's output as a map (B, K, h, w): ViT tokens (B, N, D) laid on ``layout``'s grid, CNN maps as they are."""
    if layout is not None and output.ndim == 3:
        return layout.to_spatial(output)
    if output.ndim != 4:
        raise ValueError(f"the explained layer outputs shape {tuple(output.shape)}; a (B, K, h, w) map or ViT tokens (B, N, D) are needed")
    return output


def spatial_map(model: nn.Module, output: torch.Tensor, input_size: tuple[int, int]) -> torch.Tensor:
    """A layer's output as a map (B, K, h, w), with the token layout of ``model`` at ``input_size`` (H, W)."""
    return as_map(output, token_layout(model, input_size) if output.ndim == 3 else None)
