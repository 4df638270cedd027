"""Modular inversion: forward models split into stages that compose to the model's own forward."""

import json

import numpy as np
import pytest
import timm
import torch

import yaml

from conftest import REPO
from featinv.config import section
from featinv.modular.stages import cnn_stages, encoder_layers, vit_stages

PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())


def modular_params(**keys):
    """params.yaml's ``modular`` section (typed) with ``keys`` replaced."""
    return section("modular", {**PARAMS["modular"], **keys})


def analyses_params(**keys):
    """params.yaml's ``modular_analyses`` section (typed) with ``keys`` replaced."""
    return section("modular_analyses", {**PARAMS["modular_analyses"], **keys})


def tiny_detr(num_labels: int = 10, d_model: int = 32, queries: int = 5, layers: int = 1) -> torch.nn.Module:
    """A DETR of the paper's architecture family with random weights, built from a config."""
    from transformers import DetrConfig, DetrForObjectDetection

    config = DetrConfig(use_timm_backbone=True, backbone="resnet18", use_pretrained_backbone=False,
                        d_model=d_model, encoder_layers=layers, decoder_layers=layers, encoder_attention_heads=2,
                        decoder_attention_heads=2, encoder_ffn_dim=d_model, decoder_ffn_dim=d_model,
                        num_queries=queries, num_labels=num_labels)
    return DetrForObjectDetection(config).eval()


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
        # The official boundaries: x_enc = vit.blocks(x_bb), the final norm belongs to pred.
        torch.testing.assert_close(tiny_vit.norm(staged.run(x, 0, 2)), tiny_vit.forward_features(x))
        torch.testing.assert_close(reps[2], tiny_vit.blocks(reps[1]))
        torch.testing.assert_close(staged.run(reps[1], 1), reps[-1])  # from x_bb on
        layers = encoder_layers(tiny_vit, reps[1])
    assert staged.names == ["bb", "enc", "pred"] and staged.index("enc") == 2
    assert reps[1].shape == (2, 1 + 4, 192)  # class token + 2x2 patches
    assert len(layers) == 3
    assert torch.equal(layers[-1], reps[2])  # the last block's output is x_enc itself, un-normalised
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
    from featinv.modular.detr import detr_stages

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


def test_the_installed_transformers_is_the_range_the_detr_adapter_is_pinned_to():
    """pyproject pins transformers to the major version whose DETR layout detr.py uses (v5: encoder and
    decoder take ``spatial_position_embeddings``); the DETR tests here run against that version."""
    import tomllib
    from importlib.metadata import version

    from packaging.requirements import Requirement

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    pin = next(Requirement(d) for d in deps if d.startswith("transformers"))
    assert "<6" in str(pin.specifier) and ">=5.0" in str(pin.specifier)
    assert pin.specifier.contains(version("transformers"))


def test_detr_encoder_layers_reach_the_backbone_inverse_as_maps(detr):
    """DETR's encoder layers are tokens (B, h*w, D) of the backbone map's grid (B, D, h, w): the
    intermediate-layer analysis hands them to bb^-1 as maps, in the order DETR flattened them."""
    from featinv.modular.inverses import build_inverses
    from featinv.modular.layers import as_layout, layer_inputs

    _, staged = detr
    with torch.no_grad():
        reps = staged.representations(torch.randn(2, 3, 64, 96))
        enc_layers = layer_inputs(staged, reps)[2]
    x_bb, x_enc = reps[1], reps[2]
    tokens = as_layout(x_bb, x_enc.shape)
    assert torch.equal(tokens, x_bb.flatten(2).transpose(1, 2))  # what DETR's encoder receives
    assert torch.equal(as_layout(tokens, x_bb.shape), x_bb)
    maps = [as_layout(layer, x_bb.shape) for layer in enc_layers]
    assert all(m is not None and m.shape == x_bb.shape for m in maps)  # every layer reaches bb^-1
    assert as_layout(reps[3], x_bb.shape) is None  # decoder queries are no map of that grid
    bb_inverse = build_inverses(staged, reps, hidden=8, heads=2)[0]
    assert bb_inverse(maps[-1]).shape == (2, 3, 64, 96)


