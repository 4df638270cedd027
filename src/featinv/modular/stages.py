"""A forward model as an ordered list of named processing stages N_{j-1:j}.

``StagedModel.representations(x)`` gives x_0 = image, x_1, ..., x_n, one per stage output, and
``run(x, start, stop)`` applies stages ``start`` .. ``stop - 1`` (so composing all stages is the
model's own forward). A stage may also expose ``layers(x_{j-1})``, the outputs of its inner layers
(the last is the stage's output or its un-normalised form), for feeding intermediate representations
to inverses trained on other stages (the paper's section 4.7), and ``position``, the position
embedding of its output tokens (token-noise analysis). Adapters:

- timm ViT, with the official code's boundaries: ``bb`` = patch embedding + class token + position
  embedding (+ pre-norm), ``enc`` = the transformer blocks (``vit.blocks(x)``, no final norm),
  ``pred`` = final norm + the classification head. ``enc.layers``: every block's output, un-normalised
  like ``x_bb`` and ``x_enc`` (so each can go to ``bb^-1`` and ``enc^-1`` as it is).
- timm CNN (EfficientNet family, the demo): ``stem`` = first convolution + norm, then the block
  groups given by ``cnn_groups`` (indices into ``model.blocks``), ``head`` = last 1x1 convolution
  + norm, ``pred`` = pooling + classifier. A group's ``layers``: the output of each of its blocks' layers.

- transformers DETR: :func:`featinv.modular.detr.detr_stages`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch
from torch import nn

from featinv.config import NameNotFound

# A forward model (a timm ViT or CNN, transformers' DETR): an nn.Module whose parts (blocks,
# patch_embed, forward_head, ...) torch's stubs type as ``Tensor | Module``: typed by what its
# library documents.
ForwardModel = Any


class Stage(nn.Module):
    """One processing stage: a named callable over the previous stage's representation, and the kind
    of inverse component that mirrors it (see :mod:`featinv.modular.inverses`)."""

    def __init__(self, name: str, fn: Callable[[torch.Tensor], torch.Tensor], modules: Sequence[nn.Module] = (),
                 inverse: str = "conv", layers: Callable[[torch.Tensor], list[torch.Tensor]] | None = None,
                 position: Callable[[], torch.Tensor] | None = None):
        super().__init__()
        self.name = name
        self.fn = fn
        self.inverse = inverse
        self.layers = layers
        self.position = position
        self.parts = nn.ModuleList(modules)  # the forward model's own modules (for parameter counts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


class StagedModel(nn.Module):
    def __init__(self, model: ForwardModel, stages: Sequence[Stage], kind: str):
        super().__init__()
        names = [s.name for s in stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique, got {names}")
        self.model = model
        self.stages = nn.ModuleList(stages)
        self.kind = kind
        self.grid: tuple[int, int] | None = None  # the token grid, where the model fixes it (DETR)
        self.boxes = 0  # trailing box channels of x_pred (DETR: 4, cx, cy, w, h in [0, 1])

    @property
    def stage_list(self) -> list[Stage]:
        """The stages, in order (``stages`` is their ModuleList)."""
        return [stage for stage in self.stages if isinstance(stage, Stage)]

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.stage_list]

    def index(self, name: str) -> int:
        """Position j (1-based) of the stage whose output is x_j."""
        try:
            return self.names.index(name) + 1
        except ValueError:
            raise NameNotFound(f"no stage '{name}' (stages: {', '.join(self.names)})") from None

    def run(self, x: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """x_stop from x_start (stages start+1 .. stop)."""
        for stage in self.stage_list[start:stop]:
            x = stage(x)
        return x

    def representations(self, x: torch.Tensor) -> list[torch.Tensor]:
        """[x_0 (the input), x_1, ..., x_n]."""
        out = [x]
        for stage in self.stage_list:
            out.append(stage(out[-1]))
        return out


def vit_stages(model: ForwardModel) -> StagedModel:
    """A timm VisionTransformer as bb -> enc -> pred."""
    def bb(x):
        return model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(x))))

    def enc(x):
        return model.blocks(x)

    def pred(x):
        return model.forward_head(model.norm(x))

    def bb_position():  # (T, D) for every output token; prefix tokens without one get zeros
        pos = model.pos_embed[0]
        if getattr(model, "no_embed_class", False) and model.num_prefix_tokens:
            pos = torch.cat([pos.new_zeros(model.num_prefix_tokens, pos.shape[-1]), pos])
        return pos

    stages = [Stage("bb", bb, [model.patch_embed, model.norm_pre], inverse="patch", position=bb_position),
              Stage("enc", enc, [model.blocks], inverse="tokens", layers=lambda x: encoder_layers(model, x)),
              Stage("pred", pred, [model.norm, model.head], inverse="mlp")]
    return StagedModel(model, stages, "vit")


def encoder_layers(model: ForwardModel, x_bb: torch.Tensor) -> list[torch.Tensor]:
    """The output of every transformer block of a timm ViT, from the bb representation."""
    out, x = [], x_bb
    for block in model.blocks:
        x = block(x)
        out.append(x)
    return out


def cnn_stages(model: ForwardModel, groups: Sequence[Sequence[int]]) -> StagedModel:
    """A timm EfficientNet-style CNN as stem -> block groups -> head -> pred. ``groups`` partition
    ``range(len(model.blocks))`` into consecutive runs (e.g. [[0, 1], [2, 3], [4, 5, 6]])."""
    flat = [i for g in groups for i in g]
    if flat != list(range(len(model.blocks))):
        raise ValueError(f"groups must split blocks 0..{len(model.blocks) - 1} into consecutive runs, got {groups}")
    stages = [Stage("stem", lambda x: model.bn1(model.conv_stem(x)), [model.conv_stem, model.bn1])]
    for k, group in enumerate(groups, 1):
        seq = nn.Sequential(*[model.blocks[i] for i in group])
        stages.append(Stage(f"blocks{k}", seq, [seq], layers=partial(_layer_outputs, seq)))
    stages.append(Stage("head", lambda x: model.bn2(model.conv_head(x)), [model.conv_head, model.bn2]))
    stages.append(Stage("pred", model.forward_head, [model.classifier], inverse="mlp"))
    return StagedModel(model, stages, "cnn")


def _layer_outputs(blocks: nn.Sequential, x: torch.Tensor) -> list[torch.Tensor]:
    """The output of every layer of every block (a block is a Sequential of layers in timm's
    EfficientNet family)."""
    out = []
    for block in blocks:
        for layer in (block if isinstance(block, nn.Sequential) else [block]):
            x = layer(x)
            out.append(x)
    return out
