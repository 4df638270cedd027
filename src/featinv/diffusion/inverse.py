"""The deterministic inverse beside FeatInv: a plain decoder from a backbone's feature map to the
image, trained with pixel MSE (the classic inverse of the modular paper, applied to FeatInv's map).

It learns from exactly what a FeatInv ControlNet learns from: the train split's stored maps and the
cached diffusion targets (decoded to pixels by the targets' codec: a reshape for the embedded base,
the VAE at paper scale), one row per cached view (``inverse.train.views``). Its reconstructions of
a split are written as a sample store (one sample per map), so the metrics of Table 1 score them
unchanged (``results/comparison/``).

Network: the map resized (bilinear) to ``resolution / 2^k`` (k = the number of doublings closest to
the map's own upsampling factor), a 3x3 conv to ``hidden``, k stride-2 transposed convs with
GroupNorm + SiLU, a 3x3 conv to RGB in [-1, 1] (tanh).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn
from tqdm import tqdm

from featinv import rowstore
from featinv.cards import write_card
from featinv.config import Inverse, plain
from featinv.devices import resolve_device
from featinv.diffusion.recipes import cached_rows, checkpoint_dir, finish
from featinv.diffusion.train import run
from featinv.plots import to_uint8

META = "featinv.json"
VARIANT = "inverse"  # the sample-store variant of its reconstructions, beside unpooled and pooled


def _groups(channels: int) -> int:
    return math.gcd(channels, 8)


class FeatureDecoder(ModelMixin, ConfigMixin):
    """(B, C, h, w) feature map -> (B, 3, R, R) image in [-1, 1]."""

    @register_to_config
    def __init__(self, in_channels: int, fmap_size: tuple[int, int], resolution: int, hidden: int = 64):
        super().__init__()
        doublings = max(0, round(math.log2(resolution / max(fmap_size))))
        if resolution % (2 ** doublings):
            raise ValueError(f"resolution {resolution} is not divisible by 2^{doublings}")
        layers: list[nn.Module] = [nn.Conv2d(in_channels, hidden, 3, padding=1), nn.GroupNorm(_groups(hidden), hidden),
                                   nn.SiLU()]
        for _ in range(doublings):
            layers += [nn.ConvTranspose2d(hidden, hidden, 4, stride=2, padding=1), nn.GroupNorm(_groups(hidden), hidden),
                       nn.SiLU()]
        layers += [nn.Conv2d(hidden, 3, 3, padding=1), nn.Tanh()]
        self.start = resolution // 2 ** doublings
        self.net = nn.Sequential(*layers)

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        c, (h, w) = self.config.in_channels, self.config.fmap_size
        if fmap.ndim != 4 or tuple(fmap.shape[1:]) != (c, h, w):
            raise ValueError(f"feature map has shape {tuple(fmap.shape)}, this decoder was trained on (B, {c}, {h}, {w})")
        x = F.interpolate(fmap.to(self.dtype), size=(self.start, self.start), mode="bilinear", align_corners=False)
        return self.net(x)


def load_decoder(directory: str | Path) -> tuple[FeatureDecoder, dict[str, Any]]:
    """(decoder, its meta) from a directory :func:`train_inverse` wrote; nothing is unpickled."""
    directory = Path(directory)
    if not (directory / META).exists():
        raise FileNotFoundError(f"{directory} is not a trained deterministic inverse (no {META})")
    return FeatureDecoder.from_pretrained(directory).eval(), json.loads((directory / META).read_text())


def train_inverse(features: str | Path, targets: str | Path, codec, cfg: Inverse, out: str | Path,
                  loss_csv: str | Path, params_hash: str, device: str = "auto", progress: bool = True) -> dict[str, Any]:
    """Train the decoder on the (map, target view) rows of ``features`` and ``targets`` (same keys);
    resumable from its checkpoints; save to ``out`` (diffusers layout, ``featinv.json``, a card).
    ``params_hash``: the job's, recorded in meta, card and ``training.json``."""
    data, attrs, target_attrs = cached_rows(features, targets, "unpooled", cfg.train.views == "none")  # the spatial maps
    fmap_shape = tuple(attrs["fmap_shape"])
    resolution = int(target_attrs["resolution"])
    torch.manual_seed(cfg.train.seed)
    net = FeatureDecoder(fmap_shape[0], fmap_shape[1:], resolution, cfg.hidden)

    def loss_fn(model, batch, gen, n, part):
        with torch.no_grad():
            target = codec.decode(batch["latents"].float())
        return F.mse_loss(model(batch["cond"].float()).float(), target)

    result = run(net, [codec], loss_fn, data, cfg.train, device, checkpoint_dir(out), loss_csv,
                 desc=f"inverse {attrs['backbone']}", progress=progress)
    def save(trained: FeatureDecoder) -> None:
        trained.save_pretrained(out)
        meta = {"backbone": attrs["backbone"], "layer": attrs["layer"], "variant": VARIANT,
                "fmap_shape": list(fmap_shape), "resolution": resolution, "weights_source": attrs["weights_source"],
                "steps": cfg.train.steps, "final_loss": result["final_loss"], "params_hash": params_hash}
        (Path(out) / META).write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
        _card(out, meta, {**result, "params_hash": params_hash},
              {"dataset": attrs.get("dataset"), "split": attrs.get("split"), "rows": data.n}, plain(cfg))

    return finish(result, params_hash, out, save)


