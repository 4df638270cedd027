"""Concept banks: complete decompositions of a feature map into concept components.

A concept bank has one method, ``decompose(fmap) -> components``: for a (C, H, W) map, a
(K, C, H, W) stack whose sum over K is the map itself. Any discovery method that can say that
slots into FeatInv-Viz (:mod:`featinv.applications.steering`).

:class:`SubspaceConcepts` is multi-dimensional concept discovery (MCD, Vielhaben et al. 2023):
the spatial feature vectors of one class's images, unit-normalised, are clustered
(k-means, or sparse subspace clustering); each cluster's concept is the linear subspace spanned by its leading principal
directions (uncentred, so subspaces pass through the origin; the dimension is the smallest that
explains ``variance`` of the cluster's energy); the orthogonal complement of their union is one more
concept. Coefficients solve against the concatenated bases, so the components sum back to the map
exactly.
"""

from __future__ import annotations

import torch


def kmeans(x: torch.Tensor, k: int, iters: int = 50, seed: int = 0) -> torch.Tensor:
    """Cluster index of each row of ``x`` (N, C): Lloyd's algorithm from a k-means++ start."""
    if not 1 <= k <= len(x):
        raise ValueError(f"k-means needs 1 <= k <= {len(x)} points, got k={k}")
    gen = torch.Generator().manual_seed(seed)
    centres = [x[torch.randint(len(x), (1,), generator=gen)].squeeze(0)]
    for _ in range(1, k):
        d2 = torch.cdist(x, torch.stack(centres)).min(1).values ** 2
        probs = d2 / d2.sum() if d2.sum() > 0 else torch.full_like(d2, 1 / len(d2))
        centres.append(x[torch.multinomial(probs, 1, generator=gen)].squeeze(0))
    c = torch.stack(centres)
    labels = torch.cdist(x, c).argmin(1)
    for _ in range(iters):
        new = torch.stack([x[labels == j].mean(0) if (labels == j).any() else c[j] for j in range(k)])
        new_labels = torch.cdist(x, new).argmin(1)
        c = new
        if torch.equal(new_labels, labels):
            break
        labels = new_labels
    return labels


def sparse_subspace_clustering(x: torch.Tensor, k: int, lam: float = 0.05, iters: int = 300,
                               seed: int = 0) -> torch.Tensor:
    """Cluster index of each row of ``x`` (N, C) by sparse subspace clustering (Elhamifar & Vidal):
    every point as a sparse combination of the others, min ||c||_1 + ||x_i - X c||^2 / (2 lam) with
    c_i = 0 (ISTA), affinity |C| + |C|^T, spectral clustering (normalised Laplacian, k-means on its
    leading eigenvectors). Points of one subspace select each other, so clusters follow subspaces
    rather than distances."""
    x = x.double()
    n = len(x)
    if not 1 <= k <= n:
        raise ValueError(f"sparse subspace clustering needs 1 <= k <= {n} points, got k={k}")
    gram = x @ x.T
    step = 1.0 / torch.linalg.eigvalsh(gram).max().clamp(min=1e-12)
    coef = torch.zeros(n, n, dtype=x.dtype)
    off = 1.0 - torch.eye(n, dtype=x.dtype)
    for _ in range(iters):  # columns: c_j for point j; gradient of ||X^T - X^T C||^2 / 2 is G C - G
        z = coef - step * (gram @ coef - gram)
        coef = torch.sign(z) * (z.abs() - step * lam).clamp(min=0) * off
    affinity = coef.abs() + coef.abs().T
    degree = affinity.sum(1).clamp(min=1e-12)
    norm = affinity / degree.sqrt()[:, None] / degree.sqrt()[None, :]
    _, vecs = torch.linalg.eigh(norm)
    embedding = vecs[:, -k:]
    embedding = embedding / embedding.norm(dim=1, keepdim=True).clamp(min=1e-12)
    return kmeans(embedding.float(), k, seed=seed)


