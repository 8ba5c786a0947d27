"""Preprocessing presets: how each weights source decoded, resized, cropped and normalised its inputs.

A preset travels with its weights (``WeightsEntry.preprocess``, ``model.weights_info.preprocess``), so that
a model is never fed inputs prepared for another source, the silent accuracy loss users hit most often.
Each preset reproduces its source's own arithmetic, down to the rounding of sizes and crop offsets and
the order of the float operations, so that the tensors match the reference pipelines bit for bit.

A preset is callable like a torchvision transform: ``preset(image)`` gives a normalised 3 x crop x crop tensor.
For batches, the work splits into :meth:`Preprocess.load` (decode and crop to uint8, run in worker
threads) and :meth:`Preprocess.normalize` (one vectorised step on the whole batch).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from PIL import Image

from .decode import MAX_BYTES, MAX_IMAGE_PIXELS, ImageInput, load_image
from .errors import InputError
from .imagenet import MEAN, STD
from .model import MIN_INPUT_SIZE

IMAGENET_MEAN, IMAGENET_STD = MEAN, STD
IMAGENET_MEAN_255 = (123.675, 116.28, 103.53)
IMAGENET_STD_255 = (58.395, 57.12, 57.375)

#: The resolution Inception V3 was trained at; smaller crops cost ImageNet accuracy.
NATIVE_CROP = 299

#: Short-edge sizes of the 144-crop protocol as GoogLeNet (Szegedy et al. 2015, sec. 7) defined it for 224
#: crops, and Inception V3 (2016, sec. 8) reused. A 299 crop cannot come from a 256 square, so the scales grow
#: with the crop: 256, 288, 320, 352 x 299 / 224 = 342, 384, 427, 470 (342 being the 1-crop resize).
PAPER_SCALES = (256, 288, 320, 352)
PAPER_CROP = 224
VIEW_COUNTS = (1, 10, 144)

#: Beyond this aspect ratio only the centre of the long edge is resized, so that a 1 x 10,000 strip does not
#: become a 342 x 3,420,000 image. Photos never get near it, so their results stay bit-exact.
MAX_ASPECT = 16

_CV2_INTERPOLATION = {"bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC}
#: TensorFlow 1.x's ``resize_bilinear(align_corners=False)``: no half-pixel centres (``resize_bilinear_tf1``).
TF1_BILINEAR = "tf1-bilinear"
INTERPOLATIONS = (*_CV2_INTERPOLATION, TF1_BILINEAR)
_PIL_INTERPOLATION = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}


def resize_bilinear_tf1(x: torch.Tensor, size: int | tuple[int, int] = 299) -> torch.Tensor:
    """TensorFlow 1.x ``resize_bilinear(align_corners=False)``: output pixel i samples input position
    ``i * in / out`` (no half-pixel centres), the upper neighbour clamped to the edge; rows are blended first,
    then columns. Positions are float32, as in torch-fidelity's port. 3 x H x W float in/out. The one TF1 resize
    of the package: the FID ``tf`` preset and the ``tf-slim`` classification preset both use it."""
    height, width = x.shape[-2:]
    out_h, out_w = (size, size) if isinstance(size, int) else size

    def axis(in_size: int, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        scale = torch.tensor(in_size / size, dtype=torch.float32)
        position = torch.arange(size, dtype=x.dtype) * scale
        low = position.long()
        high = (low + 1).clamp_max(in_size - 1)
        return low, high, position - low.float()

    y_low, y_high, dy = axis(height, out_h)
    x_low, x_high, dx = axis(width, out_w)
    top, bottom = x[:, y_low, :], x[:, y_high, :]
    top_left, top_right = top[:, :, x_low], top[:, :, x_high]
    bottom_left, bottom_right = bottom[:, :, x_low], bottom[:, :, x_high]
    upper = top_left + (top_right - top_left) * dx.view(1, 1, out_w)
    lower = bottom_left + (bottom_right - bottom_left) * dx.view(1, 1, out_w)
    return upper + (lower - upper) * dy.view(1, out_h, 1)


@dataclass(frozen=True)
class Preprocess:
    """One evaluation pipeline, on RGB pixels: ``(pixel / scale - mean) / std`` after resizing and cropping.

    ``order='resize_crop'`` resizes the short edge to ``resize`` (the long edge truncated to an int, as
    mmpretrain's ``ResizeEdge`` and torchvision's ``Resize`` do), then centre-crops ``crop`` with the offset
    rounded half to even (Python's ``round``, as both do). ``order='crop_resize'`` (TF-slim) centre-crops
    ``crop_fraction`` of each side, then resizes to ``crop`` x ``crop``.

    ``decoder='cv2'`` decodes with OpenCV and resizes with ``cv2.resize`` (no antialiasing);
    ``decoder='pil'`` decodes and resizes with Pillow (antialiased), as torchvision and timm do on PIL images.
    """

    name: str
    resize: int
    crop: int
    interpolation: str
    decoder: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    scale: float = 1.0
    order: str = "resize_crop"
    crop_fraction: float = 0.875
    source_note: str = ""
    jpeg_idct: str = "accurate"
    """libjpeg's IDCT for JPEGs: ``fast`` for the TF-slim preset, as TensorFlow's ``decode_jpeg`` decodes."""

    def __post_init__(self) -> None:
        if self.interpolation not in INTERPOLATIONS:
            raise InputError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {self.interpolation!r}")
        if self.decoder not in ("cv2", "pil"):
            raise InputError(f"decoder must be 'cv2' or 'pil', got {self.decoder!r}")
        if self.order not in ("resize_crop", "crop_resize"):
            raise InputError(f"order must be 'resize_crop' or 'crop_resize', got {self.order!r}")
        if self.crop < 1 or (self.order == "resize_crop" and self.resize < self.crop):
            raise InputError(
                f"preset {self.name!r}: need 1 <= crop <= resize, got crop {self.crop}, resize {self.resize}")
        if not 0.0 < self.crop_fraction <= 1.0:
            raise InputError(f"crop_fraction must be in (0, 1], got {self.crop_fraction}")

    @property
    def decode_options(self) -> dict[str, str]:
        """How this preset decodes (``load_image(item, **preset.decode_options)``): the decoder and the JPEG IDCT."""
        return {"decoder": self.decoder, "jpeg_idct": self.jpeg_idct}

    def describe(self) -> str:
        if self.order == "crop_resize":
            steps = f"centre crop {self.crop_fraction:g} -> {self.interpolation} resize to {self.crop}"
        else:
            steps = f"{self.interpolation} short-edge resize to {self.resize} -> centre crop {self.crop}"
        scaled = f"x / {self.scale:g}, " if self.scale != 1.0 else ""
        return f"{self.name}: {steps} ({self.decoder}), RGB, {scaled}mean {list(self.mean)}, std {list(self.std)}"

    def with_crop(self, crop: int) -> Preprocess:
        """The same pipeline at another crop size, keeping the resize-to-crop ratio (342/299 -> 256/224)."""
        resize = self.resize if self.order == "crop_resize" else int(crop * self.resize / self.crop)
        ref = PresetRef.parse(self.name)
        name = self.name if crop == self.crop else str(PresetRef(ref.base, crop))
        return dataclasses.replace(self, name=name, crop=crop, resize=max(resize, crop))

    # Geometry: pure functions of the image size, so that tests can pin the reference libraries' rounding.

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) after the short-edge resize of ``order='resize_crop'``."""
        if width < height:
            return int(self.resize * height / width), self.resize
        if height < width:
            return self.resize, int(self.resize * width / height)
        return self.resize, self.resize

    def crop_box(self, height: int, width: int) -> tuple[int, int, int, int]:
        """(top, left, height, width) of the crop, on the resized image (``resize_crop``) or the original."""
        if self.order == "crop_resize":
            top = int((height - height * self.crop_fraction) / 2)
            left = int((width - width * self.crop_fraction) / 2)
            return top, left, height - 2 * top, width - 2 * left
        crop_h, crop_w = min(self.crop, height), min(self.crop, width)
        return int(round((height - crop_h) / 2.0)), int(round((width - crop_w) / 2.0)), crop_h, crop_w

    def min_decode_side(self) -> int:
        """The short side an image needs for this preset's resize to shrink (never enlarge) it: the fast decode
        reduces JPEGs no further than this."""
        if self.order == "crop_resize":
            return -(-self.crop * 1000 // round(self.crop_fraction * 1000))  # the crop's side, rounded up
        return self.resize

    def source_box(self, height: int, width: int) -> tuple[float, float, float, float]:
        """(left, top, right, bottom) of the centre crop in the original image's pixels, for a ``height`` x
        ``width`` image: the region the model saw (heatmaps are mapped back onto the photo through it)."""
        if self.order == "crop_resize":
            top, left, h, w = self.crop_box(height, width)
            return float(left), float(top), float(left + w), float(top + h)
        cut_top = cut_left = 0
        if max(height, width) > MAX_ASPECT * min(height, width):  # crop_image's cut of extreme aspect ratios
            keep = MAX_ASPECT * min(height, width)
            if height > width:
                cut_top, height = (height - keep) // 2, keep
            else:
                cut_left, width = (width - keep) // 2, keep
        resized_h, resized_w = self.resized_size(height, width)
        top, left, h, w = self.crop_box(resized_h, resized_w)
        sy, sx = height / resized_h, width / resized_w
        return cut_left + left * sx, cut_top + top * sy, cut_left + (left + w) * sx, cut_top + (top + h) * sy

    # Pixels.

    def _resize(self, rgb: np.ndarray, height: int, width: int) -> np.ndarray:
        if rgb.shape[0] == height and rgb.shape[1] == width:
            return rgb
        if self.interpolation == TF1_BILINEAR:  # on floats, as TF resizes, then rounded to the crop's uint8
            x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float()
            resized = resize_bilinear_tf1(x, (height, width)).permute(1, 2, 0).numpy()
            return np.clip(np.rint(resized), 0, 255).astype(np.uint8)
        if self.decoder == "cv2":
            return cv2.resize(rgb, (width, height), interpolation=_CV2_INTERPOLATION[self.interpolation])
        resized = Image.fromarray(rgb).resize((width, height), _PIL_INTERPOLATION[self.interpolation])
        return np.asarray(resized)

    def crop_image(self, rgb: np.ndarray) -> np.ndarray:
        """H x W x 3 uint8 RGB -> crop x crop x 3 uint8 RGB."""
        if self.order == "crop_resize":
            top, left, h, w = self.crop_box(*rgb.shape[:2])
            return self._resize(np.ascontiguousarray(rgb[top:top + h, left:left + w]), self.crop, self.crop)
        height, width = rgb.shape[:2]
        if max(height, width) > MAX_ASPECT * min(height, width):
            keep = MAX_ASPECT * min(height, width)
            if height > width:
                rgb = rgb[(height - keep) // 2:(height - keep) // 2 + keep]
            else:
                rgb = rgb[:, (width - keep) // 2:(width - keep) // 2 + keep]
        resized = self._resize(np.ascontiguousarray(rgb), *self.resized_size(*rgb.shape[:2]))
        top, left, h, w = self.crop_box(*resized.shape[:2])
        return np.ascontiguousarray(resized[top:top + h, left:left + w])

    # Multi-crop views for evaluation: the crops of one image, averaged after the softmax.

    def view_boxes(self, height: int, width: int, crops: int) -> list[tuple[int, int, int, int, int]]:
        """(short edge to resize to, top, left, size, flag) of every view of a ``height`` x ``width`` image, before
        mirroring. ``flag`` is 1 for a square that is resized whole to the crop size (the 144 protocol), else 0.

        - 10: short edge to ``resize``; the 4 corner crops and the centre crop (mirrored: 10).
        - 144: short edge to 256, 288, 320, 352 scaled by crop / 224 (342, 384, 427, 470 for 299); the left,
          centre and right squares (top, middle, bottom for portrait images); from each, the 4 corners and
          centre crops plus the whole square resized to the crop size (mirrored: 4 x 3 x 6 x 2 = 144).
        """
        c = self.crop
        if crops == 10:
            short = self.resize if self.order == "resize_crop" else int(c / self.crop_fraction)
            h, w = self._short_edge_size(height, width, short)
            top, left, _, _ = self.crop_box(h, w) if c <= min(h, w) else (0, 0, 0, 0)
            corners = [(0, 0), (0, w - c), (h - c, 0), (h - c, w - c), (top, left)]
            return [(short, y, x, c, 0) for y, x in corners]
        if crops != 144:
            raise InputError(f"crops must be one of {VIEW_COUNTS}, got {crops}")
        boxes = []
        for scale in PAPER_SCALES:
            short = round(scale * c / PAPER_CROP)
            h, w = self._short_edge_size(height, width, short)
            side = min(h, w)
            offsets = (0, int(round((max(h, w) - side) / 2.0)), max(h, w) - side)
            for offset in offsets:
                sy, sx = (0, offset) if w >= h else (offset, 0)
                inner = [(0, 0), (0, side - c), (side - c, 0), (side - c, side - c),
                         (int(round((side - c) / 2.0)), int(round((side - c) / 2.0)))]
                boxes += [(short, sy + y, sx + x, c, 0) for y, x in inner]
                boxes.append((short, sy, sx, side, 1))
        return boxes

    def _short_edge_size(self, height: int, width: int, short: int) -> tuple[int, int]:
        return dataclasses.replace(self, resize=short, order="resize_crop").resized_size(height, width)

    def views(self, rgb: np.ndarray, crops: int = 1) -> np.ndarray:
        """crops x crop x crop x 3 uint8: the preset's centre crop (1), or the 10- or 144-crop views."""
        if crops == 1:
            return self.crop_image(rgb)[None]
        resized: dict[int, np.ndarray] = {}
        out = []
        for short, top, left, size, whole in self.view_boxes(*rgb.shape[:2], crops):
            if short not in resized:
                resized[short] = self._resize(rgb, *self._short_edge_size(*rgb.shape[:2], short))
            view = resized[short][top:top + size, left:left + size]
            if whole:
                view = self._resize(np.ascontiguousarray(view), self.crop, self.crop)
            out.append(view)
        views = np.stack(out)
        return np.concatenate([views, views[:, :, ::-1]])

    def decode(self, item: ImageInput, name: str | None = None, max_pixels: int = MAX_IMAGE_PIXELS,
               max_bytes: int = MAX_BYTES) -> np.ndarray:
        """Any supported input as a whole RGB photo, with this preset's decoder (``decode.load_image``)."""
        return load_image(item, **self.decode_options, name=name, max_pixels=max_pixels, max_bytes=max_bytes)

    def load(self, item: ImageInput, name: str | None = None, max_pixels: int = MAX_IMAGE_PIXELS,
             max_bytes: int = MAX_BYTES) -> np.ndarray:
        """Decode any supported input with this preset's decoder and crop it: a crop x crop x 3 uint8 array."""
        return self.crop_image(self.decode(item, name, max_pixels, max_bytes))

    def normalize(self, crops: np.ndarray | torch.Tensor) -> torch.Tensor:
        """N x H x W x 3 uint8 -> N x 3 x H x W float32, with the source's own order of float operations."""
        batch = torch.as_tensor(crops).permute(0, 3, 1, 2).float()
        if self.scale != 1.0:
            batch = batch / self.scale
        mean = torch.tensor(self.mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(1, 3, 1, 1)
        return ((batch - mean) / std).contiguous()

    def __call__(self, item: ImageInput) -> torch.Tensor:
        """One input -> a normalised 3 x crop x crop tensor, like ``weights.transforms()(image)`` in torchvision."""
        return self.normalize(self.load(item)[None])[0]

    def batch(self, items: Sequence[ImageInput]) -> torch.Tensor:
        """Several inputs -> one normalised N x 3 x crop x crop batch, in order, decoded here (calibration data,
        benchmarks); streaming work decodes in threads instead (``Classifier.predict``)."""
        return self.normalize(np.stack([self.load(item) for item in items]))


_warned_crops: set[tuple[str, int]] = set()


def warn_if_small_crop(preprocess: Preprocess, num_classes: int) -> None:
    """Warn once per preset and size: a 224 crop on 299-trained ImageNet weights quietly loses accuracy."""
    key = (preprocess.name, preprocess.crop)
    if num_classes in (1000, 1001) and preprocess.crop < NATIVE_CROP and key not in _warned_crops:
        _warned_crops.add(key)
        warnings.warn(
            f"crop {preprocess.crop} is smaller than the {NATIVE_CROP} x {NATIVE_CROP} these ImageNet weights were "
            f"trained and evaluated at; expect lower accuracy (use crop {NATIVE_CROP} to match published numbers)",
            UserWarning, stacklevel=3)


PRESETS: dict[str, Preprocess] = {
    p.name: p
    for p in (
        Preprocess(
            "mmpretrain", 342, 299, "bilinear", "cv2", IMAGENET_MEAN_255, IMAGENET_STD_255,
            source_note="mmpretrain inception-v3_8xb32_in1k test_pipeline: LoadImageFromFile (cv2), "
            "ResizeEdge(342, short), CenterCrop(299); ClsDataPreprocessor to_rgb, mean/std on 0-255",
        ),
        Preprocess(
            "torchvision", 342, 299, "bilinear", "pil", IMAGENET_MEAN, IMAGENET_STD, scale=255.0,
            source_note="torchvision Inception_V3_Weights.IMAGENET1K_V1: ImageClassification(crop 299, resize 342)",
        ),
        Preprocess(
            # timm resolves crop_pct 0.875 at 299 to a short edge of floor(299 / 0.875) = 341.
            "timm-inception", 341, 299, "bicubic", "pil", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), scale=255.0,
            source_note="timm inception_v3 pretrained cfg: crop_pct 0.875, bicubic, mean/std 0.5",
        ),
        Preprocess(
            "timm-imagenet", 341, 299, "bicubic", "pil", IMAGENET_MEAN, IMAGENET_STD, scale=255.0,
            source_note="timm inception_v3.gluon_in1k: crop_pct 0.875, bicubic, ImageNet mean/std",
        ),
        Preprocess(
            "keras", 299, 299, "bilinear", "cv2", (1.0, 1.0, 1.0), (1.0, 1.0, 1.0), scale=127.5,
            order="crop_resize",
            source_note="keras.applications.inception_v3.preprocess_input (mode 'tf': x / 127.5 - 1); "
            "centre crop 0.875 as in the TF-slim evaluation the weights come from",
        ),
        Preprocess(
            "tf-slim", 299, 299, TF1_BILINEAR, "cv2", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), scale=255.0,
            order="crop_resize", jpeg_idct="fast",
            source_note="TF-slim inception_preprocessing (eval): JPEGs decoded with libjpeg's fast IDCT as "
            "tf.image.decode_jpeg does, central_crop(0.875) with tf.image's integer offsets, TF1 resize_bilinear "
            "(align_corners=False, no half-pixel centres), (x / 255 - 0.5) * 2",
        ),
    )
}


CROP_RANGE = (MIN_INPUT_SIZE, 2048)
"""Crop sizes a preset reference may ask for: the network needs 75, and 2048 already costs 50 MB per image; a crafted
20000 in a file would make every image allocate gigabytes."""


@dataclass(frozen=True)
class PresetRef:
    """A preset by name, at its own crop or at another: how a file or a run records its preprocessing, written
    ``"mmpretrain"`` or ``"mmpretrain@75"``. ``parse`` and ``str`` are the only places that know the syntax."""

    base: str
    crop: int | None = None

    def __str__(self) -> str:
        return self.base if self.crop is None else f"{self.base}@{self.crop}"

    @classmethod
    def parse(cls, spec: str) -> PresetRef:
        """The reference ``spec`` writes; a crop outside CROP_RANGE is refused, since preprocessing allocates by
        it. The name is checked by ``resolve``."""
        base, sep, crop = spec.partition("@")
        if not sep:
            return cls(base)
        low, high = CROP_RANGE
        if not (crop.isascii() and crop.isdigit() and len(crop) <= 5 and low <= int(crop) <= high):
            raise InputError(f"preprocess {spec[:40]!r}: the crop must be a size from {low} to {high}")
        return cls(base, int(crop))

    def resolve(self) -> Preprocess:
        """The preset itself, rescaled to the crop; an unknown name is refused (a typo would otherwise fall back
        to another preset without a word)."""
        if self.base not in PRESETS:
            raise InputError(f"preprocess {str(self)[:40]!r}: no such preset (known: {', '.join(sorted(PRESETS))})")
        preset = PRESETS[self.base]
        return preset.with_crop(self.crop) if self.crop else preset
