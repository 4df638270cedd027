"""Training inverse components: modular (eq. 1: each inverse on its own stage's pairs x_j -> x_{j-1})
and the classic baseline (Dosovitskiy & Brox: for every stage j a separate full-path inverse, trained
end to end on image MSE from x_j).

Both read cached representations [x_0, ..., x_n] (tensors with the batch first), so the forward model
never runs per step; batches are drawn from a seeded generator.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn
from tqdm import tqdm

from featinv.modular.inverses import build_inverses, chain


def _batches(n: int, batch_size: int, steps: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        yield torch.randint(0, n, (min(batch_size, n),), generator=gen)


def fit(params, loss_of: Callable[[torch.Tensor], torch.Tensor], n: int, steps: int, batch_size: int,
        lr: float, seed: int, desc: str = "", progress: bool = False) -> list[float]:
    """AdamW on ``loss_of(batch indices)`` for ``steps`` seeded batches of n rows; the loss per step.
    ``params``: a module's parameters, or parameter groups with their own learning rates."""
    opt = torch.optim.AdamW(params, lr=lr)
    losses = []
    for idx in tqdm(_batches(n, batch_size, steps, seed), total=steps, desc=desc, disable=not progress):
        loss = loss_of(idx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def train_modular(inverses: Sequence[nn.Module], reps: Sequence[torch.Tensor], steps: int, batch_size: int,
                  lr: float, seed: int = 0, progress: bool = False) -> list[list[float]]:
    """Train inverse j on (x_j -> x_{j-1}) with MSE, every stage independently; the loss per step per stage."""
    return [fit(inv.parameters(),
                lambda idx, j=j, inv=inv: nn.functional.mse_loss(inv(reps[j][idx]), reps[j - 1][idx]),
                len(reps[0]), steps, batch_size, lr, seed + j)
            for j, inv in enumerate(tqdm(inverses, desc="modular inverses", disable=not progress), 1)]


def classic_inverses(staged, reps: Sequence[torch.Tensor], **kw) -> nn.ModuleList:
    """For each stage j, a fresh full-path inverse: the same components as the modular ones for
    stages 1..j, chained, trained as one network."""
    return nn.ModuleList(build_inverses(staged, reps, **kw)[:j] for j in range(1, len(reps)))


def train_classic(paths: Sequence[nn.ModuleList], reps: Sequence[torch.Tensor], steps: int, batch_size: int,
                  lr: float, seed: int = 0, progress: bool = False) -> list[list[float]]:
    """Train full-path inverse j on image MSE: ||chain(x_j) - x_0||^2."""
    return [fit(path.parameters(),
                lambda idx, j=j, path=path: nn.functional.mse_loss(chain(path, reps[j][idx], j), reps[0][idx]),
                len(reps[0]), steps, batch_size, lr, seed + j)
            for j, path in enumerate(tqdm(paths, desc="classic inverses", disable=not progress), 1)]


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
