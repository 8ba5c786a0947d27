"""The five numbers of OpenAI's ADM evaluator (guided-diffusion ``evaluations/evaluator.py``), without TensorFlow.

Diffusion and autoregressive ImageNet papers report Inception Score, FID, sFID, precision and recall from that
script, run on ``.npz`` batches. This reproduces its conventions on the same 2015-12-05 network:

* every image through TensorFlow 1's bilinear resize to 299 and ``(x - 128) / 128`` (the ``tf`` preset);
* FID on pool_3 and sFID on the ``spatial`` tap (Mixed_6d's 1x1 branch, first 7 channels, (h, w, c) order),
  each against the reference file's own ``mu``/``sigma`` and ``mu_s``/``sigma_s`` when it holds all four;
* IS from the pool features times the fc weights without the bias, over consecutive splits of 5,000 samples in
  file order, reporting the mean;
* precision and recall with k = 3 neighbours, ``<=`` against radii from each set's own distances, the reference
  batch's images against every sample.

Where it differs: statistics are float64 (ADM's mean is float32), precision/recall distances float32 (ADM's are
float16; docs/fid.md gives the measured effect), and the Fréchet distance uses the real eigendecomposition rather
than scipy's ``sqrtm``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import DatasetError, InputError
from .features import (
    Extractor,
    Images,
    fail_together,
    find_inputs,
    gather_in_order,
    image_count,
    image_names,
    iterate_features,
    make_extractor,
)
from .fid_math import FIDStatistics, frechet_distance, npz_keys, precision_recall, split_score
from .files import display_name, find_images
from .image_arrays import ImageArray, is_image_array
from .runtime import rank_world
from .weights import FID_SHA256

ADM_PRESET = "tf"
IS_SPLIT_SIZE = 5000
PRC_K = 3
PRC_BLOCK = 2**22
"""Distances computed at a time for precision and recall (16 MB in float32), on the float32 features themselves:
memory grows by the features alone (8 KB a sample), not by a float64 copy or an N x N matrix."""
STORED = ("mu", "sigma", "mu_s", "sigma_s")
"""What an ADM reference batch holds beside ``arr_0``; the evaluator prefers them to recomputing."""


@dataclass
class ADMSide:
    """One batch's contribution: its pool features (None when it is statistics only) and both statistics."""

    path: str
    pool: np.ndarray | None
    stats: FIDStatistics
    spatial: FIDStatistics
    images: int
    statistics_from: str
    """``"file"`` (the batch's stored ``mu``... were used, as the evaluator does) or ``"images"``."""


@dataclass
class ADMResult:
    inception_score: float | None
    fid: float
    sfid: float
    precision: float | None
    recall: float | None
    ref: ADMSide = field(repr=False)
    sample: ADMSide = field(repr=False)
    network: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """What the evaluator prints, in its order and wording (Python's shortest float repr)."""
        shown = [("Inception Score", self.inception_score), ("FID", self.fid), ("sFID", self.sfid),
                 ("Precision", self.precision), ("Recall", self.recall)]
        return [f"{name}: {value!r}" for name, value in shown if value is not None]

    def as_dict(self) -> dict[str, Any]:
        sides = {name: {"path": side.path, "images": side.images, "statistics_from": side.statistics_from}
                 for name, side in (("ref", self.ref), ("sample", self.sample))}
        return {"inception_score": self.inception_score, "fid": self.fid, "sfid": self.sfid,
                "precision": self.precision, "recall": self.recall, "inputs": sides, "notes": self.notes,
                "conventions": {"preset": ADM_PRESET, "is_split_size": IS_SPLIT_SIZE, "prc_k": PRC_K,
                                "statistics": "float64", "prc_distances": "float32"},
                "network": self.network}


def _has_images(path: str) -> bool:
    return Path(path).is_dir() or is_image_array(path)


def count_images(path: str | os.PathLike) -> int:
    """How many images a side holds, from the folder listing or the array header (0 for statistics only)."""
    path = os.fspath(path)
    if Path(path).is_dir():
        return len(find_images(path))
    return ImageArray.open(path).count if _has_images(path) else 0


def adm_side(path: str | os.PathLike, extractor: Extractor, *, batch_size: int = 64, workers: int = 0,
             progress: bool = False) -> ADMSide:
    """Pool features and both statistics of a folder, an image array or an ADM batch (exact under torchrun:
    whole batches per process, statistics combined, features gathered in order)."""
    path = os.fspath(path)
    stored = path.endswith(".npz") and not Path(path).is_dir() and set(STORED) <= npz_keys(path)
    if not _has_images(path):
        if not stored:
            raise InputError(f"{path}: neither images (a folder, .npy, or .npz with arr_0) nor ADM statistics "
                             f"({', '.join(STORED)})")
        stats = FIDStatistics.load(path)
        return ADMSide(path, None, stats, FIDStatistics.load(path, "_s"), stats.n, "file")
    images = find_inputs(path)
    pool, stats, spatial = _features(images, extractor, batch_size, workers, progress)
    if stored:
        stats, spatial = FIDStatistics.load(path), FIDStatistics.load(path, "_s")
    return ADMSide(path, pool, stats, spatial, image_count(images), "file" if stored else "images")


