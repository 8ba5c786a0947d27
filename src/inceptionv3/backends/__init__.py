"""Inference backends behind one option: eager PyTorch, ``torch.compile``, OpenVINO, ONNX Runtime and LiteRT, in
fp32, bf16 or int8. Each is one module declaring a :class:`Backend`, listed in :data:`REGISTRY`; ``make_runner``
turns a model into a :class:`Runner` (a function from a normalised N x 3 x H x W float32 batch to logits) on the
one asked for, or on the fastest installed with ``auto``.

Exported artefacts are cached per weights, backend, precision and input size (``backends.cache``).
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from ..errors import InputError
from ..export import ExportError, require
from ..files import cache_dir
from . import compiled, eager, litert, onnxruntime, openvino
from .base import PRECISIONS, Backend, Build, Runner
from .cache import weights_key
from .compiled import fixed_batch

logger = logging.getLogger("inceptionv3")

#: Every backend, by name, in the order ``--backend`` lists them.
REGISTRY: dict[str, Backend] = {b.name: b for b in (
    eager.BACKEND,
    compiled.BACKEND,
    openvino.BACKEND,
    onnxruntime.BACKEND,
    litert.BACKEND,
)}

BACKENDS = ("auto", *REGISTRY)


def available(backend: str) -> bool:
    """Whether the backend's packages are installed (the PyTorch ones always are)."""
    return REGISTRY[backend].available()


# Where the fast paths start to pay on a CPU (the measurements are in docs/fast-inference.md): OpenVINO's fixed
# start-up cost per process outweighs its per-image saving for a handful of images, and torch.compile's warm-up in
# every process only pays back over hundreds of images.
FAST_PATH_WORTH_IT_IMAGES = 16
COMPILE_WORTH_IT_IMAGES = 1000
def choose_backend(device: torch.device, precision: str = "fp32", images: int | None = None) -> str:
    """The fastest available path for a run of ``images`` (None: unknown, taken as long but not compile-long), by
    the measurements in docs/fast-inference.md. On a CPU: eager for a handful of images; OpenVINO when installed
    (exported once, then loaded from the cache); then ONNX Runtime for fp32; then ``torch.compile`` when the run
    is long enough to repay its warm-up; else eager. Eager on GPUs and MPS (with AMP for bf16)."""
    if precision == "int8":
        chosen = "openvino"
    elif device.type != "cpu" or (images is not None and images < FAST_PATH_WORTH_IT_IMAGES):
        chosen = "eager"
    elif available("openvino"):
        chosen = "openvino"
    elif precision == "fp32" and available("onnxruntime"):
        chosen = "onnxruntime"
    else:
        chosen = "compile" if images is not None and images >= COMPILE_WORTH_IT_IMAGES else "eager"
    logger.info("backend %s %s (auto, %s, %s images)", chosen, precision, device, images or "unknown")
    return chosen


def _refusal(backend: Backend, precision: str) -> str:
    """Why ``backend`` cannot run ``precision``, and which backends can."""
    others = [b.name for b in REGISTRY.values() if precision in b.precisions]
    notes = "; ".join(f"{b.name}: {how}" for b in REGISTRY.values() for p, how in b.notes if p == precision)
    return (f"{backend.name} runs {', '.join(backend.precisions)} here; {precision} runs on {', '.join(others)}"
            + (f" ({notes})" if notes else ""))


def make_runner(model: nn.Module, backend: str, precision: str, device: torch.device,
                image_size: int, calibration: torch.Tensor | None = None) -> Runner:
    """A function from a float32 batch on ``device`` to logits, for the chosen backend and precision.
    ``int8`` on OpenVINO needs ``calibration``: a few hundred normalised images like the real inputs; on LiteRT it
    is dynamic-range quantisation, which needs none."""
    if backend not in BACKENDS:
        raise InputError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    chosen = REGISTRY[choose_backend(device, precision) if backend == "auto" else backend]
    if precision not in chosen.precisions:
        raise InputError(_refusal(chosen, precision))
    if chosen.cpu_only and device.type != "cpu":  # checked before any export
        raise InputError(f"backend {chosen.name} runs on the CPU here; use eager or compile on {device.type}")
    require(*chosen.modules, extra=chosen.extra)
    try:
        return Runner(chosen.build(Build(model, precision, device, (1, 3, image_size, image_size), calibration)),
                      chosen.name)
    except OSError as exc:  # a read-only or full cache folder: slower, not broken
        if not chosen.exported or precision == "int8":
            raise
        logger.warning("cannot use the export cache in %s (%s); running eager %s instead", cache_dir(), exc,
                       precision)
        return make_runner(model, "eager", precision, device, image_size)  # its .backend says eager


__all__ = ["BACKENDS", "PRECISIONS", "REGISTRY", "Backend", "ExportError", "Runner", "available", "choose_backend",
           "fixed_batch", "make_runner", "weights_key"]
