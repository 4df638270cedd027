"""FeatInv applications: concept decomposition, FeatInv-Viz, interpolation and composition."""

import pytest
import torch

from featinv.applications.arithmetic import (
    compose,
    image_mask,
    interpolate,
    outline,
    region_mask,
)
from featinv.applications.concepts import (
    SubspaceConcepts,
    attenuate,
    kmeans,
    subspace_basis,
)
from featinv.applications.steering import concept_mask, featinv_viz


def planted_maps(n=6, channels=8, grid=4, seed=0):
    """Maps whose positions hold either a vector from span(e0, e1) ("sky") or span(e4, e5) ("bird")."""
    gen = torch.Generator().manual_seed(seed)
    maps = torch.zeros(n, channels, grid, grid)
    region = torch.zeros(grid, grid, dtype=torch.bool)
    region[: grid // 2] = True  # top half is sky
    for b in range(n):
        sky = torch.rand(2, grid, grid, generator=gen) + 0.5
        bird = torch.rand(2, grid, grid, generator=gen) + 0.5
        maps[b, 0:2] = torch.where(region, sky, 0)
        maps[b, 4:6] = torch.where(~region, bird, 0)
    return maps, region


def test_kmeans_separates_planted_clusters():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(20, 3, generator=gen) * 0.05 + torch.tensor([5.0, 0, 0])
    b = torch.randn(30, 3, generator=gen) * 0.05 + torch.tensor([0, 5.0, 0])
    labels = kmeans(torch.cat([a, b]), 2, seed=1)
    assert len(set(labels[:20].tolist())) == 1 and len(set(labels[20:].tolist())) == 1
    assert labels[0] != labels[20]
    with pytest.raises(ValueError, match="k=5"):
        kmeans(a[:3], 5)


def test_subspace_basis_finds_the_span_and_its_dimension():
    gen = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(6, 2, generator=gen, dtype=torch.float64)).Q
    vectors = (basis @ torch.randn(2, 40, generator=gen, dtype=torch.float64)).T
    found = subspace_basis(vectors, 0.999)
    assert found.shape == (6, 2)
    torch.testing.assert_close(found @ found.T, basis @ basis.T)  # same projector
    assert subspace_basis(vectors, 0.999, max_dim=1).shape == (6, 1)


def test_mcd_decomposition_is_complete_and_finds_the_planted_concepts():
    maps, region = planted_maps()
    bank = SubspaceConcepts.discover(maps, k=2, variance=0.99, seed=0)
    assert bank.names == ["concept0", "concept1", "complement"]
    assert sorted(b.shape[1] for b in bank.bases) == [2, 2] and bank.complement.shape == (8, 4)
    # a new map, also with energy outside both concepts (channel 7): the components sum back exactly
    fmap = maps[0].clone()
    fmap[7] = 0.3
    parts = bank.decompose(fmap)
    assert parts.shape == (3, 8, 4, 4)
    torch.testing.assert_close(parts.sum(0), fmap, atol=1e-6, rtol=0)
    sky = next(i for i, b in enumerate(bank.bases) if b[:2].abs().sum() > 1)
    bird = 1 - sky
    torch.testing.assert_close(parts[sky][0:2], fmap[0:2], atol=1e-6, rtol=0)  # the sky concept carries the sky
    assert parts[sky][:, ~region].abs().max() < 1e-6  # and nothing where the bird is
    torch.testing.assert_close(parts[bird][4:6], fmap[4:6], atol=1e-6, rtol=0)
    torch.testing.assert_close(parts[2][7], fmap[7], atol=1e-6, rtol=0)  # the rest is the complement's
    with pytest.raises(ValueError, match="3 channels, the concepts were found in 8"):
        bank.decompose(torch.zeros(3, 4, 4))


def test_overlapping_concepts_still_sum_to_the_map():
    gen = torch.Generator().manual_seed(0)
    shared = torch.randn(5, 1, generator=gen, dtype=torch.float64)
    bank = SubspaceConcepts([torch.cat([shared, torch.randn(5, 1, generator=gen, dtype=torch.float64)], 1),
                             torch.cat([shared, torch.randn(5, 1, generator=gen, dtype=torch.float64)], 1)])
    assert bank.complement.shape == (5, 2)  # rank 3 union
    fmap = torch.randn(5, 3, 3, generator=gen)
    torch.testing.assert_close(bank.decompose(fmap).sum(0), fmap, atol=1e-5, rtol=0)


def test_attenuation_scales_one_component_only():
    parts = torch.stack([torch.full((2, 2, 2), v) for v in (1.0, 2.0, 4.0)])
    torch.testing.assert_close(attenuate(parts, 1, 0.25), torch.full((2, 2, 2), 1.0 + 0.5 + 4.0))
    torch.testing.assert_close(attenuate(parts, 0, 1.0), parts.sum(0))