def test_detr_inverses_and_prediction_inputs(detr):
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
    from featinv.modular.onehot import OneHotRows, one_hot

    hot = one_hot(reps[4], boxes=staged.boxes)  # pred_OH^-1's input; pred_FD^-1 sees reps[4] itself
    assert hot.shape == reps[4].shape
    assert set(hot[..., :11].unique().tolist()) == {0.0, 1.0} and (hot[..., :11].sum(-1) == 1).all()
    assert torch.equal(hot[..., :11].argmax(-1), reps[4][..., :11].argmax(-1))
    assert torch.equal(hot[..., 11:], reps[4][..., 11:])  # boxes kept
    assert torch.equal(OneHotRows(reps[4], 4)[torch.tensor([1, 1])], hot[[1, 1]])
    logits = torch.tensor([[0.1, 2.0, -1.0], [3.0, 0.0, 0.5]])  # a classifier's x_pred: no boxes
    assert torch.equal(one_hot(logits), torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]))


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


# ------------------------------------------------------------------------------------------------
# analyses: colour filters, token noise, intermediate layers, fine-tuning, saved inverses


def test_colour_filters_on_known_pixels():
    from featinv.modular.colour import recolour

    # pure green, dark blue, grey, orange: (1, 3, 1, 4)
    px = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 0.5], [0.4, 0.4, 0.4], [1.0, 0.5, 0.0]]).T.reshape(1, 3, 1, 4)
    red = recolour(px, "red")
    torch.testing.assert_close(red[0, :, 0, 0], torch.tensor([1.0, 0.0, 0.0]))  # hue -> 0, S and V kept
    torch.testing.assert_close(red[0, :, 0, 1], torch.tensor([0.5, 0.0, 0.0]))
    torch.testing.assert_close(red[0, :, 0, 2], px[0, :, 0, 2])  # grey has no hue to change
    torch.testing.assert_close(recolour(px, "blue")[0, :, 0, 0], torch.tensor([0.0, 0.0, 1.0]))
    torch.testing.assert_close(recolour(px, "green")[0, :, 0, 1], torch.tensor([0.0, 0.5, 0.0]))
    # green (120 deg) rotated by 120 -> blue, by 240 -> red; orange (30 deg) + 120 -> (150 deg)
    torch.testing.assert_close(recolour(px, "hue120")[0, :, 0, 0], torch.tensor([0.0, 0.0, 1.0]))
    torch.testing.assert_close(recolour(px, "hue240")[0, :, 0, 0], torch.tensor([1.0, 0.0, 0.0]))
    torch.testing.assert_close(recolour(px, "hue120")[0, :, 0, 3], torch.tensor([0.0, 1.0, 0.5]))
    gray = recolour(px, "grayscale")
    assert torch.equal(gray[:, 0], gray[:, 1]) and torch.equal(gray[:, 1], gray[:, 2])
    # luminance 0.2989 R + 0.587 G + 0.114 B (not V = max(R, G, B)), torchvision's Grayscale
    torch.testing.assert_close(gray[0, 0, 0], torch.tensor([0.587, 0.057, 0.4 * 0.9999, 0.2989 + 0.2935]))
    from torchvision.transforms.functional import rgb_to_grayscale
    torch.testing.assert_close(gray[:, :1], rgb_to_grayscale(px))
    # every pixel is converted, whatever the object mask (the paper's full-image grayscale)
    only_first = torch.tensor([True, False, False, False]).view(1, 1, 1, 4)
    torch.testing.assert_close(recolour(px, "grayscale", only_first), gray)
    # a mask limits the filter; "none" is the identity
    mask = torch.tensor([True, False, False, False]).view(1, 1, 1, 4)
    masked = recolour(px, "blue", mask)
    torch.testing.assert_close(masked[..., 1:], px[..., 1:])
    torch.testing.assert_close(masked[0, :, 0, 0], torch.tensor([0.0, 0.0, 1.0]))
    assert torch.equal(recolour(px, "none"), px)
    with pytest.raises(ValueError, match="unknown colour filter 'purple'"):
        recolour(px, "purple")


def test_token_noise_replaces_the_chosen_positions_only():
    from featinv.modular.noise import layout, pick_positions, pixel_mask, replace_positions

    gen = torch.Generator().manual_seed(0)
    fmap = torch.randn(2, 4, 5, 5)
    positions = pick_positions((5, 5), 0.2, gen)
    assert len(positions) == 5 and len(set(positions.tolist())) == 5
    noise = torch.arange(4.0)
    out = replace_positions(fmap, positions, noise)
    flat, orig = out.flatten(2), fmap.flatten(2)
    for p in range(25):
        if p in positions:
            assert torch.equal(flat[:, :, p], noise.expand(2, 4))  # one identical vector everywhere
        else:
            assert torch.equal(flat[:, :, p], orig[:, :, p])
    # tokens: prefix kept, position embedding added to the noise
    tokens = torch.randn(2, 1 + 9, 4)
    pos = torch.randn(10, 4)
    assert layout(tokens) == (1, (3, 3)) and layout(fmap) == (0, (5, 5))
    assert layout(torch.randn(1, 6, 4), grid=(2, 3)) == (0, (2, 3))
    out = replace_positions(tokens, torch.tensor([0, 4]), noise, prefix=1, position=pos)
    torch.testing.assert_close(out[0, 1], noise + pos[1])
    torch.testing.assert_close(out[1, 5], noise + pos[5])
    assert torch.equal(out[:, 0], tokens[:, 0]) and torch.equal(out[:, 2:5], tokens[:, 2:5])
    mask = pixel_mask(torch.tensor([0, 4]), (3, 3), (6, 6))
    assert mask.sum() == 8 and mask[0, 0, :2, :2].all() and mask[0, 0, 2:4, 2:4].all() and not mask[0, 0, 4:].any()


