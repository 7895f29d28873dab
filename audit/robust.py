"""The robust z of a group of scores: how far each lies from the group's median, in the MAD's standard deviations."""
from __future__ import annotations

import numpy as np

MAD_TO_SD = 1.4826
"""MAD → standard deviation for a normal distribution."""
OUTLIER_Z = 3.5
"""The robust z above which a score counts as odd within its group (Iglewicz and Hoaglin's cut-off)."""


def robust_z(values: np.ndarray) -> np.ndarray:
    """(v − median) / (1.4826 · MAD) of values (n,), ignoring NaN (which stay NaN); all NaN when the MAD is 0."""
    values = np.asarray(values, dtype=np.float64)
    if np.isnan(values).all():
        return np.full(values.shape, np.nan)
    median = np.nanmedian(values)
    mad = np.nanmedian(np.abs(values - median)) * MAD_TO_SD
    return (values - median) / mad if mad > 0 else np.full(values.shape, np.nan)
