"""Generative-model metrics (FID, KID, IS, precision/recall) and feature extraction, on the FID network or any
InceptionV3.

``inceptionv3 fid A B`` compares two image folders, ``.npz`` statistics or saved features; ``inceptionv3 features
DIR`` writes the chosen taps of every image; :class:`FIDMetric` scores image batches inside a training loop. The
pieces live in :mod:`.fid_network` (the network, its weights and taps), :mod:`.fid_presets` (each implementation's
preprocessing) and :mod:`.fid_math` (statistics, distances).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .decode import ImageLoadError
from .errors import DatasetError, InputError
from .fid_math import (
    FIDStatistics,
    FrechetDistance,
    frechet_distance,
    inception_score,
    kernel_inception_distance,
    npz_keys,
    precision_recall,
    read_npz,
)
from .fid_network import DIMS, check_layers, forward_taps, load_fid_network
from .fid_presets import DEFAULT_PRESET, FIDPreset, get_preset, model_preset
from .files import atomic_path, display_name, find_images
from .image_arrays import ImageArray, is_image_array
from .model import InceptionV3
from .runtime import all_reduce_sum, full_fp32, is_main_process, rank_world, select_device, shard
from .version import versions
from .weights import FID_MODEL

#: Largest array a features file may declare: 16 GiB, about two million images of 2048 float32 features.
MAX_FEATURE_BYTES = 16 * 1024**3

_SHOW = 5  # unreadable files named in an error


def files_digest(files: Sequence[str | os.PathLike], root: str | os.PathLike | None = None) -> str:
    """sha256 over the sorted relative names and sizes: tells two statistics files of the same folder apart
    from two of different folders without hashing every image."""
    hasher = hashlib.sha256()
    for path in sorted(os.fspath(f) for f in files):
        name = os.path.relpath(path, root) if root is not None else path
        size = os.stat(path).st_size if os.path.exists(path) else -1
        hasher.update(os.fsencode(name) + b"\0" + str(size).encode() + b"\n")
    return hasher.hexdigest()


FEATURE_BACKENDS = ("auto", "eager", "openvino")


class _Taps(torch.nn.Module):
    """The requested taps side by side in one tensor, so that an exported graph has a single output. ``layers``
    is an attribute, so the export cache (keyed on the model's settings and tensors) tells tap sets apart."""

    def __init__(self, model: InceptionV3, layers: Sequence[str]) -> None:
        super().__init__()
        self.model = model
        self.layers = tuple(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        taps = forward_taps(self.model, x, self.layers)
        return torch.cat([taps[layer] for layer in self.layers], dim=1)


@dataclass
class Extractor:
    """A network, its preprocessing and what identifies them in saved results; ``backend`` runs the network
    (``openvino``: the taps exported once to the cache, CPU only; features within ~1e-6 of their range of
    eager's, not equal)."""

    model: InceptionV3
    preset: FIDPreset
    weights: str
    weights_sha256: str | None
    device: torch.device
    backend: str = "eager"
    _runners: dict = field(default_factory=dict, repr=False)

    def meta(self) -> dict[str, Any]:
        return {"preset": self.preset.name, "weights": self.weights, "weights_sha256": self.weights_sha256,
                "backend": self.backend, "versions": versions()}

    def taps(self, x: torch.Tensor, layers: Sequence[str]) -> dict[str, torch.Tensor]:
        """The taps of a prepared batch, float32 on the CPU."""
        if self.backend == "eager":
            with torch.no_grad(), full_fp32():
                return {k: v.float().cpu() for k, v in forward_taps(self.model, x, layers).items()}
        key = tuple(layers)
        if key not in self._runners:
            from .backends import make_runner

            self._runners[key] = make_runner(_Taps(self.model, key).eval(), self.backend, "fp32", self.device,
                                             x.shape[-1])
        joined = self._runners[key](x.cpu()).float()
        sizes = [self.model.num_classes if layer.startswith("logits") else DIMS[layer] for layer in key]
        return dict(zip(key, joined.split(sizes, dim=1), strict=True))


def make_extractor(preset: str | None = None, weights: str | os.PathLike | None = None,
                   model: InceptionV3 | None = None, device: str | torch.device | None = None,
                   backend: str = "eager", images: int | None = None) -> Extractor:
    """The FID network (published weights, or ``weights``) with a named preset; or ``model`` (any InceptionV3
    from ``get_model``) with its own preprocessing, unless a preset is named. ``backend='openvino'`` runs the
    network through OpenVINO on the CPU (faster there; features differ from eager in the last digits);
    ``'auto'`` chooses as ``predict`` does for a run of ``images``: OpenVINO on a CPU from 16 images when it is
    installed, else eager."""
    device = select_device(device)
    if backend not in FEATURE_BACKENDS:
        raise InputError(f"--backend must be one of {', '.join(FEATURE_BACKENDS)}, got {backend!r}")
    if backend == "auto":
        from .backends import choose_backend

        backend = "openvino" if choose_backend(device, "fp32", images) == "openvino" else "eager"
    if backend != "eager" and device.type != "cpu":
        raise InputError(f"backend {backend} runs on the CPU; use eager on {device.type}")
    if model is not None:
        if weights is not None:
            raise InputError("pass either a model or FID weights, not both")
        info = getattr(model, "weights_info", None)
        chosen = get_preset(preset) if preset else model_preset(model)
        name = (info.name or info.path or info.source) if info is not None else "custom model"
        return Extractor(model.to(device).eval(), chosen, str(name), None, device, backend)
    network = load_fid_network(weights, device)
    name = FID_MODEL if weights is None else f"{FID_MODEL} (file {Path(network.weights_path).name})"
    return Extractor(network.model, get_preset(preset or DEFAULT_PRESET), name, network.weights_sha256, device,
                     backend)


class _Images(torch.utils.data.Dataset):
    """Decodes and resizes one image per item, in the loader's workers; a bad file becomes its reason."""

    def __init__(self, files: Sequence[str], preset: FIDPreset) -> None:
        self.files = list(files)
        self.preset = preset

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, str | None]:
        try:
            return index, self.preset.load(self.files[index]), None
        except ImageLoadError as exc:
            return index, None, str(exc)


def _as_list(batch: list) -> list:
    return batch


def _world_size() -> int:
    return rank_world()[1]


def _shard(files: list[str], batch_size: int) -> list[str]:
    """This process's share under torchrun: whole batches, round robin (:func:`runtime.shard`), so features are
    bit-identical to a one-process run at the same batch size and no file is padded in twice."""
    rank, world = rank_world()
    return [files[i] for i in shard(len(files), batch_size, rank, world)]


def fail_together(error: Exception | None) -> None:
    """Under torchrun, a process that hits an error must not leave the others waiting in an all-reduce:
    all agree first, and all raise (the others with a pointer to the process that failed)."""

    rank, world = rank_world()
    if world == 1:
        if error is not None:
            raise error
        return
    _agree(error, rank, world, all_reduce_sum)


def _agree(error: Exception | None, rank: int, world: int, all_reduce: Any) -> None:
    """The agreement, given a summing all-reduce (tests pass a fake one): each process's own error, or a
    :class:`DatasetError` naming the processes that failed."""
    failed = torch.zeros(world, dtype=torch.float64)
    failed[rank] = error is not None
    all_reduce(failed)
    if error is not None:
        raise error
    if failed.any():
        ranks = ", ".join(str(r) for r in failed.nonzero().flatten().tolist())
        raise DatasetError(f"process(es) {ranks} of this torchrun failed (see their error)")


Images = list[str] | ImageArray
"""What features are computed over: image files, or one N x H x W x 3 uint8 array (an ADM ``.npz`` batch)."""


def iterate_features(images: Images, extractor: Extractor, layers: Sequence[str], *, batch_size: int = 50,
                     workers: int = 0, skip_bad: bool = False, progress: bool = False,
                     shard: bool = False) -> Iterator[tuple[list[str], dict[str, torch.Tensor]]]:
    """(image names, {layer: N x d float32 CPU tensor}) per batch, in order; with ``shard``, only this torchrun
    process's whole batches. An unreadable file stops the run with a :class:`DatasetError` naming the bad files
    (decoding goes on to find them all, the network does not), unless ``skip_bad``, when it is left out with a
    warning. An array's images are read a batch at a time and prepared in this process (nothing to decode)."""
    layers = check_layers(layers)
    if batch_size < 1:
        raise InputError("--batch-size must be at least 1")
    if isinstance(images, ImageArray):
        yield from _iterate_array(images, extractor, layers, batch_size, workers, progress, shard)
        return
    names = _shard(images, batch_size) if shard else [os.fspath(f) for f in images]
    if len(names) <= batch_size:  # one batch: no decoding to overlap with the network, so no workers to start
        workers = 0
    loader = torch.utils.data.DataLoader(_Images(names, extractor.preset), batch_size=batch_size,
                                         num_workers=max(0, workers), collate_fn=_as_list)
    bad: list[str] = []
    for batch in _progress(loader, progress, len(loader)):
        good = [(index, tensor) for index, tensor, reason in batch if reason is None]
        bad.extend(reason for _, _, reason in batch if reason is not None)
        if not good or (bad and not skip_bad):
            continue
        x = torch.stack([tensor for _, tensor in good]).to(extractor.device)
        yield [names[i] for i, _ in good], extractor.taps(x, layers)
    if bad and not skip_bad:
        shown = "; ".join(display_name(b) for b in bad[:_SHOW]) + (f" (and {len(bad) - _SHOW} more)"
                                                                   if len(bad) > _SHOW else "")
        raise DatasetError(f"{len(bad)} unreadable image(s): {shown}; pass --skip-bad to leave them out")
    if bad:
        warnings.warn(f"skipped {len(bad)} unreadable image(s), e.g. {display_name(bad[0])}", stacklevel=2)


class _ArrayBatches(torch.utils.data.Dataset):
    """One item per batch of an array: read by seeking and prepared in the loader's workers, as files are decoded
    in theirs (a deflated member is read front to back instead, in this process)."""

    def __init__(self, array: ImageArray, preset: FIDPreset, batch_size: int, batches: Sequence[int]) -> None:
        self.array, self.preset, self.batch_size, self.batches = array, preset, batch_size, list(batches)

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, item: int) -> tuple[int, torch.Tensor]:
        start = self.batches[item] * self.batch_size
        return start, self.prepare(self.array.read(start, self.batch_size))

    def prepare(self, rgb: np.ndarray) -> torch.Tensor:
        return torch.stack([self.preset.prepare(image) for image in rgb])