def _features(images: Any, extractor: Extractor, batch_size: int, workers: int,
              progress: bool) -> tuple[np.ndarray, FIDStatistics, FIDStatistics]:
    """One pass: pool_3 features kept (precision, recall and IS need each), both statistics streamed."""
    stats, spatial = FIDStatistics(), FIDStatistics()
    names: list[str] = []
    parts: list[np.ndarray] = []
    error: Exception | None = None
    try:
        for batch_names, taps in iterate_features(images, extractor, ["2048", "spatial"], batch_size=batch_size,
                                                  workers=workers, progress=progress, shard=True):
            names.extend(batch_names)
            parts.append(taps["2048"].numpy())
            stats.update(taps["2048"])
            spatial.update(taps["spatial"])
    except (DatasetError, InputError) as exc:
        error = exc
    fail_together(error)
    stats.all_reduce()
    spatial.all_reduce()
    pool = np.concatenate(parts) if parts else np.zeros((0, 2048), np.float32)
    if rank_world()[1] > 1:
        _, gathered = gather_in_order(image_names(images), names, {"2048": pool})
        pool = gathered["2048"]
    return pool, stats, spatial


def first_images(images: Images, count: int, extractor: Extractor,
                 batch_size: int = 64) -> tuple[tuple[int, int, int, int], Iterator[np.ndarray]]:
    """The first ``count`` images as (N x H x W x 3 shape, uint8 batches), for an ADM reference batch's ``arr_0``:
    an array's own bytes, or a folder's images decoded as the preset decodes them (they must share one size)."""
    count = min(count, image_count(images))
    if isinstance(images, ImageArray):
        shape = (count, images.height, images.width, 3)
        batches = (rgb[: count - start] for start, rgb in images.batches(batch_size) if start < count)
        return shape, batches
    first = extractor.preset.decode(images[0])

    def one(i: int) -> np.ndarray:
        rgb = first if i == 0 else extractor.preset.decode(images[i])
        if rgb.shape != first.shape:
            raise InputError(f"{display_name(images[i])}: {rgb.shape[1]}x{rgb.shape[0]}, but arr_0 holds one size "
                             f"({first.shape[1]}x{first.shape[0]}, the first image's); resize the images first")
        return rgb

    def decoded() -> Iterator[np.ndarray]:
        for start in range(0, count, batch_size):
            yield np.stack([one(i) for i in range(start, min(start + batch_size, count))])

    return (count, first.shape[0], first.shape[1], 3), decoded()


def adm_inception_score(pool: np.ndarray, fc_weight: torch.Tensor) -> float:
    """The evaluator's IS: softmax of pool features times the fc weights (no bias), in consecutive splits of
    5,000, the mean over splits. One split's logits at a time (40 MB), however many samples."""
    weight = fc_weight.detach().double().cpu()
    scores = [split_score(torch.from_numpy(pool[start:start + IS_SPLIT_SIZE]).double() @ weight.T)
              for start in range(0, len(pool), IS_SPLIT_SIZE)]
    if not scores:
        raise InputError("IS needs at least one sample")
    return float(np.mean(scores))


def adm_evaluate(ref: str | os.PathLike, sample: str | os.PathLike, *, weights: str | os.PathLike | None = None,
                 device: str | torch.device | None = None, backend: str = "eager", batch_size: int = 64,
                 workers: int = 0, progress: bool = False) -> ADMResult:
    """The evaluator's IS, FID, sFID, precision and recall for ``sample`` against ``ref`` (each a folder, an image
    array or an ADM ``.npz`` batch; ``ref`` may also be a statistics-only batch, which leaves out precision and
    recall)."""
    extractor = make_extractor(ADM_PRESET, weights, device=device, backend=backend,
                               images=sum(count_images(p) for p in (ref, sample)))
    ref_side = adm_side(ref, extractor, batch_size=batch_size, workers=workers, progress=progress)
    sample_side = adm_side(sample, extractor, batch_size=batch_size, workers=workers, progress=progress)
    notes: list[str] = []
    if sample_side.pool is None:
        raise InputError(f"{sample}: the sample batch must hold images (IS, precision and recall need them)")
    fid = frechet_distance(sample_side.stats, ref_side.stats).fid
    sfid = frechet_distance(sample_side.spatial, ref_side.spatial).fid
    score = adm_inception_score(sample_side.pool, extractor.model.fc.weight)
    if extractor.weights_sha256 != FID_SHA256:
        notes.append(f"IS comes from {extractor.weights}, not the published FID network")
    precision = recall = None
    if ref_side.pool is None:
        notes.append(f"{ref}: statistics only (no arr_0), so no precision and recall")
    elif min(len(ref_side.pool), len(sample_side.pool)) <= PRC_K:
        notes.append(f"precision and recall need more than {PRC_K} images per side")
    else:
        pr = precision_recall(sample_side.pool, ref_side.pool, k=PRC_K, max_block=PRC_BLOCK, dtype=np.float32)
        precision, recall = pr.precision, pr.recall
    for note in notes:
        warnings.warn(note, stacklevel=2)
    return ADMResult(score, fid, sfid, precision, recall, ref_side, sample_side, extractor.meta(), notes)


__all__ = ["ADMResult", "ADMSide", "IS_SPLIT_SIZE", "adm_evaluate", "adm_inception_score", "adm_side",
           "count_images", "first_images"]
