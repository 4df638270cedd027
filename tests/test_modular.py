"""Modular inversion: forward models split into stages that compose to the model's own forward."""

import numpy as np
import pytest
import timm
import torch

from featinv.modular.stages import cnn_stages, encoder_layers, vit_stages


@pytest.fixture(scope="module")
def tiny_vit():
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=3, num_classes=10).eval()


def test_vit_stages_compose_to_the_models_forward(tiny_vit):
    staged = vit_stages(tiny_vit)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        reps = staged.representations(x)
        torch.testing.assert_close(reps[-1], tiny_vit(x))
        torch.testing.assert_close(staged.run(x, 0, 2), tiny_vit.forward_features(x))
        torch.testing.assert_close(staged.run(reps[1], 1), reps[-1])  # from x_bb on
        layers = encoder_layers(tiny_vit, reps[1])
    assert staged.names == ["bb", "enc", "pred"] and staged.index("enc") == 2
    assert reps[1].shape == (2, 1 + 4, 192)  # class token + 2x2 patches
    assert len(layers) == 3
    torch.testing.assert_close(tiny_vit.norm(layers[-1]), reps[2])
    with pytest.raises(KeyError, match="no stage 'dec'"):
        staged.index("dec")


def test_cnn_stages_compose_to_the_models_forward():
    torch.manual_seed(0)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    staged = cnn_stages(model, [[0, 1], [2, 3], [4, 5, 6]])
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        reps = staged.representations(x)
        torch.testing.assert_close(reps[-1], model(x))
        torch.testing.assert_close(reps[-2], model.forward_features(x))
    assert staged.names == ["stem", "blocks1", "blocks2", "blocks3", "head", "pred"]
    assert [tuple(r.shape[1:]) for r in reps[1:-1]] == [(32, 32, 32), (24, 16, 16), (80, 4, 4), (320, 2, 2), (1280, 2, 2)]
    with pytest.raises(ValueError, match="consecutive runs"):
        cnn_stages(model, [[0, 2], [1, 3, 4, 5, 6]])


@pytest.mark.parametrize("kind", ["vit", "cnn"])
def test_inverses_map_back_stage_by_stage_and_chain_to_images(kind, tiny_vit):
    from featinv.modular.inverses import build_inverses, chain

    torch.manual_seed(0)
    if kind == "vit":
        staged, x = vit_stages(tiny_vit), torch.randn(2, 3, 32, 32)
    else:
        model = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
        staged, x = cnn_stages(model, [[0, 1], [2, 3], [4, 5, 6]]), torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        reps = staged.representations(x)
    inverses = build_inverses(staged, reps, hidden=32)
    for j, inverse in enumerate(inverses, 1):
        assert inverse(reps[j]).shape == reps[j - 1].shape, staged.names[j - 1]
    for j in range(1, len(reps)):
        assert chain(inverses, reps[j], j).shape == x.shape


def test_a_few_steps_lower_the_local_loss(tiny_vit):
    """Modular training (eq. 1) of the patch-embedding inverse: MSE between inverse(x_bb) and the image."""
    from featinv.modular.inverses import PatchInverse, build_inverses

    torch.manual_seed(0)
    staged = vit_stages(tiny_vit)
    images = torch.rand(8, 3, 32, 32)
    with torch.no_grad():
        x_bb = staged.run(images, 0, 1)
    inverse = build_inverses(staged, [images, x_bb])[0]
    assert isinstance(inverse, PatchInverse) and inverse.prefix == 1
    opt = torch.optim.Adam(inverse.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = torch.nn.functional.mse_loss(inverse(x_bb), images)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


@pytest.fixture(scope="module")
def detr():
    from featinv.modular.detr import detr_stages, tiny_detr

    torch.manual_seed(0)
    model = tiny_detr(num_labels=10, d_model=32, queries=5)
    return model, detr_stages(model, (64, 96))


def test_detr_stages_compose_to_the_models_forward(detr):
    model, staged = detr
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        reps = staged.representations(x)
        out = model(pixel_values=x, output_hidden_states=True)
    assert staged.names == ["bb", "enc", "dec", "pred"] and staged.grid == (2, 3)
    assert [tuple(r.shape[1:]) for r in reps[1:]] == [(32, 2, 3), (6, 32), (5, 32), (5, 11 + 4)]
    torch.testing.assert_close(reps[2], out.encoder_last_hidden_state)
    torch.testing.assert_close(reps[3], out.last_hidden_state)
    torch.testing.assert_close(reps[4][..., :11], out.logits)
    torch.testing.assert_close(reps[4][..., 11:], out.pred_boxes)


def test_detr_inverses_and_prediction_inputs(detr):
    from featinv.modular.detr import prediction_input
    from featinv.modular.inverses import MlpInverse, QueryInverse, build_inverses, chain

    _, staged = detr
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        reps = staged.representations(x)
    inverses = build_inverses(staged, reps, hidden=16, heads=2)
    assert isinstance(inverses[2], QueryInverse) and isinstance(inverses[3], MlpInverse)
    for j, inverse in enumerate(inverses, 1):
        assert inverse(reps[j]).shape == reps[j - 1].shape, staged.names[j - 1]
    assert chain(inverses, reps[4], 4).shape == x.shape
    full = prediction_input(reps[4], one_hot=False)
    hot = prediction_input(reps[4], one_hot=True)
    torch.testing.assert_close(full[..., :11].sum(-1), torch.ones(2, 5))
    assert set(hot[..., :11].unique().tolist()) == {0.0, 1.0} and (hot[..., :11].sum(-1) == 1).all()
    torch.testing.assert_close(hot[..., :11].argmax(-1), full[..., :11].argmax(-1))
    torch.testing.assert_close(hot[..., 11:], reps[4][..., 11:])


def test_modular_and_classic_training_and_parameter_counts(tiny_vit):
    from featinv.modular.inverses import build_inverses, chain
    from featinv.modular.training import classic_inverses, count_parameters, train_classic, train_modular

    torch.manual_seed(0)
    staged = vit_stages(tiny_vit)
    with torch.no_grad():
        reps = staged.representations(torch.rand(16, 3, 32, 32))
    modular = build_inverses(staged, reps, hidden=32, heads=4)
    classic = classic_inverses(staged, reps, hidden=32, heads=4)
    p = [count_parameters(m) for m in modular]
    # Classic: stage j's full path repeats components 1..j, so sum_j sum_{i<=j} p_i (= (n+1)p/2 for equal p_i).
    assert count_parameters(classic) == sum(sum(p[:j]) for j in range(1, len(p) + 1))
    local = train_modular(modular, reps, steps=25, batch_size=8, lr=3e-3)
    assert all(np.mean(h[-5:]) < np.mean(h[:5]) for h in local), [(h[0], h[-1]) for h in local]
    full = train_classic(classic[:2], reps, steps=25, batch_size=8, lr=3e-3)
    assert all(np.mean(h[-5:]) < np.mean(h[:5]) for h in full)
    with torch.no_grad():
        assert chain(classic[1], reps[2], 2).shape == reps[0].shape