def test_intermediate_layers_end_at_the_stage_output(tiny_vit, detr):
    from featinv.modular.detr import detr_stages
    from featinv.modular.layers import layer_inputs

    torch.manual_seed(0)
    cnn = cnn_stages(timm.create_model("tf_efficientnet_lite0", pretrained=False).eval(), [[0, 1], [2, 3], [4, 5, 6]])
    for staged, x in [(vit_stages(tiny_vit), torch.randn(2, 3, 32, 32)), (cnn, torch.randn(2, 3, 64, 64)),
                      (detr_stages(tiny_detr(layers=2), (64, 96)), torch.randn(2, 3, 64, 96))]:
        with torch.no_grad():
            reps = staged.representations(x)
        inputs = layer_inputs(staged, reps)
        assert inputs, staged.kind
        for j, layers in inputs.items():
            assert layers[0] is reps[j - 1]
            torch.testing.assert_close(layers[-1], reps[j], msg=f"{staged.kind} {staged.names[j - 1]}")
        if staged.kind == "vit":  # layer 0 of enc goes to bb^-1 exactly as bb^-1 was trained: x_bb itself
            assert torch.equal(inputs[2][0], reps[1]) and torch.equal(inputs[2][-1], reps[2])
    assert [len(v) - 1 for v in layer_inputs(cnn, cnn.representations(torch.randn(1, 3, 64, 64))).values()] == [3, 5, 8]


def test_params_stage_names_match_the_adapters(tiny_vit, detr):
    from featinv.config import modular_stage_names

    cnn = cnn_stages(timm.create_model("tf_efficientnet_lite0", pretrained=False), [[0, 1], [2, 3], [4, 5, 6]])
    assert modular_stage_names("tf_efficientnet_lite0", [[0, 1], [2, 3], [4, 5, 6]]) == cnn.names
    assert modular_stage_names("vit_tiny_patch16_224") == vit_stages(tiny_vit).names
    assert modular_stage_names("detr:facebook/detr-resnet-50") == detr[1].names


def test_gradient_scaling_keeps_the_value_and_scales_the_gradient():
    from featinv.modular.finetune import scale_gradient

    x = torch.tensor([1.0, -2.0], requires_grad=True)
    y = scale_gradient(x, 0.1)
    assert torch.equal(y, x)
    (3 * y).sum().backward()
    torch.testing.assert_close(x.grad, torch.tensor([0.3, 0.3]))


def test_forward_model_loader_names_missing_weights(monkeypatch):
    from featinv.backbones.registry import WeightsError
    from featinv.modular.forward import load_forward

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsError, match="detr-resnet-50"):
        load_forward(modular_params(backbone="detr:facebook/detr-resnet-50", image_size=[480, 640], groups=[]))
    with pytest.raises(WeightsError, match="vit_base_patch16_224"):
        load_forward(modular_params(backbone="vit_base_patch16_224.augreg_in1k", image_size=224, groups=[]))


