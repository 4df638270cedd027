"""The conditioning encoder's first layer, computed the two exact ways (direct 3x3 convolution over
the upsampled map; nine 1x1 convolutions at the map's grid, upsampled, shifted and summed), gives
the same outputs and the same gradients."""

import pytest
import torch

from featinv.diffusion.encoder import FeatureConditioningEncoder


def _pair(pooled: bool, channels=40, fmap=(7, 5), grid=16, hidden=12):
    torch.manual_seed(0)
    direct = FeatureConditioningEncoder(channels, fmap, grid, hidden=hidden, depth=2, out_channels=8, pooled=pooled)
    for p in direct.parameters():  # the zero convolution too, so every layer's gradient is compared
        torch.nn.init.normal_(p, std=0.2)
    factored = FeatureConditioningEncoder(channels, fmap, grid, hidden=hidden, depth=2, out_channels=8, pooled=pooled,
                                          first_layer="factored")
    factored.load_state_dict(direct.state_dict())  # same weights: the choice is not in the state dict
    return direct, factored


@pytest.mark.parametrize("pooled", [False, True])
def test_both_first_layers_give_the_same_outputs_and_gradients(pooled):
    direct, factored = _pair(pooled)
    cond = torch.randn(3, 40) if pooled else torch.randn(3, 40, 7, 5)
    outs, grads = [], []
    for enc in (direct, factored):
        x = cond.clone().requires_grad_(True)
        out = enc(x)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        outs.append(out.detach())
        grads.append([x.grad] + [p.grad for p in enc.parameters()])
    assert outs[0].shape == (3, 8, 16, 16)
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-5)
    for a, b in zip(grads[0], grads[1]):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5 * float(a.abs().max()))  # rounding, to scale
    assert outs[0].abs().mean() > 0.1  # not a trivial (zero) output


def test_an_odd_grid_and_an_unknown_way_are_handled():
    direct, factored = _pair(False, fmap=(3, 3), grid=11)
    cond = torch.randn(2, 40, 3, 3)
    torch.testing.assert_close(factored(cond), direct(cond), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="first_layer must be one of direct, factored"):
        FeatureConditioningEncoder(4, (2, 2), 8, first_layer="fast")