def _iterate_array(array: ImageArray, extractor: Extractor, layers: list[str], batch_size: int, workers: int,
                   progress: bool, shard: bool) -> Iterator[tuple[list[str], dict[str, torch.Tensor]]]:
    rank, world = rank_world() if shard else (0, 1)
    mine = range(rank, math.ceil(array.count / batch_size), world)
    dataset = _ArrayBatches(array, extractor.preset, batch_size, mine)
    if array.deflated or workers < 1:
        prepared = ((start, dataset.prepare(rgb)) for start, rgb in array.batches(batch_size, first=rank, step=world))
    else:
        prepared = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=workers)
    for start, x in _progress(prepared, progress, len(mine)):
        yield [array.name(start + i) for i in range(len(x))], extractor.taps(x.to(extractor.device), layers)


def _progress(batches: Any, show: bool, total: int) -> Any:
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        return batches
    return tqdm(batches, disable=not show, unit="batch", total=total, file=sys.stderr)


def image_names(images: Images) -> list[str]:
    """Every image's name in order: the files, or ``samples.npz:arr_0[i]`` for an array."""
    return [images.name(i) for i in range(images.count)] if isinstance(images, ImageArray) else list(images)


def image_count(images: Images) -> int:
    return images.count if isinstance(images, ImageArray) else len(images)


