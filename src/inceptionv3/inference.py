"""Classify images: ``inference_model`` for mmpretrain's one-call API, ``Classifier`` for loops and streams.

``inference_model`` returns mmpretrain's dicts (``pred_scores``, ``pred_label``, ``pred_score``,
``pred_class``), but keeps the loaded model between calls: users call it in a loop, and rebuilding the
model each time is what makes mmpretrain's version slow.

``Classifier.predict`` streams: worker threads decode and crop the next images while the model runs on
the current batch (OpenCV, Pillow and PyTorch all release the GIL), and a bad input becomes a
``Prediction`` with ``error`` set instead of stopping the stream.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from .decode import DECODE_MODES, MAX_BYTES, MAX_IMAGE_PIXELS, ImageInput, ImageLoadError, describe_input, load_image
from .errors import InputError
from .imagenet import imagenet_classes
from .preprocess import PRESETS, VIEW_COUNTS, Preprocess, warn_if_small_crop
from .runtime import full_fp32, select_device
from .weights import DEFAULT_MODEL, get_model, resolve_model

if TYPE_CHECKING:
    from .explain import Explanation
    from .faithfulness import Faithfulness

logger = logging.getLogger("inceptionv3")

#: The per-image error when the model's scores are NaN or infinite (broken weights, or an fp16 overflow).
NON_FINITE_OUTPUT = "the model's output is not finite (NaN or inf); check the weights for NaN or inf values"


def top_classes(scores: np.ndarray, k: int) -> np.ndarray:
    """The indices of the k best scores, best first; ties keep the lower label first. The one top-k of the
    package: ``predict``, ``test``, and the server's v1 and v2 answers all rank with it."""
    return np.argsort(-scores, kind="stable")[:k]


@dataclass
class Prediction:
    """One input's result. On failure ``error`` holds the reason and the score fields are ``None``."""

    index: int
    name: str
    """The input: its path as given, or its kind and position (``<bytes #3>``)."""
    scores: np.ndarray | None = None
    label: int | None = None
    score: float | None = None
    class_name: str | None = None
    error: str | None = None
    error_kind: str | None = None
    """With ``error``: one of ``decode.LOAD_ERROR_KINDS``, for counting failures without reading the words."""

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def source(self) -> str:
        """The old name of ``name``, kept for code written against 0.1.0."""
        warnings.warn("Prediction.source is now Prediction.name", DeprecationWarning, stacklevel=2)
        return self.name

    def topk(self, k: int, class_names: Sequence[str] | None = None) -> list[tuple[int, str | None, float]]:
        """The k best (label, class name, score), best first; ties keep the lower label first."""
        if self.scores is None:
            return []
        return [(int(i), class_names[i] if class_names else None, float(self.scores[i]))
                for i in top_classes(self.scores, k)]

    def to_dict(self) -> dict:
        """mmpretrain's result dict: the same keys and types (``pred_class`` only when class names are known)."""
        if self.error is not None:
            raise ImageLoadError(self.name, self.error, kind=self.error_kind or "other")
        result = {"pred_scores": self.scores, "pred_label": self.label, "pred_score": self.score}
        if self.class_name is not None:
            result["pred_class"] = self.class_name
        return result


class PredictionError(ImageLoadError):
    """Some inputs of a list failed. ``results`` keeps every other result (``None`` where an input failed),
    so that one bad file never costs the rest of the batch."""

    def __init__(self, failures: list[Prediction], results: list[dict | None]):
        listed = "; ".join(f"{p.name}: {p.error}" for p in failures[:5])
        more = f"; and {len(failures) - 5} more" if len(failures) > 5 else ""
        ValueError.__init__(self, f"{len(failures)} of {len(results)} inputs failed: {listed}{more}")
        self.name, self.reason = failures[0].name, failures[0].error
        self.kind = failures[0].error_kind or "other"
        self.failures = failures
        self.results = results