def test_vit_inverses_train_and_every_vit_analysis_runs(demo_shards, tmp_path):
    """A tiny random-weight ViT (the paper's forward-model family) over the demo shards, trained
    through train_inverses, then every analysis the ViT's rules run."""
    import csv

    from featinv.modular.analysis import mse_by_stage
    from featinv.modular.attention import attention_analysis
    from featinv.modular.colour import FILTERS, colour_analysis
    from featinv.modular.finetune import finetune
    from featinv.modular.layers import intermediate_layers
    from featinv.modular.noise import token_noise
    from featinv.modular.prediction import prediction_inverses
    from featinv.modular.trained import load_trained, train_inverses

    cfg = modular_params(backbone="vit_tiny_patch16_224", groups=[], image_size=32, hidden=16, depth=1, heads=3,
                         steps=3, batch_size=8)
    token = {"stages": ["bb", "enc"], "fraction": 0.5, "low": 0.0, "high": 1.0, "seed": 0}
    tune = {"stage": "enc", "lambdas": [0.0, 1.0], "steps": 2, "lr": 1e-5}
    analyses = analyses_params(examples=2, token_noise=token, finetune=tune, attention={"steps": 3, "lr": 1e-3})
    from safetensors.torch import save_file

    torch.manual_seed(0)
    weights = str(tmp_path / "vit.safetensors")  # random weights, given as params' backbones.weights would
    save_file(timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32).state_dict(), weights)
    meta = train_inverses(cfg, demo_shards, tmp_path / "m", tmp_path / "loss.csv", weights, progress=False)
    assert meta["stages"] == ["bb", "enc", "pred"] and meta["n_train"] == 36
    assert meta["shapes"] == [[3, 32, 32], [5, 192], [5, 192], [1000]]  # class token + 4 patches; timm's 1000 classes
    trained = load_trained(cfg, tmp_path / "m", weights)
    assert trained.local_first is None  # a ViT's patch inverse is local already: no second one
    out = tmp_path / "out"

    mse = mse_by_stage(trained, analyses, demo_shards, out)["mse"]
    assert [r[0] for r in mse] == ["bb", "enc", "pred"]
    assert [r[1] for r in prediction_inverses(trained, analyses, demo_shards, out)["rows"]] == ["pred_FD", "pred_OH"]
    colour = colour_analysis(trained, analyses, demo_shards, out)
    assert [r[0] for r in colour["pairwise_mse"]] == ["input", "bb", "enc", "pred"]
    assert [r[0] for r in colour["accuracy"]] == ["none", *FILTERS] and colour["accuracy"][0][1] == 1.0
    assert all(r[2] <= r[1] <= r[3] for r in colour["pairwise_mse"])
    noise = token_noise(trained, analyses, demo_shards, out)
    backwards = analyses_params(examples=2, token_noise={**token, "stages": ["enc", "bb"]})
    with pytest.raises(ValueError, match=r"^modular_analyses\.token_noise\.stages: 'enc' must come before 'bb'"):
        token_noise(trained, backwards, demo_shards, out)
    assert [r[0] for r in noise["rows"]] == ["bb_man", "enc_man", "enc_man+"]
    assert {r[3] for r in noise["rows"]} == {"modular"}
    assert noise["rows"][0][4] == 2 * 16 * 16  # 2 of the 4 patches, 16x16 pixels each
    assert all(r[5] > 0 for r in noise["rows"])  # manipulation changes the reconstruction
    layers = intermediate_layers(trained, analyses, demo_shards, out)
    # enc's input (x_bb) and its 12 blocks' outputs have the shape of both bb and enc outputs
    assert {(r[1], r[3]) for r in layers["rows"]} == {(k, s) for k in range(13) for s in ("bb", "enc")}

    tuned = finetune(trained, analyses, demo_shards, out, progress=False)["rows"]
    assert [(r[0], r[1]) for r in tuned[:2]] == [("fine-tuned", 0.0), ("fine-tuned", 1.0)]
    assert [r[0] for r in tuned[2:]] == ["modular", "classic"]
    assert tuned[2][2] == pytest.approx(mse[1][1], rel=1e-5)  # modular from enc: the MSE table's value
    assert tuned[2][5] == 1.0 and all(r[8] == "accuracy vs original top-1" for r in tuned)
    removed = attention_analysis(trained, analyses, demo_shards, out, progress=False)["rows"]
    assert [r[0] for r in removed] == ["self-attention", "cross-attention only", "cross-attention only, fine-tuned"]
    assert removed[0][1] == 1.0 and removed[2][5] == 3  # the unchanged model agrees with its own top-1
    with pytest.raises(ValueError, match="removing self-attention is an analysis of ViTs"):
        attention_analysis(load_trained(modular_params(steps=1, hidden=8), _cnn_inverses(demo_shards, tmp_path)),
                           analyses, demo_shards, out, progress=False)
    with open(out / "finetune.csv") as fh:
        assert [r["variant"] for r in csv.DictReader(fh)] == ["fine-tuned", "fine-tuned", "modular", "classic"]
    for png in ("reconstructions.png", "prediction.png", "colour.png", "colour_plot.png", "token_noise.png",
                "layers.png", "finetune.png", "finetune_plot.png", "attention.png"):
        assert (out / png).stat().st_size > 0


