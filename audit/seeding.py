"""Random draws that do not depend on how work is batched: one CPU generator per key (e.g. seed, stream, row)."""
from __future__ import annotations

import numpy as np

from audit.deferred import deferred

torch = deferred("torch")


def seeded_generator(*key: int) -> "torch.Generator":
    """A CPU torch generator seeded from ``key`` (non-negative ints, e.g. a setting's seed, a stream and a row) through
    NumPy's ``SeedSequence``: distinct keys give independent streams, and a row's draws are the same whatever the
    batch size, the batch it falls in or the device (draw on the CPU, then move)."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([int(k) for k in key]).generate_state(1, dtype=np.uint64)[0]))
