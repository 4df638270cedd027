"""The Hugging Face hub's offline switch, read the way huggingface_hub reads it."""

from __future__ import annotations

import os


def offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` says so (1/true/yes/on): load from local files only, never retry."""
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")