def _cnn_inverses(shards, tmp_path):
    """A model directory of the demo CNN's inverses after one step (for analyses it must refuse)."""
    from featinv.modular.trained import train_inverses

    train_inverses(modular_params(steps=1, hidden=8), shards, tmp_path / "cnn", tmp_path / "cnn.csv", progress=False)
    return tmp_path / "cnn"


def test_modular_inversion_loads_from_its_directory_alone_and_inverts_as_the_analyses_do(demo_shards, tmp_path):
    """ModularInversion.from_pretrained needs no params file (meta.json carries the modular section);
    its reconstructions are the chained inverses' of the training path's pixels; the card agrees."""
    from PIL import Image

    from featinv.cards import read_card
    from featinv.data.shards import read_image
    from featinv.modular import ModularInversion
    from featinv.modular.inverses import chain
    from featinv.modular.trained import load_split, representations, split_index

    model_dir = _cnn_inverses(demo_shards, tmp_path)
    inv = ModularInversion.from_pretrained(model_dir)
    meta = json.loads((model_dir / "meta.json").read_text())
    assert inv.stages == meta["stages"] and len(inv.stages) >= 3
    split = load_split(demo_shards, "val", inv.forward.image_size, inv.forward.fit, rows=[0, 1])
    photos = [read_image(e) for e in split_index(demo_shards, "val")[:2]]
    assert torch.equal(inv.pixels(photos), split.pixels)  # fitted as the training split was
    reps = representations(inv.forward, split.pixels)
    for j in (1, len(inv.stages)):
        expected = inv.forward.pixels(chain(inv.trained.modular, reps[j], j))
        torch.testing.assert_close(inv.invert(photos, stage=j, as_pil=False), expected)
        assert torch.equal(inv.invert(representation=reps[j], stage=j, as_pil=False), expected)
    classic = inv.invert(photos, stage=inv.stages[-1], path="classic", as_pil=False)
    assert not torch.allclose(classic, inv.invert(photos, stage=-1, as_pil=False))  # another network
    pil = inv.invert(photos, stage=-1)
    assert len(pil) == 2 and pil[0].size == tuple(reversed(inv.forward.image_size))
    with pytest.raises(ValueError, match=f"unknown stage 'nope' of .*: one of {', '.join(inv.stages)}"):
        inv.invert(photos, stage="nope")
    with pytest.raises(ValueError, match="out of range"):
        inv.invert(photos, stage=len(inv.stages) + 1)

    front, body = read_card(model_dir / "README.md")
    facts = front["featinv"]
    assert facts["stages"] == meta["stages"] and facts["shapes"] == meta["shapes"]
    assert facts["n_train"] == meta["n_train"] and facts["steps"] == meta["config"]["steps"] == 1
    assert front["base_model"] == meta["config"]["backbone"] and front["datasets"] == ["demo"]
    assert "ModularInversion.from_pretrained" in body and "snakemake --cores all" in body


def test_removing_self_attention_leaves_the_class_token_attending_to_every_token(tiny_vit):
    """In every block an image token's attention sees itself only, the class token's every token;
    a copy is modified, the model is not."""
    from featinv.modular.attention import CrossAttentionOnly, cross_attention_only

    removed = cross_attention_only(tiny_vit)
    assert all(isinstance(b.attn, CrossAttentionOnly) for b in removed.blocks)
    assert not any(isinstance(b.attn, CrossAttentionOnly) for b in tiny_vit.blocks)
    torch.manual_seed(1)
    tokens = torch.randn(2, 5, 192)
    attn, full = removed.blocks[0].attn, tiny_vit.blocks[0].attn
    with torch.no_grad():
        out, reference = attn(tokens), full(tokens)
        # the class token's row is ordinary attention; an image token's is its own value, projected
        assert torch.allclose(out[:, 0], reference[:, 0], atol=1e-5)
        assert not torch.allclose(out[:, 1:], reference[:, 1:], atol=1e-3)
        value = full.qkv(tokens)[..., 2 * 192:]  # q, k, v of every token; v = heads x head_dim in order
        assert torch.allclose(out[:, 1:], full.proj(value)[:, 1:], atol=1e-5)
        # one image token changed: that token and the class token change, no other token
        moved = tokens.clone()
        moved[:, 2] += torch.randn(192)  # not a constant: the block's LayerNorm would remove it
        changed = (removed.blocks[0](moved) - removed.blocks[0](tokens)).abs().amax(-1) > 1e-6
    assert changed.tolist() == [[True, False, True, False, False]] * 2


