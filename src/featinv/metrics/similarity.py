"""Feature-space similarity and prediction agreement between originals and reconstructions."""

from __future__ import annotations

import numpy as np
import torch


def cosine_per_position(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray, eps: float = 1e-8) -> np.ndarray:
    """Mean over spatial positions ("superpixels") of the cosine between the C-vectors of two
    (N, C, H, W) feature maps at the same position; shape (N,). Not the cosine of the flattened maps:
    every position counts equally, whatever its norm."""
    a = torch.as_tensor(a, dtype=torch.float32)
    b = torch.as_tensor(b, dtype=torch.float32)
    if a.shape != b.shape or a.ndim != 4:
        raise ValueError(f"feature maps must both be (N, C, H, W) of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    cos = torch.nn.functional.cosine_similarity(a, b, dim=1, eps=eps)  # (N, H, W)
    return cos.flatten(1).mean(1).numpy()


def topk_match(reference_top1: np.ndarray, predicted_topk: np.ndarray, k: int) -> np.ndarray:
    """Whether each reference class (N,) is among the first ``k`` of the predicted ranking (N, K >= k)."""
    reference_top1 = np.asarray(reference_top1)
    predicted_topk = np.asarray(predicted_topk)
    if predicted_topk.ndim != 2 or predicted_topk.shape[1] < k:
        raise ValueError(f"need a ranking of at least {k} classes per row, got shape {predicted_topk.shape}")
    return (predicted_topk[:, :k] == reference_top1[:, None]).any(axis=1)