def _images_digest(images: Images, kept: Sequence[str], root: str | os.PathLike | None) -> str:
    return images.digest() if isinstance(images, ImageArray) else files_digest(kept, root)


PYTORCH_FID_EXTENSIONS = ("bmp", "jpg", "jpeg", "pgm", "png", "ppm", "tif", "tiff", "webp")


def pytorch_fid_files(folder: str | os.PathLike) -> list[str]:
    """The files pytorch-fid reads from a folder: ``*.EXT`` for its lower-case extensions, in the folder itself
    only (not below it), case-sensitively, sorted as paths."""
    path = Path(folder)
    return [os.fspath(f) for f in sorted(f for ext in PYTORCH_FID_EXTENSIONS for f in path.glob(f"*.{ext}"))]


def find_inputs(path: str | os.PathLike, pytorch_fid_glob: bool = False) -> Images:
    """A folder's images (found recursively and case-insensitively, or exactly pytorch-fid's set), or an image
    array (an ``.npy``, or an ``.npz`` holding ``arr_0``). For folders, when the two sets differ the default
    warns with both counts, since FID over another set of files is another number."""
    if os.fspath(path).endswith((".npz", ".npy")) and not Path(path).is_dir():
        if not is_image_array(path):
            raise InputError(f"{display_name(path)}: holds no image array ('arr_0'); statistics and features files "
                             "are compared, not read as images")
        return ImageArray.open(path)
    folder = Path(path)
    if not folder.is_dir():
        raise InputError(f"{display_name(path)}: not a folder of images, an image array (.npz with arr_0, .npy) or "
                         "a .npz statistics or features file")
    theirs = pytorch_fid_files(folder)
    if pytorch_fid_glob:
        files = theirs
        searched = f"{', '.join('*.' + e for e in PYTORCH_FID_EXTENSIONS)}, case-sensitive, not in subfolders"
    else:
        files = [os.fspath(p) for p in find_images(folder)]
        searched = ".jpg, .png, .bmp, .webp, .tif, .gif in any case, recursively"
        if files and sorted(theirs) != sorted(files):
            warnings.warn(f"{display_name(path)}: {len(files)} images found here, but pytorch-fid would read "
                          f"{len(theirs)} (it does not look in subfolders, matches extensions case-sensitively and "
                          "also reads .pgm/.ppm); pass --pytorch-fid-glob to use its set", stacklevel=3)
    if not files:
        raise DatasetError(f"{display_name(path)}: no images found (looked for {searched})")
    return files