def test_coco_masks_limit_the_recolouring(tmp_path):
    import json

    from PIL import Image

    from featinv.data import shards as shard_io
    from featinv.data.sources import CocoSource
    from featinv.modular.colour import recolour
    from featinv.modular.trained import load_split

    (tmp_path / "val2017").mkdir()
    (tmp_path / "annotations").mkdir()
    img = np.zeros((40, 60, 3), np.uint8)
    img[..., 1] = 200  # green everywhere
    for name in ("1.png", "2.png"):
        Image.fromarray(img).save(tmp_path / "val2017" / name)
    box = lambda x, y, w, h: [[x, y, x + w, y, x + w, y + h, x, y + h]]  # noqa: E731
    ann = lambda i, image, cat, x, y, w, h: {"id": i, "image_id": image, "category_id": cat, "bbox": [x, y, w, h],  # noqa: E731
                                             "area": w * h, "iscrowd": 0, "segmentation": box(x, y, w, h)}
    coco = {"images": [{"id": 1, "file_name": "1.png", "height": 40, "width": 60},
                       {"id": 2, "file_name": "2.png", "height": 40, "width": 60}],
            "categories": [{"id": 3, "name": "car"}, {"id": 7, "name": "dog"}],
            # image 1: a large car and a small car; image 2: a dog and a car
            "annotations": [ann(1, 1, 3, 10, 0, 20, 20), ann(2, 1, 3, 40, 30, 8, 8),
                            ann(3, 2, 7, 20, 20, 10, 10), ann(4, 2, 3, 40, 0, 6, 6)]}
    (tmp_path / "annotations" / "instances_val2017.json").write_text(json.dumps(coco))
    shard_io.build(CocoSource(tmp_path, "annotations/instances_{split}2017.json", "{split}2017"),
                   tmp_path / "shards", "coco", ["val"], {}, 10)
    split = load_split(tmp_path / "shards", "val", (40, 60), "resize")
    car, dog = 3, 7
    rows, masks = split.category_masks(car)
    assert rows == [0, 1] and masks.shape == (2, 1, 40, 60)
    assert int(masks[0].sum()) == 21 * 21 + 9 * 9  # every car of image 1, both instances
    red = recolour(split.pixels[rows], "red", masks)
    assert (red[0, 0, :21, 10:31] > 0.7).all() and (red[0, 0, 30:39, 40:49] > 0.7).all()  # both cars turned red
    torch.testing.assert_close(red[0, :, 22:29, :], split.pixels[0, :, 22:29, :])  # background untouched
    dog_rows, dog_masks = split.category_masks(dog)
    assert dog_rows == [1] and int(dog_masks.sum()) == 11 * 11
    from featinv.modular.colour import recolouring_sets

    # one set per category (COCO ids), most frequent first: the car in both images, the dog in the second
    assert recolouring_sets(tmp_path / "shards") == [(car, [0, 1]), (dog, [1])]


def test_accuracy_targets_are_labels_only_for_the_models_own_classes():
    from featinv.modular.trained import Split, task_targets

    logits = torch.zeros(2, 1000)
    logits[0, 7], logits[1, 3] = 1.0, 1.0
    labels = torch.tensor([7, 9])
    imagenet = Split(torch.zeros(2, 3, 4, 4), labels, "imagenet-1k", None)
    targets, name = task_targets(imagenet, logits)
    assert name == "label" and torch.equal(targets, labels)
    demo = Split(torch.zeros(2, 3, 4, 4), labels, "demo-photo", None)
    targets, name = task_targets(demo, logits)
    assert name == "original top-1" and targets.tolist() == [7, 3]
    targets, name = task_targets(imagenet, logits[:, :10])  # a head over other classes
    assert name == "original top-1"


def test_the_local_inverse_reconstructs_each_patch_from_its_own_position_only():
    from featinv.modular.inverses import inverse_for

    torch.manual_seed(0)
    local = inverse_for("local", torch.zeros(1, 3, 32, 48), torch.zeros(1, 8, 2, 3), hidden=16)
    x = torch.randn(1, 8, 2, 3)
    y = x.clone()
    y[0, :, 1, 2] += 5.0  # one position changed
    with torch.no_grad():
        changed = (local(y) - local(x)).abs().sum(1)[0] > 0
    assert changed.shape == (32, 48)
    assert changed[16:, 32:].all() and not changed[:16].any() and not changed[:, :32].any()  # its 16x16 patch only
    one = inverse_for("conv", torch.zeros(1, 8, 2, 2), torch.zeros(1, 8, 1, 1), hidden=8).eval()
    assert one(torch.randn(1, 8, 1, 1)).shape == (1, 8, 2, 2)  # one image, a 1x1 map, GroupNorm of 2 channels a group
    conv = inverse_for("conv", torch.zeros(1, 3, 32, 48), torch.zeros(1, 8, 2, 3), hidden=16)
    with torch.no_grad():
        assert ((conv(y) - conv(x)).abs().sum(1)[0, :16, :32] > 0).any()  # the default bb^-1 mixes neighbours