class Classifier:
    """A model with its preprocessing and class names, loaded once and reused.

    ``model`` is a zoo name, a checkpoint path or an ``nn.Module`` (one from ``get_model`` carries its
    preset; any other gets the torchvision preset unless ``preprocess`` is given); ``pretrained=PATH`` loads a
    file into the named model, or alone (``model=None``) names the model itself, as ``--weights`` does
    (``weights.resolve_model``). With neither, the default model. ``crop_size`` rescales
    the preset (with a warning below 299 on ImageNet weights). ``crops=10`` or ``144`` averages the softmax
    over multi-crop views (``Preprocess.view_boxes``). NumPy arrays are read as **BGR**, as in mmpretrain;
    PIL images and files as what they are.

    ``backend="auto"`` (the default) runs the fastest installed path (``backends.choose_backend``); give
    ``expected_images`` for a long run so that ``torch.compile`` can be chosen when it pays off, and
    ``backend="eager"`` for the reference's exact arithmetic. ``decode="fast"`` decodes large JPEGs at a reduced
    DCT scale that still covers the preset's resize (several times faster on camera photos); ``"auto"`` keeps
    the exact decode for eager fp32 and takes the fast one with the other backends.
    """

    def __init__(
        self,
        model: str | os.PathLike | nn.Module | None = DEFAULT_MODEL,
        pretrained: bool | str | os.PathLike = True,
        *,
        device: str | torch.device | None = None,
        batch_size: int = 16,
        workers: int | None = None,
        preprocess: Preprocess | str | None = None,
        crop_size: int | None = None,
        class_names: Sequence[str] | None = None,
        crops: int = 1,
        backend: str = "auto",
        precision: str = "fp32",
        calibration: Sequence[ImageInput] | None = None,
        max_pixels: int = MAX_IMAGE_PIXELS,
        max_bytes: int = MAX_BYTES,
        expected_images: int | None = None,
        transform_input: bool = False,
        decode: str = "auto",
    ):
        if batch_size < 1:
            raise InputError(f"batch_size must be at least 1, got {batch_size}")
        if crops not in VIEW_COUNTS:
            raise InputError(f"crops must be one of {VIEW_COUNTS}, got {crops}")
        if isinstance(model, nn.Module):
            self.model = model
        else:
            choice = resolve_model(model, None if isinstance(pretrained, bool) else pretrained)
            self.model = get_model(choice.name_or_path, choice.pretrained if pretrained is not False else False,
                                   transform_input=transform_input)
        info = getattr(self.model, "weights_info", None)
        if isinstance(preprocess, str):
            if preprocess not in PRESETS:
                raise InputError(f"preprocess={preprocess!r}: choose one of {', '.join(PRESETS)}")
            preprocess = PRESETS[preprocess]
        self.preprocess = preprocess or (info.preprocess if info else PRESETS["torchvision"])
        if crop_size is not None:
            self.preprocess = self.preprocess.with_crop(crop_size)
        num_classes = self.model.num_classes if hasattr(self.model, "num_classes") else None
        if class_names is None and info is not None:
            class_names = info.class_names
        if class_names is None and num_classes == 1000:
            class_names = imagenet_classes()
        if class_names is not None and num_classes is not None and len(class_names) != num_classes:
            raise InputError(f"class_names has {len(class_names)} names but the model has {num_classes} classes")
        self.class_names = tuple(class_names) if class_names is not None else None
        self.num_classes = num_classes or len(self.class_names or ())
        warn_if_small_crop(self.preprocess, num_classes or 0)
        self.device = select_device(device)
        self.model.to(self.device).eval()
        self.batch_size = batch_size
        self.crops = crops
        if backend == "auto":
            from .backends import choose_backend

            backend = choose_backend(self.device, precision, expected_images)
        self.backend, self.precision = backend, precision
        self._runner = self._make_runner(calibration)
        self.backend = self._runner.backend  # eager when the export cache was unusable
        self.workers = workers if workers is not None else min(4, os.cpu_count() or 1)
        self.max_pixels = max_pixels
        self.max_bytes = max_bytes
        if decode not in DECODE_MODES:
            raise InputError(f"decode must be one of {', '.join(DECODE_MODES)}, got {decode!r}")
        if decode == "auto":  # the exact path keeps the reference's pixels; the fast backends are not exact anyway
            decode = "exact" if (self.backend, self.precision) == ("eager", "fp32") else "fast"
        self.decode = decode
        self.min_side = self.preprocess.min_decode_side() if decode == "fast" else None

    def __repr__(self) -> str:
        info = getattr(self.model, "weights_info", None)
        name = (info.name or info.path) if info else type(self.model).__name__
        return (f"Classifier({name!r}, device={str(self.device)!r}, preprocess={self.preprocess.name!r}, "
                f"backend={self.backend!r}, precision={self.precision!r}, decode={self.decode!r})")

    def _make_runner(self, calibration: Sequence[ImageInput] | None):
        from .backends import make_runner

        images = None
        if calibration:
            images = self.preprocess.batch(calibration)
        return make_runner(self.model, self.backend, self.precision, self.device, self.preprocess.crop,
                           calibration=images)

    @torch.inference_mode()
    def scores(self, batch: torch.Tensor) -> torch.Tensor:
        """Softmax scores for a normalised N x 3 x H x W batch, on the CPU, float32."""
        batch = batch.to(self.device, non_blocking=True)
        return torch.softmax(self._runner(batch).float(), dim=1).cpu()

    def load_photo(self, item: ImageInput, name: str, *, max_pixels: int | None = None,
                   max_bytes: int | None = None, min_side: int | None = None) -> np.ndarray:
        """Decode one input to H x W x 3 uint8 RGB with the preset's decoder, within this classifier's limits or
        the caller's (the server's). Raises ``ImageLoadError`` naming the input. Thread-safe."""
        return load_image(item, **self.preprocess.decode_options, name=name, max_pixels=max_pixels or self.max_pixels,
                          max_bytes=max_bytes or self.max_bytes, min_side=min_side)

    def load_views(self, item: ImageInput, name: str, *, max_pixels: int | None = None,
                   max_bytes: int | None = None) -> np.ndarray:
        """Decode one input and cut the views the model scores: ``crops`` x crop x crop x 3 uint8 RGB. ``predict``
        and the server both decode with this, from their pools."""
        rgb = self.load_photo(item, name, max_pixels=max_pixels, max_bytes=max_bytes, min_side=self.min_side)
        return self.preprocess.views(rgb, self.crops)

    def predict_views(self, views: Sequence[np.ndarray], names: Sequence[str] | None = None,
                      batch_size: int | None = None) -> list[Prediction]:
        """One ``Prediction`` per image from views already cut by :meth:`load_views`, in order. Non-finite
        scores (NaN or inf weights, an fp16 overflow) become that image's error, never a NaN score."""
        names = names if names is not None else [f"<image {i}>" for i in range(len(views))]
        results = [Prediction(i, name) for i, name in enumerate(names)]
        self._score_into(results, views, batch_size)
        return results

    def embed_views(self, views: Sequence[np.ndarray], taps: Sequence[str] = ("2048",)) -> list[dict[str, np.ndarray]]:
        """Feature vectors of images from views cut by :meth:`load_views`: each tap of ``fid_network.LAYERS``
        (``"2048"``: the pooled vector before the classifier), float32, averaged over an image's views. The eager
        float32 model computes them, whatever the backend, as ``inceptionv3 features --model`` does, so the same
        bytes give the same numbers."""
        from .fid_network import forward_taps

        stacked = np.concatenate(views)
        parts: list[dict[str, np.ndarray]] = []
        with torch.inference_mode(), full_fp32():
            for start in range(0, len(stacked), self.batch_size):
                batch = self.preprocess.normalize(stacked[start:start + self.batch_size]).to(self.device)
                parts.append({tap: value.float().cpu().numpy()
                              for tap, value in forward_taps(self.model, batch, taps).items()})
        found = {tap: np.concatenate([part[tap] for part in parts]) for tap in parts[0]}
        per_image = len(stacked) // len(views)
        return [{tap: value[i * per_image:(i + 1) * per_image].mean(axis=0) for tap, value in found.items()}
                for i in range(len(views))]

    def _score_into(self, predictions: list[Prediction], views: Sequence[np.ndarray], batch_size: int | None) -> None:
        """Fill each prediction with the scores of its views (or the non-finite error)."""
        if not views:
            return
        batch_size = batch_size or self.batch_size
        stacked = np.concatenate(views)
        scores = torch.cat([self.scores(self.preprocess.normalize(stacked[i:i + batch_size]))
                            for i in range(0, len(stacked), batch_size)]).numpy()
        if self.crops > 1:  # average the softmax over each image's views
            scores = scores.reshape(len(views), self.crops, -1).mean(axis=1)
        for prediction, row in zip(predictions, scores, strict=True):
            if not np.isfinite(row).all():
                prediction.error, prediction.error_kind = NON_FINITE_OUTPUT, "not_finite"
                continue
            label = int(row.argmax())
            prediction.scores, prediction.label, prediction.score = row, label, float(row[label])
            prediction.class_name = self.class_names[label] if self.class_names else None

    def images_per_chunk(self, batch_size: int | None = None) -> int:
        """How many images go through the model together: ``batch_size`` tensors, so fewer images with crops."""
        return max(1, (batch_size or self.batch_size) // self.crops)

    def predict(self, inputs: Iterable[ImageInput], batch_size: int | None = None) -> Iterator[Prediction]:
        """One ``Prediction`` per input, in input order, as soon as its batch is done.

        Inputs are consumed lazily (an endless generator works) and at most a few batches are decoded ahead.
        """
        batch_size = batch_size or self.batch_size
        chunk_size = self.images_per_chunk(batch_size)
        window = 2 * chunk_size + self.workers
        items = enumerate(inputs)
        pending: deque[tuple[int, str, Future]] = deque()
        with ThreadPoolExecutor(max_workers=max(1, self.workers), thread_name_prefix="inceptionv3-decode") as pool:

            def refill() -> None:
                while len(pending) < window:
                    try:
                        index, item = next(items)
                    except StopIteration:
                        return
                    name = describe_input(item, index)
                    pending.append((index, name, pool.submit(self.load_views, item, name)))

            try:
                refill()
                while pending:
                    chunk = [pending.popleft() for _ in range(min(chunk_size, len(pending)))]
                    refill()  # keep the workers busy while the model runs on this chunk
                    yield from self._run_chunk(chunk, batch_size)
                    refill()
            finally:  # stopped early (Ctrl-C, a closed generator): drop the queued decodes instead of running them
                pool.shutdown(wait=False, cancel_futures=True)

    def _run_chunk(self, chunk: list[tuple[int, str, Future]], batch_size: int) -> list[Prediction]:
        results: list[Prediction] = []
        views: list[np.ndarray] = []
        for index, name, future in chunk:
            try:
                views.append(future.result())
                results.append(Prediction(index, name))
            except ImageLoadError as exc:
                results.append(Prediction(index, name, error=exc.reason, error_kind=exc.kind))
            except Exception as exc:  # a decoder bug must not cost the rest of the batch either
                results.append(Prediction(index, name, error=f"{type(exc).__name__}: {exc}", error_kind="other"))
        self._score_into([p for p in results if p.ok], views, batch_size)
        return results

    def __call__(self, inputs: ImageInput | list[ImageInput] | tuple, batch_size: int | None = None,
                 topk: int | None = None) -> dict | list[dict]:
        """mmpretrain-style dicts: one input gives one dict, a list gives a list in the same order.

        With ``topk``, each dict also holds ``topk``: ``[(label, class name, score), ...]``, best first.
        A bad input raises ``ImageLoadError`` naming it; in a list, ``PredictionError`` keeps the other results.
        """
        single = not isinstance(inputs, (list, tuple))
        predictions = list(self.predict([inputs] if single else inputs, batch_size))
        results = [self._as_dict(p, topk) if p.ok else None for p in predictions]
        failures = [p for p in predictions if not p.ok]
        if single and failures:
            raise ImageLoadError(describe_input(inputs), failures[0].error, kind=failures[0].error_kind or "other")
        if failures:
            raise PredictionError(failures, results)
        return results[0] if single else results

    def explain(self, image: ImageInput, target: int | str | None = None, method: str = "gradcam", *,
                layer: str | None = None, topk: int = 5, **smooth: bool) -> Explanation:
        """A class activation map of one image (``method``: one of ``explain.METHODS``, Grad-CAM by default): an
        :class:`~.explain.Explanation` with the heatmap over the crop, the target (top-1 unless given by index or
        name), the top-k, the crop box and the overlay.
        A bad input gives ``error`` instead of raising, as :meth:`predict` does. Gradients need the eager float32
        model, so other backends and precisions are explained with it, and ``note`` says so. ``aug_smooth=True``
        and ``eigen_smooth=True`` are grad-cam's smoothing options (:func:`~.explain.grad_cam`)."""
        return next(self.explain_many([image], target, method, layer=layer, topk=topk, **smooth))

    def explain_many(self, inputs: Iterable[ImageInput], target: int | str | None = None,
                     method: str = "gradcam", *, layer: str | None = None, topk: int = 5,
                     **options) -> Iterator[Explanation]:
        """:meth:`explain` for each input in turn; ``options`` are :meth:`explain_decoded`'s (the smoothings,
        ``progress``)."""
        from .explain import Explanation, resolve_target

        index = resolve_target(target, self.class_names, self.num_classes)  # a bad target fails before decoding
        for position, item in enumerate(inputs):
            name = describe_input(item, position)
            try:
                rgb = self.load_photo(item, name)
            except ImageLoadError as exc:
                yield Explanation(position, name, method=method, layer=layer or "", error=exc.reason)
                continue
            yield self.explain_decoded(rgb, index, method, layer=layer, topk=topk, name=name, position=position,
                                       **options)

    def explain_decoded(self, rgb: np.ndarray, target: int | str | None = None, method: str = "gradcam", *,
                        layer: str | None = None, topk: int = 5, name: str = "<image>",
                        position: int = 0, aug_smooth: bool = False, eigen_smooth: bool = False,
                        progress: Callable[[int], None] | None = None) -> Explanation:
        """:meth:`explain` of an image already decoded to H x W x 3 uint8 RGB (the server decodes elsewhere).
        ``progress`` is called with the passes done, for the methods that run the network once per channel."""
        from .explain import DEFAULT_LAYER, Explanation, grad_cam, overlay, resolve_target

        layer = layer or DEFAULT_LAYER
        index = resolve_target(target, self.class_names, self.num_classes)
        note = None
        if (self.backend, self.precision) != ("eager", "fp32"):
            note = (f"explained with the eager fp32 model: {self.backend} {self.precision} has no gradients; the "
                    "scores shown are the eager model's")
        crop = self.preprocess.crop_image(rgb)
        x = self.preprocess.normalize(crop[None]).to(self.device)
        cam = grad_cam(self.model, x, None if index is None else [index], layer=layer, method=method,
                       aug_smooth=aug_smooth, eigen_smooth=eigen_smooth, progress=progress)
        scores = torch.softmax(cam.logits[0], dim=0).numpy()
        if not np.isfinite(scores).all():
            return Explanation(position, name, method=method, layer=layer, error=NON_FINITE_OUTPUT)
        chosen = cam.targets[0]
        heatmap = cam.maps[0].numpy()
        return Explanation(
            position, name, heatmap=heatmap, layer_map=cam.layer_maps[0].numpy(), target=chosen,
            target_name=self.class_names[chosen] if self.class_names else None, target_score=float(scores[chosen]),
            topk=Prediction(position, name, scores=scores).topk(topk, self.class_names), crop=crop,
            overlay=None if cam.empty[0] else overlay(crop, heatmap),
            crop_box=self.preprocess.source_box(*rgb.shape[:2]), image_size=(int(rgb.shape[0]), int(rgb.shape[1])),
            empty=cam.empty[0], method=method, layer=layer, note=note)

    def faithfulness(self, explanation: Explanation, scores: Sequence[str] = ("deletion", "insertion", "road"), *,
                     baseline: str = "blur", steps: int = 50, seed: int = 0) -> Faithfulness:
        """How far ``explanation``'s map can be trusted: the deletion, insertion and ROAD scores of its heatmap on its
        crop for its target, each beside the same score for a random map (:mod:`.faithfulness`). Run on the eager
        float32 model, as the explanation was."""
        from .faithfulness import faithfulness

        if not explanation.ok or explanation.crop is None or explanation.heatmap is None:
            raise InputError(f"{explanation.name}: no map to score ({explanation.error or 'empty explanation'})")
        return faithfulness(self.model, self.preprocess.normalize, explanation.crop, explanation.heatmap,
                            explanation.target, scores, baseline=baseline, steps=steps, seed=seed, device=self.device)

    def sanity(self, image: ImageInput, target: int | str | None = None, method: str = "gradcam", *,
               layer: str | None = None, steps: int | None = None, seed: int = 0,
               **smooth: bool) -> list[tuple[str, float]]:
        """Adebayo et al.'s model-randomisation check on one image: the rank correlation of the map with the map of
        a copy whose blocks are re-initialised one more at a time from the top (``faithfulness.sanity``). The
        target stays the original model's, so every map explains the same class."""
        from .explain import DEFAULT_LAYER, grad_cam
        from .faithfulness import sanity

        explained = self.explain(image, target, method, layer=layer, **smooth)
        if not explained.ok:
            raise InputError(f"{explained.name}: {explained.error}")
        x = self.preprocess.normalize(explained.crop[None]).to(self.device)

        def explain(model: torch.nn.Module) -> np.ndarray:
            return grad_cam(model, x, [explained.target], layer=layer or DEFAULT_LAYER, method=method,
                            **smooth).maps[0].numpy()

        return sanity(self.model, explain, steps, seed)

    def _as_dict(self, prediction: Prediction, topk: int | None) -> dict:
        result = prediction.to_dict()
        if topk:
            result["topk"] = prediction.topk(topk, self.class_names)
        return result


_CACHE: OrderedDict[tuple, Classifier] = OrderedDict()
_CACHE_SIZE = 4


def _file_identity(value: object) -> object:
    """A path's identity includes its size and mtime, so that a rewritten checkpoint is reloaded."""
    if isinstance(value, (str, os.PathLike)) and Path(value).is_file():
        stat = Path(value).stat()
        return str(Path(value).resolve()), stat.st_size, stat.st_mtime_ns
    return value if isinstance(value, (bool, str)) else os.fspath(value)


def cached_classifier(model: str | os.PathLike, pretrained: bool | str | os.PathLike = True,
                      device: str | torch.device | None = None, backend: str = "eager",
                      precision: str = "fp32") -> Classifier:
    """The ``Classifier`` for these weights, device and backend, built on first use and kept (the last few)."""
    key = (_file_identity(model), _file_identity(pretrained), str(device), backend, precision)
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    classifier = Classifier(model, pretrained, device=device, backend=backend, precision=precision)
    _CACHE[key] = classifier
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return classifier


def inference_model(
    model: str | os.PathLike | nn.Module,
    inputs: ImageInput | list[ImageInput],
    *,
    pretrained: bool | str | os.PathLike = True,
    device: str | torch.device | None = None,
    batch_size: int = 16,
    topk: int | None = None,
    backend: str = "eager",
    precision: str = "fp32",
) -> dict | list[dict]:
    """Classify one input (a dict) or a list (a list of dicts), like ``mmpretrain.inference_model``.

    ``model`` is a zoo name, a checkpoint path or a model; ``pretrained=PATH`` loads a local file into a
    named model. Loaded models are cached by model, weights, device and backend, so calling this in a loop
    costs one forward pass per call, not a reload. The backend defaults to eager, which gives mmpretrain's
    scores exactly (OpenVINO's differ in the 4th decimal); ``backend="auto"`` takes the fastest.
    """
    if isinstance(model, nn.Module):
        classifier = Classifier(model, device=device or next(model.parameters()).device, backend=backend,
                                precision=precision)
    else:
        classifier = cached_classifier(model, pretrained, device, backend, precision)
    return classifier(inputs, batch_size=batch_size, topk=topk)
