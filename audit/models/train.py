"""Training a classifier on the demo data (CPU-friendly, deterministic seed)."""
from __future__ import annotations

import logging
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from audit.data.dataset import ImageDataset
from audit.models.layers import layer_output_shape
from audit.models.imported import resolve_layer
from audit.models.checkpoint import ModelMeta, build_model
from audit.models.placement import device_of
from audit.models.preprocess import to_model_input
from audit.settings import ModelSettings, TrainSettings

log = logging.getLogger(__name__)


def train_classifier(
    model: nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    settings: TrainSettings,
    device: str | None = None,
) -> list[float]:
    """Train ``model`` (already on ``device``) in place with AdamW and a one-cycle schedule.

    Args:
        images: uint8 (N, 3, H, W). labels: int (N,).
        device: where the batches go (the images stay in host memory; each batch is moved).
    Returns:
        the mean training loss of each epoch.
    """
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    x_all = to_model_input(images, mean, std)
    y_all = torch.as_tensor(labels, dtype=torch.long)
    device = device or device_of(model)
    steps_per_epoch = int(np.ceil(len(y_all) / settings.batch_size))
    optimiser = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=settings.lr, total_steps=settings.epochs * steps_per_epoch)
    losses = []
    model.train()
    for epoch in tqdm(range(settings.epochs), desc="train", unit="epoch"):
        order = rng.permutation(len(y_all))
        total = 0.0
        for start in range(0, len(order), settings.batch_size):
            idx = torch.as_tensor(order[start : start + settings.batch_size])
            x = _random_shift(x_all[idx], settings.shift, rng).to(device)
            loss = F.cross_entropy(model(x), y_all[idx].to(device))
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            total += loss.item() * len(idx)
        losses.append(total / len(order))
        log.info("epoch %d loss %.4f", epoch + 1, losses[-1])
    model.eval()
    return losses


@torch.no_grad()
def accuracy(model: nn.Module, images: np.ndarray, labels: np.ndarray, mean, std, batch_size: int = 256, device: str | None = None) -> float:
    """Top-1 accuracy of ``model`` (on ``device``) on uint8 ``images`` (N, 3, H, W)."""
    model.eval()
    device = device or device_of(model)
    correct = 0
    for start in range(0, len(labels), batch_size):
        x = to_model_input(images[start : start + batch_size], mean, std).to(device)
        correct += (model(x).argmax(1).cpu().numpy() == labels[start : start + batch_size]).sum()
    return float(correct / max(len(labels), 1))


def _random_shift(x: torch.Tensor, shift: int, rng: np.random.Generator) -> torch.Tensor:
    """Translate the batch by a random offset in [-shift, shift] (edge-replicated)."""
    if shift <= 0:
        return x
    dy, dx = rng.integers(-shift, shift + 1, size=2)
    padded = F.pad(x, (shift, shift, shift, shift), mode="replicate")
    h, w = x.shape[-2:]
    return padded[..., shift + dy : shift + dy + h, shift + dx : shift + dx + w]


def fit_model(dataset: ImageDataset, settings: ModelSettings, device: str = "cpu") -> tuple[nn.Module, ModelMeta]:
    """Build timm model ``settings.name`` for ``dataset``, train it on ``device`` on the ``train`` split
    (``settings.train``), score it on the rest; the model is returned on the CPU.

    Normalisation is ``settings.mean``/``std``, else the model's pretrained config. The metadata's
    ``metrics`` get ``train_accuracy``, ``audit_accuracy`` (held-out split) and
    ``final_loss``; the training time goes to the log only, so that the same
    config and seed give a bit-identical checkpoint on the same machine.
    """
    layer = settings.layer
    meta = ModelMeta(
        name=settings.name,
        kwargs=dict(settings.kwargs),
        class_names=list(dataset.class_names),
        input_size=tuple(dataset.images.shape[1:]),
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
        layer=layer if layer != "auto" else "",
    )
    torch.manual_seed(settings.train.seed)  # the initial weights: the same seed gives the same checkpoint
    model = build_model(meta)
    meta.layer = resolve_layer(model, layer)
    meta.mean = tuple(float(v) for v in (settings.mean or model.pretrained_cfg.get("mean", (0.5, 0.5, 0.5))))
    meta.std = tuple(float(v) for v in (settings.std or model.pretrained_cfg.get("std", (0.5, 0.5, 0.5))))
    shape = layer_output_shape(model, meta)
    log.info("explained layer %s output (channels, height, width) = %s", meta.layer, shape)
    train = dataset.split == "train"
    held_out = ~train
    if not train.any() or not held_out.any():
        raise ValueError(
            f"training needs images in the 'train' split and held-out images, got {train.sum()} and {held_out.sum()}: "
            "give the manifest's split column both train and held-out rows (or leave it out: the workflow then splits by "
            "dataset.audit_fraction), lay an ImageFolder tree out as train/ and val/ folders, or set model.checkpoint to audit your own model"
        )
    started = time.perf_counter()
    model.to(device)
    losses = train_classifier(model, dataset.images[train], dataset.labels[train], meta.mean, meta.std, settings.train, device)
    meta.metrics = {
        "final_loss": round(losses[-1], 4),
        "train_accuracy": round(accuracy(model, dataset.images[train], dataset.labels[train], meta.mean, meta.std, device=device), 4),
        "audit_accuracy": round(accuracy(model, dataset.images[held_out], dataset.labels[held_out], meta.mean, meta.std, device=device), 4),
    }
    log.info("training figures %s after %.1f s on %s", meta.metrics, time.perf_counter() - started, device)
    return model.cpu(), meta