def toy_generator(weights: torch.Tensor, scale: int):
    """A stand-in for FeatInv with a known answer: the image is a linear read-out of each feature
    position, upsampled ``scale`` x, plus noise that depends only on the seed."""
    def generate(fmaps, seeds):
        img = torch.einsum("oc,bchw->bohw", weights, fmaps)
        img = img.repeat_interleave(scale, -2).repeat_interleave(scale, -1)
        noise = torch.stack([torch.randn(img.shape[1:], generator=torch.Generator().manual_seed(s)) for s in seeds])
        return img + noise
    return generate


def test_featinv_viz_marks_where_the_concept_lives():
    maps, region = planted_maps()
    bank = SubspaceConcepts.discover(maps, k=2, variance=0.99, seed=0)
    parts = bank.decompose(maps[1])
    sky = next(i for i, b in enumerate(bank.bases) if b[:2].abs().sum() > 1)
    weights = torch.ones(3, 8)
    generate = toy_generator(weights, scale=4)
    distance = featinv_viz(generate, parts, sky, seeds=[0, 1, 2], factor=0.25)
    assert distance.shape == (16, 16)
    pixel_region = image_mask(region, (16, 16))
    # Known answer: 0.75 * the sky component's read-out, per RGB channel, sqrt over 3 channels.
    expected = 0.75 * (weights @ parts[sky].reshape(8, -1)).reshape(3, 4, 4)
    expected = expected.repeat_interleave(4, -2).repeat_interleave(4, -1).pow(2).sum(0).sqrt()
    torch.testing.assert_close(distance, expected, atol=1e-5, rtol=1e-5)
    assert distance[~pixel_region].abs().max() < 1e-5 and distance[pixel_region].min() > 0.5
    assert torch.equal(concept_mask(distance), pixel_region)  # the seeds' noise cancels: the mask is the sky
    assert not concept_mask(torch.zeros(4, 4)).any()


def test_interpolation_endpoints_and_midpoint():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 3, 3, generator=gen), torch.randn(4, 3, 3, generator=gen)
    out = interpolate(a, b, [0.0, 0.5, 1.0])
    assert out.shape == (3, 4, 3, 3)
    assert torch.equal(out[0], a) and torch.equal(out[2], b)
    torch.testing.assert_close(out[1], (a + b) / 2)
    with pytest.raises(ValueError, match="shapes"):
        interpolate(a, b[:2], [0.5])


def test_composition_masks():
    mask = region_mask((4, 6), (0.0, 0.5, 0.5, 1.0))  # top-right quarter
    expected = torch.zeros(4, 6, dtype=torch.bool)
    expected[:2, 3:] = True
    assert torch.equal(mask, expected)
    a, b = torch.zeros(2, 4, 6), torch.ones(2, 4, 6)
    mixed = compose(a, b, mask)
    assert torch.equal(mixed[:, mask], b[:, mask]) and torch.equal(mixed[:, ~mask], a[:, ~mask])
    big = image_mask(mask, (8, 12))
    assert big.sum() == 4 * mask.sum() and big[:4, 6:].all()
    edge = outline(big)
    assert edge[0, 6:].all() and edge[3, 6:].all() and edge[:4, 6].all() and not edge[1:3, 7:11].any()
    with pytest.raises(ValueError, match="covers no cell"):
        region_mask((2, 2), (0.0, 0.0, 0.1, 0.1))
    with pytest.raises(ValueError, match="fractions"):
        region_mask((2, 2), (0.5, 0.0, 0.2, 1.0))


def test_sparse_subspace_clustering_groups_points_by_subspace():
    from featinv.applications.concepts import sparse_subspace_clustering

    gen = torch.Generator().manual_seed(0)
    bases = [torch.linalg.qr(torch.randn(6, 2, generator=gen, dtype=torch.float64)).Q for _ in range(2)]
    points = torch.cat([(b @ torch.randn(2, 25, generator=gen, dtype=torch.float64)).T for b in bases])
    points = points / points.norm(dim=1, keepdim=True)
    labels = sparse_subspace_clustering(points, 2, lam=0.01)
    assert len(set(labels[:25].tolist())) == 1 and len(set(labels[25:].tolist())) == 1 and labels[0] != labels[25]
    maps = points.T.reshape(1, 6, 5, 10).float()
    bank = SubspaceConcepts.discover(maps, 2, variance=0.999, clustering="ssc")
    assert sorted(b.shape[1] for b in bank.bases) == [2, 2]
    torch.testing.assert_close(bank.decompose(maps[0]).sum(0), maps[0], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="unknown concept clustering 'dbscan'"):
        SubspaceConcepts.discover(maps, 2, clustering="dbscan")
