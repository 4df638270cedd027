"""Mean pairwise MSE between versions of the same images (the modular-inversion paper's colour analysis)."""

from __future__ import annotations

from itertools import combinations

import numpy as np


def pairwise_mse(versions: np.ndarray) -> np.ndarray:
    """For V versions of N images, (V, N, ...) -> (N,): the MSE of each of the V(V-1)/2 pairs of
    versions of one image, averaged over the pairs."""
    versions = np.asarray(versions, dtype=np.float64)
    if versions.ndim < 2 or versions.shape[0] < 2:
        raise ValueError(f"need at least two versions, shape (V, N, ...), got {versions.shape}")
    flat = versions.reshape(versions.shape[0], versions.shape[1], -1)
    pairs = [((flat[i] - flat[j]) ** 2).mean(axis=1) for i, j in combinations(range(len(flat)), 2)]
    return np.mean(pairs, axis=0)
