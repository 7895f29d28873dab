"""One forward hook for every place that reads (or replaces) what a module computes: the explained layer's output,
the classifier's input, an attention block's input."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # no torch import here: the Snakefile reads modules that import this one
    import torch
    from torch import nn


@contextmanager
def recorded(
    module: nn.Module, store: dict[str, torch.Tensor], key: str, *, inputs: bool = False,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Iterator[dict[str, torch.Tensor]]:
    """Within the block, each forward of ``module`` puts its output (with ``inputs``, its first input) in ``store``
    under ``key``; yields ``store``. ``transform`` (outputs only) is applied first, and the module's output becomes
    what it returns (e.g. a fresh leaf for gradients, or a replacement). The tensor stays on its device and, unless
    transformed away, in the autograd graph. The hook is removed on leaving the block, whatever happens."""
    if inputs:
        handle = module.register_forward_pre_hook(lambda _module, args: store.__setitem__(key, args[0]))
    else:

        def hook(_module, _inputs, output):
            store[key] = transform(output) if transform is not None else output
            return store[key] if transform is not None else None

        handle = module.register_forward_hook(hook)
    try:
        yield store
    finally:
        handle.remove()
