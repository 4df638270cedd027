"""Means with percentile-bootstrap confidence intervals."""

from __future__ import annotations

from typing import TypedDict

import numpy as np

from featinv.config import Metrics


class Bootstrap(TypedDict, total=False):
    """``summarise``'s interval settings, from params ``metrics``: bootstrap, confidence, seed."""

    n_boot: int
    level: float
    seed: int


def bootstrap_of(metrics: Metrics) -> Bootstrap:
    """The interval settings of a ``metrics`` params section."""
    return {"n_boot": metrics.bootstrap, "level": metrics.confidence, "seed": metrics.seed}


def bootstrap_ci(values: np.ndarray, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (resampling items with replacement)."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or len(values) == 0:
        raise ValueError(f"need a non-empty 1-d array of per-item values, got shape {values.shape}")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(n_boot, len(values)))
    means = values[idx].mean(axis=1)
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return float(lo), float(hi)


def summarise(values: np.ndarray, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> dict[str, float]:
    """{mean, ci_low, ci_high} of per-item values."""
    lo, hi = bootstrap_ci(values, n_boot, level, seed)
    return {"mean": float(np.mean(values)), "ci_low": lo, "ci_high": hi}
