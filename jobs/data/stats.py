"""The two-proportion z-test used to mine significant CTR pairs (pooled variance, two-sided).

Equal to statsmodels' ``proportions_ztest([c1, c2], [n1, n2])`` — checked in the tests:

    p_pool = (c1 + c2) / (n1 + n2)
    z = (c1/n1 - c2/n2) / sqrt(p_pool (1 - p_pool) (1/n1 + 1/n2))
    p = 2 * (1 - Phi(|z|))

Where the pooled variance is 0 (both CTRs 0 or both 1) z and p are NaN: no evidence either way.
"""
from __future__ import annotations

import numpy as np
from scipy.stats import norm


def two_proportion_ztest(c1, n1, c2, n2) -> tuple[np.ndarray, np.ndarray]:
    c1, n1, c2, n2 = (np.asarray(x, dtype=np.float64) for x in (c1, n1, c2, n2))
    with np.errstate(divide="ignore", invalid="ignore"):
        pooled = (c1 + c2) / (n1 + n2)
        var = pooled * (1.0 - pooled) * (1.0 / n1 + 1.0 / n2)
        z = (c1 / n1 - c2 / n2) / np.sqrt(var)
        z = np.where(var > 0, z, np.nan)
        p = 2.0 * norm.sf(np.abs(z))
    return z, p
