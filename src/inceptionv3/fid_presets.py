"""How each FID implementation turns an image file into the network's input, reproduced operation for operation.

FID values are only comparable under the same preprocessing, so every statistics file records its preset:

* ``pytorch-fid`` (default): Pillow ``convert('RGB')`` (EXIF orientation *not* applied), ``ToTensor`` (divide by
  255), torch bilinear resize to 299x299 (``align_corners=False``, no antialiasing), then ``2x - 1``;
* ``tf``: the same decode to uint8, then TensorFlow 1.x's legacy bilinear resize on 0-255 values (source pixel
  = output pixel x in/out, no half-pixel offset), then ``(x - 128) / 128``, as torch-fidelity does to match TTUR;
* ``torchmetrics``: ``torchmetrics.image.fid.FrechetInceptionDistance`` with its defaults (since 1.8
  ``antialias=True``): the uint8 image as float, torch's *antialiased* bilinear resize to 299x299 on 0-255 values,
  then ``(x - 128) / 128``. (Its ``antialias=False`` is torch-fidelity's resize, i.e. the ``tf`` preset.)
* ``clean``: clean-fid's default mode, ``make_resizer("PIL", False, "bicubic", (299, 299))``: each channel as a
  Pillow float32 (mode ``F``) image, resized bicubic by Pillow (antialiased when shrinking), no quantisation,
  clipped to [0, 255]; then ``(x - 128) / 128`` as clean-fid feeds its network.

Every image is resized on its own, in the loader, so mixed sizes never fail and the batch size never changes the
input. (pytorch-fid resizes whole batches, which needs equal sizes; per image the arithmetic is the same.)
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .decode import MAX_BYTES, MAX_IMAGE_PIXELS, ImageLoadError, _probe, load_image, read_image_file
from .errors import InputError
from .preprocess import resize_bilinear_tf1

FID_SIZE = 299


def decode_rgb_like_pil(path: str | os.PathLike, max_pixels: int = MAX_IMAGE_PIXELS,
                        max_bytes: int = MAX_BYTES) -> np.ndarray:
    """H x W x 3 uint8 as ``Image.open(path).convert('RGB')`` gives it (no EXIF rotation, alpha dropped), with
    the package's guards: size limit, regular files only, decompression bombs refused from the header."""
    name = os.fspath(path)
    data = read_image_file(name, max_bytes)
    image = _probe(data, name, max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image.load()
            return np.array(image.convert("RGB"))
    except Exception as exc:  # truncated and corrupt files surface here under several types
        raise ImageLoadError(name, f"corrupt or truncated image data ({str(exc) or type(exc).__name__})",
                             kind="corrupt") from None


def _to_float01(rgb: np.ndarray) -> torch.Tensor:
    """torchvision's ToTensor on a uint8 image: 3 x H x W float32, divided (not multiplied) by 255."""
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).contiguous().float().div(255)


def resize_bilinear_torch(x: torch.Tensor, size: int = FID_SIZE) -> torch.Tensor:
    """pytorch-fid's resize: ``F.interpolate`` bilinear, ``align_corners=False``, no antialias. 3 x H x W in/out."""
    return F.interpolate(x[None], size=(size, size), mode="bilinear", align_corners=False)[0]


def _pytorch_fid(rgb: np.ndarray) -> torch.Tensor:
    x = resize_bilinear_torch(_to_float01(rgb))
    return 2 * x - 1


def _to_float255(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).to(torch.float32)


def _tf(rgb: np.ndarray) -> torch.Tensor:
    x = resize_bilinear_tf1(_to_float255(rgb))
    return (x - 128) / 128


def _torchmetrics(rgb: np.ndarray) -> torch.Tensor:
    x = F.interpolate(_to_float255(rgb)[None], size=(FID_SIZE, FID_SIZE), mode="bilinear", align_corners=False,
                      antialias=True)[0]
    return (x - 128) / 128


def resize_bicubic_pil_float(rgb: np.ndarray, size: int = FID_SIZE) -> np.ndarray:
    """clean-fid's resize: every channel as a float32 Pillow image (mode ``F``, so nothing is rounded to uint8),
    Pillow's bicubic (antialiased when shrinking) to size x size, clipped to [0, 255]. H x W x 3 float32 out."""
    channels = []
    for c in range(rgb.shape[2]):
        plane = Image.fromarray(np.ascontiguousarray(rgb[:, :, c]).astype(np.float32))  # float32: mode F
        channels.append(np.asarray(plane.resize((size, size), resample=Image.BICUBIC)).clip(0, 255))
    return np.stack(channels, axis=2).astype(np.float32)


def _clean(rgb: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(resize_bicubic_pil_float(rgb)).permute(2, 0, 1).contiguous()
    return (x - 128) / 128


@dataclass(frozen=True)
class FIDPreset:
    """A named pipeline from a decoded uint8 RGB image to one 3 x 299 x 299 network input."""

    name: str
    description: str
    prepare: Callable[[np.ndarray], torch.Tensor]
    decode: Callable[[str | os.PathLike], np.ndarray] = decode_rgb_like_pil

    def load(self, path: str | os.PathLike) -> torch.Tensor:
        return self.prepare(self.decode(path))


FID_PRESETS: dict[str, FIDPreset] = {
    p.name: p
    for p in (
        FIDPreset("pytorch-fid", "PIL convert('RGB'), /255, torch bilinear to 299 (align_corners=False), 2x-1",
                  _pytorch_fid),
        FIDPreset("tf", "PIL convert('RGB'), TF1 legacy bilinear to 299 on 0-255, (x-128)/128 (torch-fidelity)", _tf),
        FIDPreset("torchmetrics", "torchmetrics' FID defaults (>= 1.8): torch bilinear with antialias to 299 on "
                  "0-255, (x-128)/128", _torchmetrics),
        FIDPreset("clean", "clean-fid's default: Pillow bicubic per channel on float32 (no uint8 rounding) to 299, "
                  "clipped to 0-255, (x-128)/128", _clean),
    )
}

DEFAULT_PRESET = "pytorch-fid"


def get_preset(name: str) -> FIDPreset:
    try:
        return FID_PRESETS[name]
    except KeyError:
        raise InputError(f"unknown FID preset {name!r}; choose from {', '.join(FID_PRESETS)}") from None


def model_preset(model: torch.nn.Module) -> FIDPreset:
    """For a classification model from ``get_model``: its own preprocessing (decode, resize, crop, normalise)."""
    info = getattr(model, "weights_info", None)
    if info is None:
        raise InputError("the model carries no preprocessing (weights_info); pass a preset name")
    preprocess = info.preprocess

    def prepare(rgb: np.ndarray) -> torch.Tensor:
        return preprocess.normalize(preprocess.crop_image(rgb)[None])[0]

    def decode(path: str | os.PathLike) -> np.ndarray:
        return load_image(path, **preprocess.decode_options)

    return FIDPreset(f"model:{preprocess.name}", f"the model's own preset ({preprocess.name})", prepare, decode)


__all__ = ["DEFAULT_PRESET", "FID_PRESETS", "FIDPreset", "decode_rgb_like_pil", "get_preset", "model_preset",
           "resize_bicubic_pil_float", "resize_bilinear_tf1", "resize_bilinear_torch"]

