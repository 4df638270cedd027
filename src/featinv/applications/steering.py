"""FeatInv-Viz (the first paper's Algorithm 1): where in the image a concept lives.

The concept's component is attenuated (paper: to 25%), the original and the attenuated map are
reconstructed with the same n seeds, and the per-pixel Euclidean distance over RGB is taken per seed;
the median over seeds is the concept's map. For display it is normalised by its maximum and
thresholded (paper: 0.33): pixels below are "unaffected".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from featinv.applications.concepts import attenuate

# (feature maps (B, C, h, w), seeds) -> images (B, 3, H, W), the same seed giving the same noise
Generator = Callable[[torch.Tensor, Sequence[int]], torch.Tensor]


def featinv_viz(generate: Generator, components: torch.Tensor, concept: int, seeds: Sequence[int],
                factor: float = 0.25) -> torch.Tensor:
    """(H, W) median over ``seeds`` of ||FeatInv(phi, s) - FeatInv(phi', s)||_RGB, where phi is the sum
    of ``components`` (K, C, h, w) and phi' has component ``concept`` scaled by ``factor``."""
    if not seeds:
        raise ValueError("FeatInv-Viz needs at least one seed")
    phi = components.sum(0)
    steered = attenuate(components, concept, factor)
    n = len(seeds)
    images = generate(torch.stack([phi] * n + [steered] * n), list(seeds) * 2)
    original, modified = images[:n].double(), images[n:].double()
    distance = ((original - modified) ** 2).sum(1).sqrt()  # (n, H, W)
    return distance.median(0).values.float()


def concept_mask(distance: torch.Tensor, threshold: float = 0.33) -> torch.Tensor:
    """Bool (H, W): pixels whose distance, normalised by the maximum, reaches ``threshold``."""
    peak = distance.max()
    if peak <= 0:
        return torch.zeros_like(distance, dtype=torch.bool)
    return distance / peak >= threshold