def test_an_unknown_inverse_kind_names_the_known_ones():
    from featinv.modular.inverses import INVERSE_KINDS, inverse_for

    with pytest.raises(ValueError, match=r"unknown inverse kind 'rnn' \(one of conv, patch, tokens, "):
        inverse_for("rnn", torch.zeros(1, 3, 8, 8), torch.zeros(1, 4, 4, 4))
    assert isinstance(inverse_for("conv", torch.zeros(1, 3, 8, 8), torch.zeros(1, 4, 4, 4)), torch.nn.Module)
    assert len(INVERSE_KINDS) == 8 and "local" in INVERSE_KINDS


def test_fit_resizes_the_whole_image_or_crops_its_centre(tmp_path):
    """modular.fit: the paper resizes the whole image (ViT 224 x 224, DETR 480 x 640); crop keeps the
    largest central box. A 60 x 40 image whose left third is red: a third of the resized image is red,
    a quarter of the central-square crop."""
    from PIL import Image

    from featinv.data.shards import build
    from featinv.data.sources import ImageFolderSource
    from featinv.modular.trained import load_split

    img = np.zeros((40, 60, 3), np.uint8)
    img[:, :20] = (255, 0, 0)
    img[:, 20:] = (0, 0, 255)
    for split in ("train", "val"):
        (tmp_path / "src" / split / "a").mkdir(parents=True)
        Image.fromarray(img).save(tmp_path / "src" / split / "a" / "x.png")
    build(ImageFolderSource(tmp_path / "src", ["train", "val"]), tmp_path / "sh", "t", ["train", "val"], {}, 10)
    red = lambda px: float((px[0, 0] > 0.5).float().mean())  # noqa: E731
    assert abs(red(load_split(tmp_path / "sh", "val", (30, 30), "resize").pixels) - 1 / 3) < 0.04
    assert abs(red(load_split(tmp_path / "sh", "val", (32, 32), "crop").pixels) - 1 / 4) < 0.04
    with pytest.raises(ValueError, match="modular.fit is crop or resize, not 'pad'"):
        load_split(tmp_path / "sh", "val", (32, 32), "pad")


def test_best_weights_on_validation_are_kept():
    """fit(keep_best=...): training pushes w towards 10; the validation loss is (w - 3)^2, so the
    weights kept are those of the step closest to 3, not the last."""
    from featinv.modular.training import fit

    lin = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.zeros_(lin.weight)
    one = torch.ones(1, 1)
    values = []

    def val():
        values.append(float(lin.weight.detach()))
        return (float(lin.weight.detach()) - 3.0) ** 2

    fit(lin.parameters(), lambda idx: ((lin(one) - 10.0) ** 2).mean(), 4, 20, 2, 0.5, 0, optimizer="adam",
        keep_best=(lin, val, 1))
    assert values[-1] > 8 and abs(float(lin.weight.detach()) - min(values, key=lambda v: abs(v - 3))) < 1e-6
    with pytest.raises(ValueError, match="modular.optimizer is adamw or adam, not 'sgd'"):
        fit(lin.parameters(), lambda idx: lin(one).sum(), 4, 1, 2, 0.5, 0, optimizer="sgd")


