"""Fréchet distance between two image sets' features, with pytorch-fid's distance function.

Feature extractors (``metrics.fid.features``):

- ``inception``: pytorch-fid's Inception-v3 pool3 features (2048-d), as in the paper. Weights
  ``pt_inception-2015-12-05-6726825d.pth`` come from a path in params or the torch hub cache
  (``$TORCH_HOME/hub/checkpoints/``); offline without them it raises :class:`WeightsError`.
- a backbone name: that backbone's pooled features (the embedded default, where no Inception
  weights ship). The table names the extractor, so the two are never confused.
"""

from __future__ import annotations

import logging
from pathlib import Path
import numpy as np
import torch

from featinv.backbones.registry import WeightsError, load_weights_file

log = logging.getLogger(__name__)

INCEPTION = "inception"
INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two (N, D) feature sets."""
    from pytorch_fid.fid_score import calculate_frechet_distance

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"need two (N >= 2, D) feature sets of one width, got {a.shape} and {b.shape}")
    if min(len(a), len(b)) < a.shape[1]:
        log.warning("FID on %d images with %d-d features: the covariance is rank-deficient, so the value "
                    "is biased and only comparable at equal N", min(len(a), len(b)), a.shape[1])
    return float(calculate_frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False)))


def inception_weights(path: str | Path | None) -> Path:
    """The FID Inception weights file: ``path`` if given, else the torch hub cache."""
    if path:
        if not Path(path).exists():
            raise WeightsError(f"FID Inception weights file {path} (metrics.fid.inception_weights) does not exist")
        return Path(path)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
    if cached.exists():
        return cached
    from pytorch_fid.inception import FID_WEIGHTS_URL

    raise WeightsError(
        f"FID Inception weights {INCEPTION_FILE} not found at {cached}. Download {FID_WEIGHTS_URL} "
        f"into {cached.parent}/ (or set $TORCH_HOME), or set metrics.fid.inception_weights: /path/to/{INCEPTION_FILE}"
    )


def inception_model(weights: str | Path | None = None, pretrained: bool = True) -> torch.nn.Module:
    """pytorch-fid's InceptionV3 returning pool3 features, its FID weights loaded from a local file
    (never downloaded, nothing unpickled). ``pretrained=False``: random weights (tests)."""
    from pytorch_fid import inception as fid_inception

    net = _fid_blocks(fid_inception, fid_inception._inception_v3(num_classes=1008, aux_logits=False, weights=None))
    if pretrained:
        net.load_state_dict(load_weights_file(inception_weights(weights)))
    # InceptionV3 builds its network with fid_inception_v3(), which would download: hand it ours.
    builder = fid_inception.fid_inception_v3
    fid_inception.fid_inception_v3 = lambda: net
    try:
        model = fid_inception.InceptionV3([fid_inception.InceptionV3.BLOCK_INDEX_BY_DIM[2048]])
    finally:
        fid_inception.fid_inception_v3 = builder
    return model.eval().requires_grad_(False)


def _fid_blocks(fid_inception, net):
    """The FID variant's blocks on a torchvision Inception (as pytorch-fid's ``fid_inception_v3``)."""
    net.Mixed_5b = fid_inception.FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = fid_inception.FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = fid_inception.FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = fid_inception.FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = fid_inception.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = fid_inception.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = fid_inception.FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = fid_inception.FIDInceptionE_1(1280)
    net.Mixed_7c = fid_inception.FIDInceptionE_2(2048)
    return net