@dataclass
class Features:
    """Per-image features of a folder: ``arrays[layer]`` is N x d float32, rows in ``files`` order."""

    files: list[str]
    arrays: dict[str, np.ndarray]
    meta: dict[str, Any] = field(default_factory=dict)

    def save(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        path = Path(path)
        if path.suffix != ".npz":
            raise InputError(f"{path}: features files end in .npz")
        if path.exists() and not overwrite:
            raise InputError(f"{path} exists; pass --overwrite to replace it")
        with atomic_path(path, suffix=".partial.npz") as tmp:
            np.savez(tmp, files=np.array(self.files, dtype=str), meta=np.array(json.dumps(self.meta, sort_keys=True)),
                     **self.arrays)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Features:
        """A file :meth:`save` wrote (``inceptionv3 features``); every array must have one row per file."""
        arrays = read_npz(path, dict.fromkeys(npz_keys(path), MAX_FEATURE_BYTES))
        files, meta = arrays.pop("files", None), arrays.pop("meta", None)
        if files is None or meta is None:
            raise InputError(f"{display_name(path)}: not a features file ('files' and 'meta' missing)")
        try:
            meta = json.loads(str(meta))
        except ValueError:
            raise InputError(f"{display_name(path)}: its 'meta' entry is not JSON") from None
        for layer, array in arrays.items():
            if array.ndim != 2 or len(array) != len(files) or not np.isfinite(array).all():
                raise InputError(f"{display_name(path)}: {layer!r} is {array.shape} for {len(files)} files, or not "
                                 "finite")
        return cls([str(f) for f in files], arrays, meta)


def extract_features(inputs: str | os.PathLike | Sequence[str | os.PathLike], layers: Sequence[str] = ("2048",), *,
                     preset: str | None = None, weights: str | os.PathLike | None = None,
                     model: InceptionV3 | None = None, batch_size: int = 50, workers: int = 0,
                     device: str | torch.device | None = None, skip_bad: bool = False,
                     progress: bool = False, backend: str = "eager", pytorch_fid_glob: bool = False) -> Features:
    """The ``layers`` taps of every image of a folder (or a list of files), in one pass per batch.
    Default network: the FID network with the pytorch-fid preset; ``model=get_model(...)`` uses that model and
    its own preprocessing (the ``2048`` tap is then its pooled features)."""
    root = inputs if isinstance(inputs, (str, os.PathLike)) else None
    images = find_inputs(root, pytorch_fid_glob) if root is not None else [os.fspath(f) for f in inputs]
    extractor = make_extractor(preset, weights, model, device, backend, images=image_count(images))
    layers = check_layers(layers)
    kept: list[str] = []
    parts: dict[str, list[np.ndarray]] = {layer: [] for layer in layers}
    error: Exception | None = None
    try:
        for names, taps in iterate_features(images, extractor, layers, batch_size=batch_size, workers=workers,
                                            skip_bad=skip_bad, progress=progress, shard=True):
            kept.extend(names)
            for layer in layers:
                parts[layer].append(taps[layer].numpy())
    except (DatasetError, InputError) as exc:
        error = exc
    fail_together(error)
    arrays = {layer: np.concatenate(chunks) if chunks else np.zeros((0, DIMS.get(layer, 0)), np.float32)
              for layer, chunks in parts.items()}
    if _world_size() > 1:
        kept, arrays = gather_in_order(image_names(images), kept, arrays)
    meta = dict(extractor.meta(), layers=layers, n=len(kept), skipped=image_count(images) - len(kept),
                files_digest=_images_digest(images, kept, root))
    return Features(kept, arrays, meta)


def gather_in_order(files: list[str], kept: list[str], arrays: dict[str, np.ndarray],
                          all_gather: Any = None) -> tuple[list[str], dict[str, np.ndarray]]:
    """Every process's rows, on every process, in the order of ``files`` (each process ran whole batches).
    ``all_gather(part)`` returns every process's part in rank order (tests pass a fake one)."""
    if all_gather is None:
        import torch.distributed as dist

        def all_gather(part: Any) -> list:
            gathered: list = [None] * _world_size()
            dist.all_gather_object(gathered, part)
            return gathered

    parts = all_gather((kept, arrays))
    position = {name: i for i, name in enumerate(files)}
    names = [name for part in parts for name in part[0]]
    order = np.argsort([position[name] for name in names], kind="stable")
    joined = {layer: np.concatenate([part[1][layer] for part in parts])[order] for layer in arrays}
    return [names[i] for i in order], joined


@dataclass
class FolderResult:
    """What one pass over a folder gives: its statistics and, when asked for, the raw features KID and IS need."""

    stats: FIDStatistics
    features: np.ndarray | None = None
    logits_unbiased: np.ndarray | None = None
    names: list[str] | None = None
    """With the features: each row's image name, in order."""
    images: Images | None = None
    """What the images were read from (a file list, or an array)."""


def folder_statistics(folder: str | os.PathLike, extractor: Extractor, *, layer: str = "2048",
                      batch_size: int = 50, workers: int = 0, skip_bad: bool = False, keep_features: bool = False,
                      keep_logits: bool = False, progress: bool = False,
                      pytorch_fid_glob: bool = False) -> FolderResult:
    """Streamed float64 statistics of one tap over a folder, combined across torchrun processes."""
    images = find_inputs(folder, pytorch_fid_glob)
    if (keep_features or keep_logits) and _world_size() > 1:
        raise InputError("KID, IS and precision/recall need every feature in one process; run them without torchrun")
    layers = [layer] + (["logits_unbiased"] if keep_logits and layer != "logits_unbiased" else [])
    stats = FIDStatistics()
    kept: list[str] = []
    features: list[np.ndarray] = []
    logits: list[np.ndarray] = []
    error: Exception | None = None
    try:
        for names, taps in iterate_features(images, extractor, layers, batch_size=batch_size, workers=workers,
                                            skip_bad=skip_bad, progress=progress, shard=True):
            kept.extend(names)
            stats.update(taps[layer])
            if keep_features:
                features.append(taps[layer].numpy())
            if keep_logits:
                logits.append(taps["logits_unbiased"].numpy())
    except (DatasetError, InputError) as exc:
        error = exc
    fail_together(error)
    stats.all_reduce()
    stats.meta = dict(extractor.meta(), layer=layer, dims=DIMS.get(layer, stats.dims), n=stats.n,
                      skipped=image_count(images) - stats.n, files_digest=_images_digest(images, images, folder))
    return FolderResult(stats, np.concatenate(features) if features else None,
                        np.concatenate(logits) if logits else None, kept if keep_features else None, images)


_COMPARED = ("preset", "weights_sha256", "layer")


def check_comparable(meta1: dict, meta2: dict, force: bool = False) -> None:
    """Statistics from different preprocessing, weights or layers give meaningless FIDs: refuse unless forced."""
    differ = [f"{key}: {meta1[key]!r} vs {meta2[key]!r}" for key in _COMPARED
              if meta1.get(key) is not None and meta2.get(key) is not None and meta1[key] != meta2[key]]
    if differ and not force:
        raise InputError(f"the two sides were computed differently ({'; '.join(differ)}); pass --force to "
                         "compare them anyway")
    if differ:
        warnings.warn(f"comparing statistics computed differently: {'; '.join(differ)}", stacklevel=2)


class FIDMetric:
    """FID inside a training or evaluation loop, in the manner of torchmetrics' ``FrechetInceptionDistance``: feed
    uint8 image batches (N x 3 x H x W) marked real or fake, then call :meth:`compute`.

    Each image goes through the preset exactly as a file would, so an in-loop FID equals the folder FID of the same
    images. Statistics stream in float64: memory is O(d^2) however many images pass. Under DDP each process
    updates with its own images, and :meth:`compute` (which every process must call) combines them exactly,
    leaving each process's own statistics as they were so that updates can go on. :meth:`reset` forgets the fake
    images, and the real ones too unless ``reset_real=False``. Real statistics can instead come from a file made
    by ``inceptionv3 fid --save-stats`` with the same preset and weights (``real_stats=``)."""

    def __init__(self, preset: str = DEFAULT_PRESET, *, weights: str | os.PathLike | None = None,
                 model: InceptionV3 | None = None, layer: str = "2048", device: str | torch.device | None = None,
                 reset_real: bool = True, normalize: bool = False,
                 real_stats: FIDStatistics | str | os.PathLike | None = None) -> None:
        self.extractor = make_extractor(preset, weights, model, device)
        self.layer = check_layers([layer])[0]
        self.reset_real = reset_real
        self.normalize = normalize
        self.real, self.fake = FIDStatistics(), FIDStatistics()
        self._real_from_file = False
        if real_stats is not None:
            self.set_real_stats(real_stats)

    def meta(self) -> dict[str, Any]:
        return dict(self.extractor.meta(), layer=self.layer)

    def set_real_stats(self, stats: FIDStatistics | str | os.PathLike) -> None:
        """Use precomputed real statistics (the same on every process, so they are never all-reduced)."""
        if not isinstance(stats, FIDStatistics):
            stats = FIDStatistics.load(stats)
        check_comparable(stats.meta, self.meta())
        self.real, self._real_from_file = stats, True

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise InputError(f"images must be an N x 3 x H x W tensor, got {shape}")
        if self.normalize:
            if not images.is_floating_point():
                raise InputError(f"normalize=True takes float images in [0, 1], got {images.dtype}")
            images = (images * 255).byte()  # torchmetrics' conversion: truncation, not rounding
        elif images.dtype != torch.uint8:
            raise InputError(f"images must be uint8 (0-255), got {images.dtype}; pass normalize=True for floats "
                             "in [0, 1]")
        rgb = images.permute(0, 2, 3, 1).cpu().numpy()
        return torch.stack([self.extractor.preset.prepare(image) for image in rgb]).to(self.extractor.device)

    def update(self, images: torch.Tensor, real: bool) -> None:
        if real and self._real_from_file:
            raise InputError("the real statistics came from a file; update with fake images only (real=False)")
        if len(images) == 0:
            return
        features = self.extractor.taps(self._prepare(images), [self.layer])[self.layer]
        (self.real if real else self.fake).update(features)

    def compute(self) -> FrechetDistance:
        """FID (with its parts) of the fake images against the real ones, over every process."""
        real = self.real if self._real_from_file else copy.deepcopy(self.real).all_reduce()
        fake = copy.deepcopy(self.fake).all_reduce()
        real_known = real.n >= 2 or real.stored_sigma is not None  # some foreign files do not say their n
        if fake.n < 2 or not real_known:
            raise InputError(f"FID needs at least 2 images per side, have {real.n} real and {fake.n} fake")
        return frechet_distance(fake, real)

    def reset(self) -> None:
        self.fake = FIDStatistics()
        if self.reset_real and not self._real_from_file:
            self.real = FIDStatistics()


__all__ = ["Extractor", "FIDMetric", "FIDStatistics", "Features", "FolderResult", "FrechetDistance", "Images",
           "check_comparable", "extract_features", "fail_together", "find_inputs", "folder_statistics",
           "frechet_distance", "gather_in_order", "image_count", "image_names", "inception_score", "is_main_process",
           "iterate_features", "kernel_inception_distance", "make_extractor", "precision_recall", "pytorch_fid_files"]
