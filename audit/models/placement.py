"""Where a model's weights live: the device library functions run on when the caller names none."""
from __future__ import annotations

from torch import nn


def device_of(model: nn.Module) -> str:
    """The device of ``model``'s first parameter or buffer (``"cpu"``, ``"cuda:0"``, ...); ``"cpu"`` for a model without
    tensors. Library functions that take a model default to it, so a model moved to a GPU is never fed CPU inputs."""
    tensor = next(model.parameters(), None)
    if tensor is None:
        tensor = next(model.buffers(), None)
    return str(tensor.device) if tensor is not None else "cpu"
