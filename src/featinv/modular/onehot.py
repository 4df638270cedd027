"""The one-hot form of a prediction x_pred (the paper's pred_OH^-1 input, section 4.4): the top-1
class as a one-hot vector, with DETR's box coordinates kept."""

from __future__ import annotations

import torch


def one_hot(x_pred: torch.Tensor, boxes: int = 0) -> torch.Tensor:
    """x_pred's class logits as the one-hot vector of their argmax; the last ``boxes`` channels
    (DETR's box coordinates) unchanged."""
    logits = x_pred[..., :x_pred.shape[-1] - boxes]
    hot = torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).to(x_pred.dtype)
    return torch.cat([hot, x_pred[..., logits.shape[-1]:]], dim=-1)


class OneHotRows:
    """Rows of x_pred (a tensor or a representation store's rows), read as :func:`one_hot`."""

    def __init__(self, rows, boxes: int = 0):
        self.rows, self.boxes = rows, boxes

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, idx) -> torch.Tensor:
        return one_hot(self.rows[idx], self.boxes)
