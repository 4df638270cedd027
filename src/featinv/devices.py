"""Which torch device a job runs on."""

from __future__ import annotations

import torch


def resolve_device(device: str) -> torch.device:
    """``auto`` = the GPU when there is one, else the CPU; any other name as torch spells it."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
