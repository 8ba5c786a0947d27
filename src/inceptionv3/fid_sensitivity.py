"""Which generated images, and which regions of them, raise FID (Kynkäänniemi et al. 2023, "The Role of ImageNet
Classes in Fréchet Inception Distance").

FID is a smooth function of the generated images' pool features. Two derivatives answer two questions:

* **which images**: give every generated image a weight (all 1) in the mean and covariance; minus the derivative
  of FID by an image's weight is the first-order change in FID when that image is removed (its contribution).
  Negative: removing it lowers FID, so it raises FID;
* **which regions**: the derivative of FID by an image's 2048-d pool features, carried to Mixed_7c the Grad-CAM
  way (pool_3 is Mixed_7c's spatial mean, so each channel's weight is its gradient over h x w), gives a heatmap of
  the regions whose features push FID up.

Both come from one autograd pass in float64 through FID with the real side's statistics fixed:
tr sqrt(S1 S2) = sum sqrt(eig(A S1 A)) with A = sqrt(S2). With fewer images than dimensions, S1 is singular and
FID is not differentiable across directions outside the images' span; eigenvalues under ``eps`` are held at
``eps`` there, so those directions get no gradient.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .errors import InputError
from .explain import overlay, weighted_maps
from .features import Extractor, Images
from .fid_math import FIDStatistics
from .files import SafeCSVWriter, atomic_path, display_name
from .image_arrays import ImageArray
from .visualize import render_panels


@dataclass
class FIDSensitivity:
    """``contributions[i]``: the first-order change in FID when generated image i is removed (most negative:
    raises FID most); ``gradients[i]``: dFID / d(its d features)."""

    fid: float
    contributions: np.ndarray
    gradients: np.ndarray

    def ranking(self) -> np.ndarray:
        """Image indices, the one whose removal lowers FID most first."""
        return np.argsort(self.contributions, kind="stable")


def _psd_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    values, vectors = torch.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * values.clamp_min(0).sqrt()) @ vectors.T


def fid_sensitivity(generated: np.ndarray, real: FIDStatistics, *, eps: float = 1e-10) -> FIDSensitivity:
    """FID of ``generated`` (N x d features) against the ``real`` statistics, with every image's contribution
    and feature gradient (float64)."""
    features = np.asarray(generated, dtype=np.float64)
    if features.ndim != 2 or len(features) < 2 or features.shape[1] != real.dims:
        raise InputError(f"FID sensitivity needs N >= 2 generated features of the real side's size ({real.dims}), "
                         f"got shape {features.shape}")
    f = torch.from_numpy(features).requires_grad_(True)
    w = torch.ones(len(features), dtype=torch.float64, requires_grad=True)
    total = w.sum()
    mu = (w[:, None] * f).sum(0) / total
    centred = f - mu
    sigma = (w[:, None] * centred).T @ centred / (total - 1)
    mu_real = torch.from_numpy(np.asarray(real.mu, dtype=np.float64))
    sigma_real = torch.from_numpy(np.asarray(real.covariance(), dtype=np.float64))
    root = _psd_sqrt(sigma_real)
    inner = root @ sigma @ root
    trace_sqrt = torch.linalg.eigvalsh((inner + inner.T) / 2).clamp_min(eps).sqrt().sum()
    fid = ((mu - mu_real) ** 2).sum() + sigma.trace() + sigma_real.trace() - 2 * trace_sqrt
    grad_features, grad_weights = torch.autograd.grad(fid, [f, w])
    return FIDSensitivity(float(fid.detach()), (-grad_weights).numpy(), grad_features.numpy())


def _image(images: Images, names: list[str], index: int, extractor: Extractor) -> np.ndarray:
    """One generated image as decoded uint8 RGB: by its path, or by its position in the array."""
    if isinstance(images, ImageArray):
        return images.read(index, 1)[0]
    return extractor.preset.decode(names[index])


def heatmaps(extractor: Extractor, rgbs: list[np.ndarray], gradients: np.ndarray) -> list[np.ndarray]:
    """Each image's FID heatmap (H x W in [0, 1] at the network's input size): its Mixed_7c channels weighted
    by FID's gradient over its pool features, spread over the h x w positions they were averaged from."""
    x = torch.stack([extractor.preset.prepare(rgb) for rgb in rgbs]).to(extractor.device)
    with torch.no_grad():
        activations = extractor.model.forward_intermediates(x, ["Mixed_7c"])["Mixed_7c"].double().cpu()
    positions = activations.shape[2] * activations.shape[3]
    maps, _ = weighted_maps(activations, torch.from_numpy(gradients) / positions, tuple(x.shape[-2:]))
    return [m.float().numpy() for m in maps]


def save_heatmaps(folder: str | os.PathLike, images: Images, names: list[str], sensitivity: FIDSensitivity,
                  extractor: Extractor, top: int) -> list[Path]:
    """``contributions.csv`` (every image, ranked) and a picture of each of the ``top`` images that raise FID
    most: its heatmap on the image, and the image."""
    if top < 1:
        raise InputError(f"--top must be at least 1, got {top}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    order = sensitivity.ranking()
    with atomic_path(folder / "contributions.csv") as tmp, open(tmp, "w", newline="") as handle:
        writer = SafeCSVWriter(handle)
        writer.writerow(["rank", "image", "fid_change_if_removed"])
        for rank, index in enumerate(order, 1):
            writer.writerow([rank, names[index], float(sensitivity.contributions[index])])
    chosen = [int(i) for i in order[:top]]
    rgbs = [_image(images, names, i, extractor) for i in chosen]
    written = [folder / "contributions.csv"]
    masks = heatmaps(extractor, rgbs, sensitivity.gradients[chosen])
    for rank, (index, rgb, mask) in enumerate(zip(chosen, rgbs, masks, strict=True), 1):
        on_image = F.interpolate(torch.from_numpy(mask)[None, None], size=rgb.shape[:2], mode="bilinear",
                                 align_corners=False)[0, 0].numpy()
        change = sensitivity.contributions[index]
        title = f"#{rank}: FID {change:+.4g} if removed (of {sensitivity.fid:.4g})"
        picture = render_panels([(overlay(rgb, on_image), "regions that raise FID"),
                                 (rgb, display_name(os.path.basename(names[index])))], [], title)
        path = folder / f"{rank:03d}.png"
        with atomic_path(path, suffix=".partial.png") as tmp:
            picture.save(tmp, "PNG")
        written.append(path)
    return written


__all__ = ["FIDSensitivity", "fid_sensitivity", "heatmaps", "save_heatmaps"]
