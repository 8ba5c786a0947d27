"""Preprocessing presets against their sources.

The mmpretrain facts below were read off mmpretrain 1.2.0's own pipeline (``ResizeEdge(342, short)``,
``CenterCrop(299)``, ``ClsDataPreprocessor``) by ``tools/check_mmpretrain_preprocess.py`` in a throwaway
environment, where the preset's tensors matched mmpretrain's bit for bit. torchvision's and timm's
transforms are installed in the test extra, so they are run here directly.
"""

from __future__ import annotations

import warnings

import cv2
import numpy as np
import pytest
import torch
import torchvision
from conftest import SHARED_DATA, photo_paths
from PIL import Image

from inceptionv3 import Classifier, InceptionV3
from inceptionv3.errors import InputError
from inceptionv3.preprocess import MAX_ASPECT, PRESETS, Preprocess

MMPRETRAIN = PRESETS["mmpretrain"]

# (height, width) -> resized (height, width), crop (top, left), all read off mmpretrain 1.2.0.
# The long edge truncates (481 x 641 -> 455, not 456); the crop offset rounds half to even (78.5 -> 78, 21.5 -> 22).
MMPRETRAIN_FACTS = {
    (300, 300): ((342, 342), (22, 22)),
    (299, 500): ((342, 571), (22, 136)),
    (500, 299): ((571, 342), (136, 22)),
    (343, 1000): ((342, 997), (22, 349)),
    (1000, 343): ((997, 342), (349, 22)),
    (75, 100): ((342, 456), (22, 78)),
    (481, 641): ((342, 455), (22, 78)),
    (600, 800): ((342, 456), (22, 78)),
    (341, 512): ((342, 513), (22, 107)),
    (929, 512): ((620, 342), (160, 22)),
    (343, 512): ((342, 510), (22, 106)),
    (418, 512): ((342, 418), (22, 60)),
    (600, 512): ((400, 342), (50, 22)),
    (384, 512): ((342, 456), (22, 78)),
    (300, 451): ((342, 514), (22, 108)),
    (400, 600): ((342, 513), (22, 107)),
    (2000, 75): ((9120, 342), (4410, 22)),
    (5, 3000): ((342, 205200), (22, 102450)),
}


@pytest.mark.parametrize("shape", sorted(MMPRETRAIN_FACTS))
def test_mmpretrain_resize_and_crop_geometry(shape):
    resized, (top, left) = MMPRETRAIN_FACTS[shape]
    assert MMPRETRAIN.resized_size(*shape) == resized
    assert MMPRETRAIN.crop_box(*resized) == (top, left, 299, 299)