def test_learning_rates_per_stage_and_instances_with_their_spread(demo_shards, tmp_path):
    """modular.lr_by_stage: a stage's component trains at its own rate (here ~0: it stays as built);
    modular.instances: independent instances, saved and loaded, their spread in the MSE table;
    modular.val_every: the best weights on validation are chosen (a val representation store)."""
    import csv

    from featinv.modular.analysis import mse_by_stage
    from featinv.modular.trained import _bundle, load_trained, train_inverses

    cfg = modular_params(steps=4, batch_size=8, hidden=8, lr_by_stage={"stem": 1e-12}, optimizer="adam",
                         max_grad_norm=1.0, val_every=2, instances=2)
    train_inverses(cfg, demo_shards, tmp_path / "m", tmp_path / "loss.csv", progress=False)
    trained = load_trained(cfg, tmp_path / "m")
    assert len(trained.instances) == 2 and trained.modular is trained.instances[0][0]
    torch.manual_seed(cfg.seed)
    fresh = _bundle(trained.forward, cfg)["modular"]
    stem_inv, fresh_stem = trained.modular[0].state_dict(), fresh[0].state_dict()
    assert all(torch.allclose(stem_inv[k], fresh_stem[k], atol=1e-9) for k in stem_inv)  # lr 1e-12: unchanged
    assert not all(torch.equal(a, b) for a, b in zip(trained.modular[1].state_dict().values(),
                                                     fresh[1].state_dict().values()))  # blocks1^-1 trained
    first, second = (dict(i[0].state_dict()) for i in trained.instances)
    assert any(not torch.equal(first[k], second[k]) for k in first)  # instances differ
    assert (tmp_path / "m" / "val-representations.zarr").exists()
    mse_by_stage(trained, analyses_params(examples=2), demo_shards, tmp_path / "out")
    with open(tmp_path / "out" / "mse_by_stage.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert all(r["instances"] == "2" and float(r["modular_mse_sd_over_instances"]) > 0 for r in rows)
    # Fig 8: pred_FD^-1 (the modular pred^-1) and pred_OH^-1, trained side by side, each chained on
    from featinv.modular.analysis import per_image_mse
    from featinv.modular.onehot import one_hot
    from featinv.modular.prediction import prediction_inverses
    from featinv.modular.inverses import chain
    from featinv.modular.trained import load_split, representations, split_index

    assert not all(torch.equal(a, b) for a, b in zip(trained.pred_one_hot.state_dict().values(),
                                                     _bundle(trained.forward, cfg)["pred_one_hot"].state_dict().values()))
    out = prediction_inverses(trained, analyses_params(examples=2), demo_shards, tmp_path / "out")
    assert [r[1] for r in out["rows"]] == ["pred_FD", "pred_OH"]
    assert out["columns"] == ["input", "stem", "blocks1", "blocks2", "blocks3", "head", "pred_FD", "pred_OH"]
    fwd = trained.forward
    val = load_split(demo_shards, "val", fwd.image_size).pixels
    reps = representations(fwd, val)
    with torch.no_grad():
        fd = per_image_mse(fwd.pixels(chain(trained.modular, reps[6], 6)), val).mean()
        oh = per_image_mse(fwd.pixels(chain(trained.modular, trained.pred_one_hot(one_hot(reps[6])), 5)), val).mean()
    assert out["rows"][0][2] == pytest.approx(fd, rel=1e-5) and out["rows"][1][2] == pytest.approx(oh, rel=1e-5)
    assert 0.0 <= out["rows"][1][8] <= 1.0  # share of reconstructions keeping the top-1
    assert (tmp_path / "out" / "prediction.png").stat().st_size > 0


def test_analyses_stream_the_val_split_in_parts_with_the_same_results(demo_shards, tmp_path):
    """modular_analyses.batch_size: every analysis (fine-tuning too, which reads the train store)
    gives the same table streaming 24 val images in parts of 5 as in one part."""
    from featinv.modular.analysis import mse_by_stage
    from featinv.modular.colour import colour_analysis
    from featinv.modular.finetune import finetune
    from featinv.modular.layers import intermediate_layers
    from featinv.modular.noise import token_noise
    from featinv.modular.prediction import prediction_inverses
    from featinv.modular.trained import load_trained, train_inverses

    cfg = modular_params(steps=3, batch_size=8, hidden=16)  # GroupNorm: 2 channels a group, so one image normalises
    train_inverses(cfg, demo_shards, tmp_path / "m", tmp_path / "loss.csv", progress=False)
    trained = load_trained(cfg, tmp_path / "m")
    tune = {**PARAMS["modular_analyses"]["finetune"], "steps": 2, "lambdas": [0.5]}
    tables = {}
    for batch in (5, 1000):
        analyses = analyses_params(examples=2, batch_size=batch, finetune=tune)
        tables[batch] = [f(trained, analyses, demo_shards, tmp_path / str(batch)) for f in (
            mse_by_stage, prediction_inverses, token_noise, intermediate_layers, colour_analysis)]
        tables[batch].append(finetune(trained, analyses, demo_shards, tmp_path / str(batch), progress=False))
    for streamed, whole in zip(tables[5], tables[1000]):
        assert streamed.keys() == whole.keys()
        for key in whole:
            a, b = np.array(streamed[key], dtype=object), np.array(whole[key], dtype=object)
            assert a.shape == b.shape, key
            for x, y in zip(a.ravel(), b.ravel()):
                assert x == pytest.approx(y, rel=1e-4, abs=1e-7, nan_ok=True) if isinstance(y, float) else x == y, key
