"""Training inverse components: modular (eq. 1: each inverse on its own stage's pairs x_j -> x_{j-1})
and the classic baseline (Dosovitskiy & Brox: for every stage j a separate full-path inverse, trained
end to end on image MSE from x_j).

Both read cached representations [x_0, ..., x_n] (tensors, or a representation store's rows, with
the batch first), so the forward model never runs per step; batches are drawn from a seeded
generator. The optimisation follows ``Optimisation`` (the official code: Adam, a learning rate per
component, gradients clipped at norm 1, the best weights on validation kept).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypedDict

import torch
from torch import nn
from tqdm import tqdm

from featinv.modular.inverses import build_inverses, chain


@dataclass(frozen=True)
class Optimisation:
    """How components are trained: ``optimizer`` adamw or adam, a learning rate per stage name (else
    the common one), gradient clipping (0 = off) and, every ``val_every`` steps (0 = never), the
    validation loss on ``val`` ([x_0, ..., x_n] of validation images), keeping the best weights."""

    optimizer: str = "adamw"
    lr_by_stage: dict[str, float] = field(default_factory=dict)
    max_grad_norm: float = 0.0
    val_every: int = 0
    val: Sequence[torch.Tensor] | None = None

    def lr(self, stage: str, default: float) -> float:
        return float(self.lr_by_stage.get(stage, default))


class Rows(Protocol):
    """Per-row representations a stage's inverse trains on: a tensor, or rows read from a store
    (``StageRows``, ``OneHotRows``); indexing with row indices gives a tensor."""

    def __len__(self) -> int: ...

    def __getitem__(self, idx: Any, /) -> torch.Tensor: ...


class FitArgs(TypedDict):
    """How ``train_modular`` and ``train_classic`` train, beside what they train."""

    steps: int
    batch_size: int
    lr: float
    seed: int
    progress: bool
    names: Sequence[str]
    optim: Optimisation


def _batches(n: int, batch_size: int, steps: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        yield torch.randint(0, n, (min(batch_size, n),), generator=gen)


def fit(params, loss_of: Callable[[torch.Tensor], torch.Tensor], n: int, steps: int, batch_size: int,
        lr: float, seed: int, desc: str = "", progress: bool = False, optimizer: str = "adamw",
        max_grad_norm: float = 0.0, keep_best: tuple[torch.nn.Module, Callable[[], float], int] | None = None
        ) -> list[float]:
    """``optimizer`` (adamw or adam) on ``loss_of(batch indices)`` for ``steps`` seeded batches of n
    rows; the loss per step. ``params``: a module's parameters, or parameter groups with their own
    learning rates. ``keep_best`` = (module, validation loss, every k steps): the module ends with
    the weights of its best validation loss."""
    optimizers = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam}
    if optimizer not in optimizers:
        raise ValueError(f"modular.optimizer is adamw or adam, not '{optimizer}'")
    opt = optimizers[optimizer](params, lr=lr)
    every = [p for group in opt.param_groups for p in group["params"]]
    losses: list[float] = []
    best: tuple[float, dict[str, Any] | None] = (float("inf"), None)
    for step, idx in enumerate(tqdm(_batches(n, batch_size, steps, seed), total=steps, desc=desc,
                                    disable=not progress), 1):
        loss = loss_of(idx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(every, max_grad_norm)
        opt.step()
        losses.append(loss.item())
        if keep_best is not None and keep_best[2] > 0 and (step % keep_best[2] == 0 or step == steps):
            with torch.no_grad():
                value = float(keep_best[1]())
            if value < best[0]:
                best = (value, copy.deepcopy(keep_best[0].state_dict()))
    if keep_best is not None and best[1] is not None:
        keep_best[0].load_state_dict(best[1])
    return losses


def train_modular(inverses: Sequence[nn.Module] | nn.ModuleList, reps: Sequence[Rows], steps: int, batch_size: int,
                  lr: float, seed: int = 0, progress: bool = False, names: Sequence[str] = (),
                  optim: Optimisation = Optimisation()) -> list[list[float]]:
    """Train inverse j on (x_j -> x_{j-1}) with MSE, every stage independently; the loss per step per
    stage. ``names``: the stages' names (for ``optim.lr_by_stage``)."""
    val = optim.val

    def keep(j, inv):
        if val is None or not optim.val_every:
            return None
        return inv, lambda: nn.functional.mse_loss(inv(val[j]), val[j - 1]).item(), optim.val_every

    def loss_of(j: int, inv: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
        return lambda idx: nn.functional.mse_loss(inv(reps[j][idx]), reps[j - 1][idx])

    return [fit(inv.parameters(), loss_of(j, inv),
                len(reps[0]), steps, batch_size, optim.lr(_name(names, j), lr), seed + j,
                optimizer=optim.optimizer, max_grad_norm=optim.max_grad_norm, keep_best=keep(j, inv))
            for j, inv in enumerate(tqdm(inverses, desc="modular inverses", disable=not progress), 1)]


def _name(names: Sequence[str], j: int) -> str:
    return names[j - 1] if len(names) >= j else ""


def classic_inverses(staged, reps: Sequence[torch.Tensor], **kw) -> nn.ModuleList:
    """For each stage j, a fresh full-path inverse: the same components as the modular ones for
    stages 1..j, chained, trained as one network."""
    return nn.ModuleList(build_inverses(staged, reps, **kw)[:j] for j in range(1, len(reps)))


def train_classic(paths: Sequence[nn.ModuleList] | nn.ModuleList, reps: Sequence[Rows], steps: int, batch_size: int,
                  lr: float, seed: int = 0, progress: bool = False, names: Sequence[str] = (),
                  optim: Optimisation = Optimisation()) -> list[list[float]]:
    """Train full-path inverse j on image MSE: ||chain(x_j) - x_0||^2; each of its components at its
    stage's learning rate."""
    val = optim.val

    def keep(j, path):
        if val is None or not optim.val_every:
            return None
        return path, lambda: nn.functional.mse_loss(chain(path, val[j], j), val[0]).item(), optim.val_every

    def loss_of(j: int, path: nn.ModuleList) -> Callable[[torch.Tensor], torch.Tensor]:
        return lambda idx: nn.functional.mse_loss(chain(path, reps[j][idx], j), reps[0][idx])

    return [fit([{"params": component.parameters(), "lr": optim.lr(_name(names, i), lr)}
                 for i, component in enumerate(path, 1)], loss_of(j, path),
                len(reps[0]), steps, batch_size, lr, seed + j,
                optimizer=optim.optimizer, max_grad_norm=optim.max_grad_norm, keep_best=keep(j, path))
            for j, path in enumerate(tqdm(paths, desc="classic inverses", disable=not progress), 1)]


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
