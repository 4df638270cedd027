"""Trained modular and classic inverses as one Python object (the modular paper's inversion, in the
conventions of :class:`featinv.FeatInvPipeline`):

    from featinv.modular import ModularInversion

    inv = ModularInversion.from_pretrained("data/models/demo/modular/tf_efficientnet_lite0")
    inv.stages                                    # ['stem', 'blocks0-1', ..., 'pred']
    images = inv.invert(photos, stage="head")     # pixels -> x_head -> modular chain -> PIL images
    reps = inv.representations(photos)            # [x_0, x_1, ..., x_n]
    images = inv.invert(representation=reps[3], stage=3, path="classic")

Stage ``j`` (a name, or 1..n; negative counts from the end) is the output of the j-th stage; the
modular path applies inverses j, j-1, ..., 1 in turn, the classic path the full-path inverse
trained from stage j straight to pixels. The model directory's ``meta.json`` carries the modular
params it was trained under, so no params file is needed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from featinv.config import section
from featinv.modular.inverses import chain, classic_path
from featinv.modular.representations import fit_image
from featinv.modular.trained import Trained, load_trained, representations


class ModularInversion:
    """Modular (chained per-stage) and classic (full-path) inverses of a staged forward model."""

    def __init__(self, trained: Trained):
        self.trained = trained
        self.forward = trained.forward

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, weights: str | None = None) -> "ModularInversion":
        """Load inverses saved by ``featinv train-modular`` (the forward model's weights resolved as
        the pipeline resolves them; ``weights``: a local file where they cannot be)."""
        meta_path = Path(model_dir) / "meta.json"
        if not meta_path.exists():
            raise FileNotFoundError(f"{model_dir} holds no trained modular inverses (no meta.json): "
                                    f"run featinv train-modular")
        meta = json.loads(meta_path.read_text())
        if "config" not in meta:
            raise ValueError(f"{model_dir} was trained before inverses recorded their params (no 'config' in "
                             f"meta.json): retrain it (snakemake --cores all {model_dir})")
        return cls(load_trained(section("modular", meta["config"]), model_dir, weights))

    @property
    def stages(self) -> list[str]:
        return list(self.forward.staged.names)

    def stage_index(self, stage: int | str) -> int:
        """1..n for a stage name, a 1-based index or a negative index from the end."""
        n = len(self.stages)
        if isinstance(stage, str):
            if stage not in self.stages:
                raise ValueError(f"unknown stage '{stage}' of {self.forward.name}: one of {', '.join(self.stages)}")
            return self.stages.index(stage) + 1
        j = n + 1 + stage if stage < 0 else stage
        if not 1 <= j <= n:
            raise ValueError(f"stage {stage} out of range: {self.forward.name} has stages 1..{n} ({', '.join(self.stages)})")
        return j

    def pixels(self, images) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] at the forward model's input size, each image fitted as in training."""
        if isinstance(images, Image.Image):
            images = [images]
        if isinstance(images, torch.Tensor):
            return images.float()
        fitted = [np.asarray(fit_image(img.convert("RGB"), self.forward.image_size, self.forward.fit)) for img in images]
        return torch.from_numpy(np.stack(fitted)).permute(0, 3, 1, 2).float() / 255

    @torch.no_grad()
    def representations(self, images) -> list[torch.Tensor]:
        """[x_0 (normalised images), x_1, ..., x_n] of PIL images (or a [0, 1] tensor)."""
        return representations(self.forward, self.pixels(images))

    @torch.no_grad()
    def invert(self, images=None, stage: int | str = -1, representation: torch.Tensor | None = None,
               path: str = "modular", as_pil: bool = True) -> list[Image.Image] | torch.Tensor:
        """Reconstruct images from stage ``stage``'s representation: of ``images`` (computed here) or
        the ``representation`` given. ``path``: ``modular`` (inverses j..1 chained) or ``classic``."""
        if (images is None) == (representation is None):
            raise ValueError("give exactly one of images= or representation=")
        j = self.stage_index(stage)
        x = self.representations(images)[j] if representation is None else representation
        if path == "modular":
            out = chain(self.trained.modular, x, j)
        elif path == "classic":
            out = chain(classic_path(self.trained.classic, j), x, j)
        else:
            raise ValueError(f"path is modular or classic, not '{path}'")
        rgb = self.forward.pixels(out)
        if not as_pil:
            return rgb
        return [Image.fromarray((im.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)) for im in rgb]
