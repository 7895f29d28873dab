"""Where a model's weights live: the device library functions run on when the caller names none."""
from __future__ import annotations

from torch import nn


def device_of(model: nn.Module) -> str:
    """The device of ``model``'s first parameter or buffer (``"cpu"``, ``"cuda:0"``, ...); ``"cpu"`` for a model without
    tensors or a callable that is not a module. Library functions that take a model default to it, so a model moved to a GPU is never fed CPU inputs."""
    if not isinstance(model, nn.Module):  # a plain callable (a test's stand-in model) runs where its inputs are
        return "cpu"
    tensor = next(model.parameters(), None)
    if tensor is None:
        tensor = next(model.buffers(), None)
    return str(tensor.device) if tensor is not None else "cpu"