def _mmpretrain_by_hand(path) -> torch.Tensor:
    """mmpretrain's test pipeline from its facts and cv2 calls alone: cv2.imread (BGR), cv2.resize bilinear to
    the pinned size, slice at the pinned offset, flip to RGB, then (x - mean) / std in float32."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    (height, width), (top, left) = MMPRETRAIN_FACTS[bgr.shape[:2]]
    resized = cv2.resize(bgr, (width, height), interpolation=cv2.INTER_LINEAR)
    crop = torch.from_numpy(resized[top:top + 299, left:left + 299].copy()).permute(2, 0, 1)[[2, 1, 0]].float()
    mean = torch.tensor([123.675, 116.28, 103.53]).view(3, 1, 1)
    std = torch.tensor([58.395, 57.12, 57.375]).view(3, 1, 1)
    return (crop - mean) / std


def test_mmpretrain_preset_is_bit_exact_on_every_real_photo():
    for path in photo_paths():
        assert torch.equal(MMPRETRAIN(path), _mmpretrain_by_hand(path)), path.name


def test_torchvision_preset_matches_torchvision_transforms_bit_for_bit():
    reference = torchvision.models.Inception_V3_Weights.IMAGENET1K_V1.transforms()
    for path in photo_paths():
        expected = reference(Image.open(path).convert("RGB"))
        assert torch.equal(PRESETS["torchvision"](path), expected), path.name


@pytest.mark.parametrize("tag, preset", [("tf_in1k", "timm-inception"), ("gluon_in1k", "timm-imagenet")])
def test_timm_presets_match_timm_transforms(tag, preset):
    import timm
    from timm.data import create_transform, resolve_data_config

    config = resolve_data_config({}, model=timm.create_model(f"inception_v3.{tag}"))
    if tag == "tf_in1k":  # the adversarially trained port declares the same pipeline, so this covers it too
        assert resolve_data_config({}, model=timm.create_model("inception_v3.tf_adv_in1k")) == config
    reference = create_transform(**config)
    for path in photo_paths()[::4]:
        expected = reference(Image.open(path).convert("RGB"))
        assert torch.equal(PRESETS[preset](path), expected), (tag, path.name)


def test_tf_slim_central_crop_uses_tensorflows_integer_offsets_and_tf1_bilinear():
    # tf.image.central_crop: start = int((h - h * 0.875) / 2), size = h - 2 * start; then TF1's resize_bilinear.
    preset = PRESETS["tf-slim"]
    assert preset.crop_box(600, 800) == (37, 50, 526, 700)
    assert preset.crop_box(343, 512) == (21, 32, 301, 448)
    assert preset.crop_box(1, 1) == (0, 0, 1, 1)
    path = SHARED_DATA / "images" / "felix_220_cheetah.jpg"
    tensor = preset(path)
    import simplejpeg  # the preset decodes JPEGs as TensorFlow does: libjpeg's fast IDCT

    decoded = simplejpeg.decode_jpeg(path.read_bytes(), colorspace="RGB", fastdct=True, fastupsample=False)
    rgb = decoded[37:37 + 526, 50:50 + 700].astype(np.float32)

    def tf1_axis(size_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # TF1 resize_bilinear, align_corners=False: source = i * in / out, no half-pixel shift, top clamped
        source = np.arange(299, dtype=np.float32) * np.float32(size_in / 299)
        low = np.floor(source).astype(int)
        return low, np.minimum(low + 1, size_in - 1), (source - low).astype(np.float32)

    (y0, y1, fy), (x0, x1, fx) = tf1_axis(526), tf1_axis(700)
    top = rgb[y0][:, x0] + (rgb[y0][:, x1] - rgb[y0][:, x0]) * fx[None, :, None]
    bottom = rgb[y1][:, x0] + (rgb[y1][:, x1] - rgb[y1][:, x0]) * fx[None, :, None]
    expected = np.clip(np.rint(top + (bottom - top) * fy[:, None, None]), 0, 255)
    expected = (torch.from_numpy(expected).permute(2, 0, 1).float() / 255 - 0.5) / 0.5
    differs = (tensor - expected).abs()
    assert differs.max() <= 2 / 255 + 1e-6 and float((differs > 0).float().mean()) < 1e-3  # rounding ties only
    assert tensor.min() >= -1 and tensor.max() <= 1


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_gives_a_299_crop_for_tiny_and_thin_images(name):
    preset = PRESETS[name]
    for shape in ((1, 1), (3, 2000), (2000, 3), (80, 75)):
        rgb = np.random.default_rng(0).integers(0, 256, (*shape, 3), dtype=np.uint8)
        crop = preset.crop_image(rgb)
        assert crop.shape == (299, 299, 3) and crop.dtype == np.uint8


def test_extreme_aspect_ratios_resize_only_the_centre_strip():
    # 1 x 10,000 would otherwise become a 342 x 3,420,000 image (3.5 GB). Up to MAX_ASPECT it stays bit-exact.
    rng = np.random.default_rng(0)
    strip = rng.integers(0, 256, (4, 10_000, 3), dtype=np.uint8)
    assert MMPRETRAIN.crop_image(strip).shape == (299, 299, 3)
    at_limit = rng.integers(0, 256, (20, 20 * MAX_ASPECT, 3), dtype=np.uint8)
    (height, width) = MMPRETRAIN.resized_size(*at_limit.shape[:2])
    top, left, _, _ = MMPRETRAIN.crop_box(height, width)
    expected = cv2.resize(at_limit, (width, height), interpolation=cv2.INTER_LINEAR)[top:top + 299, left:left + 299]
    np.testing.assert_array_equal(MMPRETRAIN.crop_image(at_limit), expected)


def test_with_crop_keeps_the_resize_ratio_and_validates():
    assert MMPRETRAIN.with_crop(224).resize == 256 and MMPRETRAIN.with_crop(224).crop == 224
    assert MMPRETRAIN.with_crop(299) == MMPRETRAIN
    with pytest.raises(InputError, match="crop <= resize"):
        Preprocess("bad", 200, 299, "bilinear", "cv2", (0, 0, 0), (1, 1, 1))
    with pytest.raises(InputError, match="interpolation"):
        Preprocess("bad", 342, 299, "nearest", "cv2", (0, 0, 0), (1, 1, 1))


def test_small_crop_on_imagenet_weights_warns_once(monkeypatch):
    monkeypatch.setattr("inceptionv3.preprocess._warned_crops", set())
    model = InceptionV3()
    with pytest.warns(UserWarning, match="crop 224 is smaller than the 299"):
        Classifier(model, crop_size=224, backend="eager")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Classifier(model, crop_size=224, backend="eager")  # the second time is silent
        Classifier(InceptionV3(num_classes=10), crop_size=224, backend="eager")  # not ImageNet weights: no warning


def test_the_tf_slim_preset_decodes_jpegs_with_the_fast_idct():
    """TensorFlow's decode_jpeg uses libjpeg's fast integer IDCT by default; the tf-slim preset decodes JPEGs with
    it (through simplejpeg, which exposes libjpeg-turbo's flag), every other preset with the accurate one. The
    whole pipeline against TensorFlow is in tests/test_tensorflow.py (make test-tf)."""
    import simplejpeg

    from inceptionv3.decode import load_image

    path = next(p for p in photo_paths() if p.suffix == ".jpg")
    data = path.read_bytes()
    fast = load_image(path, **PRESETS["tf-slim"].decode_options)
    accurate = load_image(path, **PRESETS["mmpretrain"].decode_options)
    assert np.array_equal(fast, simplejpeg.decode_jpeg(data, colorspace="RGB", fastdct=True, fastupsample=False))
    assert np.array_equal(accurate, cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1])
    assert fast.shape == accurate.shape and np.abs(fast.astype(int) - accurate).max() > 0
    png = SHARED_DATA / "images" / "skimage_chelsea.png"  # other formats decode as before
    assert np.array_equal(load_image(png, **PRESETS["tf-slim"].decode_options), load_image(png))


def test_a_preset_reference_round_trips_through_its_one_spelling():
    from inceptionv3.errors import InputError
    from inceptionv3.preprocess import PresetRef

    for spec in ("mmpretrain", "mmpretrain@75", "tf-slim@2048"):
        assert str(PresetRef.parse(spec)) == spec
    rescaled = PresetRef.parse("torchvision@224").resolve()
    assert (rescaled.name, rescaled.crop, rescaled.resize) == ("torchvision@224", 224, 256)
    assert PRESETS["torchvision"].with_crop(224) == rescaled
    assert PRESETS["torchvision"].with_crop(299).name == "torchvision"
    with pytest.raises(InputError, match="the crop must be a size from 75 to 2048"):
        PresetRef.parse("mmpretrain@74")
    with pytest.raises(InputError, match=r"'mmpretrian': no such preset \(known: keras, mmpretrain"):
        PresetRef.parse("mmpretrian").resolve()