def _card(out, meta: dict[str, Any], summary: dict[str, Any], data: dict[str, Any], cfg: dict[str, Any]) -> None:
    seconds = summary.get("total_seconds", summary.get("seconds"))
    front = {"library_name": "diffusers", "license": "other", "tags": ["featinv", "feature-inversion"],
             "featinv": {"kind": "deterministic-inverse", "backbone": meta["backbone"], "layer": meta["layer"],
                         "fmap_shape": meta["fmap_shape"], "resolution": meta["resolution"],
                         "steps": meta["steps"], "final_loss": round(float(meta["final_loss"]), 6),
                         "params_hash": meta["params_hash"]}}
    write_card(out, front, f"Deterministic inverse of {meta['backbone']} ({meta['layer']} map)", [
        ("Model", f"A plain decoder (`featinv.diffusion.inverse.FeatureDecoder`) from the {meta['backbone']} map "
                  f"of layer `{meta['layer']}`, shape {tuple(meta['fmap_shape'])}, to a {meta['resolution']} px "
                  "RGB image, trained with pixel MSE: FeatInv's comparison baseline. Load with "
                  "`featinv.diffusion.inverse.load_decoder(directory)`."),
        ("Training", f"{data['rows']} rows of {data['dataset']}/{data['split']}, {meta['steps']} steps, final loss "
                     f"{float(meta['final_loss']):.5f}, {seconds:.0f} s.\n\n```json\n"
                     + json.dumps(cfg, indent=1) + "\n```"),
    ])


@torch.inference_mode()
def invert_store(model_dir: str | Path, features: str | Path, out: str | Path, batch_size: int = 64,
                 device: str = "auto", progress: bool = True, rows_per_shard: int = 64) -> dict[str, Any]:
    """Reconstruct every map of ``features`` with the decoder in ``model_dir`` into the sample store
    ``out`` (``images`` (N, 1, 3, R, R) uint8, ``keys``), resumable by blocks."""
    decoder, meta = load_decoder(model_dir)
    feats = rowstore.open_complete(features)
    if str(feats.attrs["backbone"]) != meta["backbone"]:
        raise ValueError(f"{features} holds maps of {feats.attrs['backbone']}; {model_dir} inverts {meta['backbone']}")
    keys = list(feats["keys"][:])
    dev = resolve_device(device)
    decoder.to(dev)
    res = int(meta["resolution"])
    attrs = {"model": meta, "features": str(features), "samples_per_map": 1, "resolution": res}
    arrays = {"images": ((1, 3, res, res), "uint8", 0), "keys": ((), "str", None)}
    group, resumed = rowstore.open_or_resume(out, len(keys), arrays, rows_per_shard, rows_per_shard, attrs)
    if not resumed:
        group["keys"][:] = np.array(keys, dtype=object)
    batches = rowstore.pending_batches(group, batch_size)
    writer = rowstore.BlockWriter(group)
    started = time.perf_counter()
    for rows in tqdm(batches, desc=f"invert {meta['backbone']}", unit="batch", disable=not progress, mininterval=2.0):
        fmap = torch.from_numpy(feats["features"].get_orthogonal_selection((np.asarray(rows),)).astype(np.float32))
        images = to_uint8(decoder(fmap.to(dev)).float())
        writer.add(rows, {"images": images.reshape(len(rows), 1, 3, res, res)})
    rowstore.finalize(out)
    return {"n_maps": len(keys), "inverted": sum(len(r) for r in batches), "seconds": time.perf_counter() - started}
