"""Batches of a split's images, decoded and preprocessed by DataLoader workers, in row order."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from featinv.data.shards import IndexEntry, read_image


class ShardImages(Dataset):
    """(preprocessed image, row) for each row of a split's shard index."""

    def __init__(self, index: list[IndexEntry], transform):
        self.index, self.transform = index, transform

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, row: int):
        return self.transform(read_image(self.index[row])), row


def shard_batches(index: list[IndexEntry], transform, batches: list[list[int]], num_workers: int,
                  device: torch.device, desc: str, progress: bool = True):
    """(images on ``device``, rows) for each batch of rows, decoded and transformed by DataLoader workers."""
    loader = DataLoader(ShardImages(index, transform), batch_sampler=batches, num_workers=num_workers,
                        pin_memory=device.type == "cuda", prefetch_factor=4 if num_workers else None)
    for images, rows in tqdm(loader, total=len(batches), desc=desc, unit="batch", disable=not progress,
                             mininterval=2.0):
        yield images.to(device, non_blocking=True), rows.tolist()