def subspace_basis(vectors: torch.Tensor, variance: float, max_dim: int | None = None) -> torch.Tensor:
    """(C, d) orthonormal basis of the leading uncentred principal directions of ``vectors`` (N, C),
    d the smallest dimension whose share of the energy reaches ``variance``."""
    _, s, vh = torch.linalg.svd(vectors, full_matrices=False)
    energy = (s**2).cumsum(0) / (s**2).sum()
    d = int((energy < variance).sum().item()) + 1
    if max_dim is not None:
        d = min(d, max_dim)
    return vh[:d].T


class SubspaceConcepts:
    """MCD concepts: k cluster subspaces plus their orthogonal complement (``names[-1]``)."""

    def __init__(self, bases: list[torch.Tensor]):
        self.bases = [b.double() for b in bases]
        channels = self.bases[0].shape[0]
        union = torch.cat(self.bases, dim=1)
        q, r = torch.linalg.qr(union, mode="complete")
        rank = int((r.diagonal().abs() > 1e-8 * max(1.0, r.diagonal().abs().max().item())).sum().item())
        self.complement = q[:, rank:]  # orthonormal basis of span(union)^perp
        self.matrix = torch.cat([union, self.complement], dim=1)  # (C, D + C - rank)
        self.sizes = [b.shape[1] for b in self.bases] + [self.complement.shape[1]]
        self.channels = channels
        self.names = [f"concept{i}" for i in range(len(self.bases))] + ["complement"]

    @classmethod
    def discover(cls, fmaps: torch.Tensor, k: int, variance: float = 0.9, max_dim: int | None = None,
                 seed: int = 0, clustering: str = "kmeans") -> SubspaceConcepts:
        """Concepts of the feature maps (B, C, H, W) of one class; ``clustering``: kmeans or ssc."""
        vectors = fmaps.double().permute(0, 2, 3, 1).reshape(-1, fmaps.shape[1])
        vectors = vectors / vectors.norm(dim=1, keepdim=True).clamp(min=1e-12)
        if clustering == "kmeans":
            labels = kmeans(vectors, k, seed=seed)
        elif clustering == "ssc":
            labels = sparse_subspace_clustering(vectors, k, seed=seed)
        else:
            raise ValueError(f"unknown concept clustering '{clustering}' (kmeans or ssc)")
        bases = [subspace_basis(vectors[labels == j], variance, max_dim) for j in range(k) if (labels == j).any()]
        return cls(bases)

    def coefficients(self, fmap: torch.Tensor) -> torch.Tensor:
        """(D', H*W) coefficients of every position against the concatenated bases. Their columns span
        all of R^C (the complement fills what the concepts miss), so the solution reproduces the map
        exactly, also when concept subspaces overlap (then the minimum-norm split is taken)."""
        flat = fmap.double().reshape(self.channels, -1)
        return torch.linalg.lstsq(self.matrix, flat, driver="gelsd").solution

    def decompose(self, fmap: torch.Tensor) -> torch.Tensor:
        if fmap.shape[0] != self.channels:
            raise ValueError(f"feature map has {fmap.shape[0]} channels, the concepts were found in {self.channels}")
        coef = self.coefficients(fmap)
        parts, start = [], 0
        for size in self.sizes:
            block = self.matrix[:, start:start + size] @ coef[start:start + size]
            parts.append(block.reshape(fmap.shape))
            start += size
        return torch.stack(parts).to(fmap.dtype)


def attenuate(components: torch.Tensor, concept: int, factor: float) -> torch.Tensor:
    """The feature map with concept ``concept`` scaled by ``factor`` (Algorithm 1's phi')."""
    weights = torch.ones(len(components), dtype=components.dtype, device=components.device)
    weights[concept] = factor
    return (components * weights.view(-1, *[1] * (components.ndim - 1))).sum(0)
