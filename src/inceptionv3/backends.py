"""Inference backends behind one option: eager PyTorch, ``torch.compile``, OpenVINO, ONNX Runtime and LiteRT, in
fp32, bf16 or int8. Each turns a model into a function from a normalised N x 3 x H x W float32 batch to logits.

Exported artefacts are cached per weights, backend, precision and input size under ``cache_dir()/compiled``,
with a manifest holding the file's sha256: an entry whose file no longer matches (a stale or corrupted cache)
is rebuilt, never used.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .errors import InputError
from .export import ExportError, export_model, load_runner, quantize_openvino, require
from .files import cache_dir, file_digest

logger = logging.getLogger("inceptionv3")

BACKENDS = ("auto", "eager", "compile", "openvino", "onnxruntime", "litert")
#: The module each optional backend needs, and the extra that installs it.
_BACKEND_MODULES = {"openvino": (("openvino",), "openvino"), "onnxruntime": (("onnxruntime",), "onnx"),
                    "litert": (("litert_torch", "ai_edge_quantizer", "ai_edge_litert"), "litert")}
PRECISIONS = ("fp32", "bf16", "int8")

RunFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Runner:
    """A function from a float32 batch on the device to logits, and the backend that actually runs it (eager when
    the export cache could not be used), so that callers report what ran rather than what was asked for."""

    run: RunFn
    backend: str

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x)


def available(backend: str) -> bool:
    """Whether the backend's package is installed (the PyTorch ones always are)."""
    import importlib.util

    modules, _ = _BACKEND_MODULES.get(backend, ((), ""))
    return all(importlib.util.find_spec(m) is not None for m in modules)


# Where the fast paths start to pay on a CPU (the measurements are in docs/fast-inference.md): OpenVINO's fixed
# start-up cost per process outweighs its per-image saving for a handful of images, and torch.compile's warm-up in
# every process only pays back over hundreds of images.
FAST_PATH_WORTH_IT_IMAGES = 16
COMPILE_WORTH_IT_IMAGES = 1000
#: First builds long enough to pass for a hang (2 CPU cores, Inception V3 at 299: the OpenVINO export 22 s, NNCF's
#: int8 about a minute) are announced at WARNING, the level the CLI shows; the ONNX export takes about a second.
#: Below this much free space in the cache, a failed export is taken for a full disk (an export is ~100 MB), and the
#: fast backends fall back to eager as for a read-only cache.
MIN_FREE_BYTES = 256 * 1024**2

SLOW_BUILDS = {"openvino export": "about 25 s", "int8 model": "about a minute", "litert export": "about 30 s"}


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


def _architecture(model: nn.Module) -> list[tuple[str, str, list[tuple[str, object]]]]:
    """Every submodule's class and plain settings (classes, pool convention, kernel sizes, flags): what shapes the
    computation besides the tensors, so a model rebuilt with other settings never reuses an export."""
    described = []
    for name, module in model.named_modules():
        settings = sorted((key, value) for key, value in vars(module).items()
                          if key != "training" and not key.startswith("_")
                          and isinstance(value, (bool, int, float, str, tuple, type(None))))
        described.append((name, type(module).__qualname__, settings))
    return described


def weights_key(model: nn.Module) -> str:
    """What identifies the computation that runs: a hash of every tensor (name, dtype, shape, bytes) and of the
    architecture's settings. Never the checkpoint file's hash: a model edited, re-headed or fine-tuned after
    loading must not run the export of the file it came from."""
    digest = hashlib.sha256()
    digest.update(repr(_architecture(model)).encode())
    for name, value in sorted(model.state_dict().items()):
        tensor = value.detach().cpu().contiguous()
        digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def _cache_hit(folder: Path, files: list[Path], what: str) -> bool:
    """True when every file exists and matches the folder's manifest; a mismatch is logged and cleared."""
    manifest = folder / "manifest.json"
    if manifest.exists() and all(f.exists() for f in files):
        if json.loads(manifest.read_text()) == {f.name: file_digest(f) for f in files}:
            return True
        logger.warning("cached %s in %s does not match its manifest; rebuilding it", what, folder)
    manifest.unlink(missing_ok=True)
    return False


@contextlib.contextmanager
def _exclusive(lock_path: Path):
    """One process at a time builds a cache entry (two torchrun ranks start together); others wait, then reuse it."""
    with open(lock_path, "a") as handle:
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks; the manifest still keeps half-written files out
            yield
            return
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _cached_files(name: str, filename: str, what: str, build: Callable[[Path], None]) -> Path:
    """``compiled/<name>/<filename>`` (with its OpenVINO ``.bin``), built once by ``build(path)``. The manifest is
    written last, so a crash mid-build leaves a miss, and a lock makes concurrent processes build it once."""
    folder = cache_dir() / "compiled" / name
    target = folder / filename
    files = [target] + ([target.with_suffix(".bin")] if target.suffix == ".xml" else [])
    if _cache_hit(folder, files, what):
        return target
    folder.mkdir(parents=True, exist_ok=True)
    with _exclusive(folder.parent / f"{name}.lock"):
        if not _cache_hit(folder, files, what):  # unless another process built it while this one waited
            took = SLOW_BUILDS.get(what)
            logger.log(logging.WARNING if took else logging.INFO, "building the %s once%s; later runs reuse it from %s",
                       what, f" ({took})" if took else "", folder)
            try:
                build(target)
            except Exception as exc:  # OpenVINO and ONNX report a full disk as their own RuntimeError
                free = shutil.disk_usage(folder).free
                if free < MIN_FREE_BYTES:
                    raise OSError(errno.ENOSPC, f"{free / 1e6:.0f} MB free for the {what} ({exc})") from exc
                raise
            (folder / "manifest.json").write_text(json.dumps({f.name: file_digest(f) for f in files}))
    return target


def _cached_export(model: nn.Module, fmt: str, shape: tuple[int, ...], precision: str) -> Path:
    """The exported file for these weights and shape, made once; a mismatching file is rebuilt."""
    name = f"{weights_key(model)}-{fmt}-{precision}-{'x'.join(map(str, shape[1:]))}"
    filename = {"openvino": "model.xml", "litert": "model.tflite"}.get(fmt, "model.onnx")
    return _cached_files(name, filename, f"{fmt} export",
                         lambda target: export_model(model, fmt, target, example=torch.zeros(2, *shape[1:]),
                                                     dynamic_batch=True, precision=precision))


def _int8_model(model: nn.Module, shape: tuple[int, ...], calibration: torch.Tensor) -> Path:
    """Post-training int8 quantisation of the cached OpenVINO model with NNCF, calibrated on ``calibration``
    (normalised images from the data the model will see), cached by the calibration data's hash too."""
    require("nncf", "openvino", extra="int8")
    calibration_key = hashlib.sha256(calibration.contiguous().numpy().tobytes()).hexdigest()[:12]
    fp32_path = _cached_export(model, "openvino", shape, "fp32")
    name = fp32_path.parent.name.replace("-fp32-", f"-int8-{calibration_key}-")
    return _cached_files(name, "model.xml", "int8 model",
                         lambda target: quantize_openvino(fp32_path, calibration, target))


def fixed_batch(run: RunFn) -> RunFn:
    """Runs every batch at the size of the first one, padding or splitting the others.

    Each new input shape costs ``torch.compile`` a fresh compilation, and ``dynamic=True`` costs more up front; a
    stream's short last batch would otherwise pay that. Per image, the compiled model is about as fast at batch 1 as
    at 16, so splitting costs nothing and padding at most one batch."""
    size: int | None = None

    def run_any(x: torch.Tensor) -> torch.Tensor:
        nonlocal size
        size = size or len(x)
        outputs = []
        for start in range(0, len(x), size):
            part = x[start:start + size]
            short = size - len(part)
            if short:
                part = torch.cat([part, part.new_zeros(short, *part.shape[1:])])
            outputs.append(run(part)[:size - short])
        return torch.cat(outputs)
    return run_any


def make_runner(model: nn.Module, backend: str, precision: str, device: torch.device,
                image_size: int, calibration: torch.Tensor | None = None) -> Runner:
    """A function from a float32 batch on ``device`` to logits, for the chosen backend and precision.
    ``int8`` on OpenVINO needs ``calibration``: a few hundred normalised images like the real inputs; on LiteRT it
    is dynamic-range quantisation, which needs none."""
    if backend not in BACKENDS:
        raise InputError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if backend == "auto":
        backend = choose_backend(device, precision)
    if precision == "int8" and backend not in ("openvino", "litert"):
        raise InputError("int8 runs on the openvino backend (NNCF post-training quantisation) or on litert "
                         "(dynamic-range)")
    if precision == "bf16" and backend == "litert":
        raise InputError("litert runs fp32 or int8 here; use openvino or compile for bf16")
    if precision == "int8" and backend == "openvino" and (calibration is None or len(calibration) == 0):
        raise InputError("int8 needs calibration images from your data (--calibration DIR)")
    shape = (1, 3, image_size, image_size)
    if backend in _BACKEND_MODULES and device.type != "cpu":  # checked before any export
        raise InputError(f"backend {backend} runs on the CPU here; use eager or compile on {device.type}")
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if precision == "bf16" else (
        contextlib.nullcontext)

    if backend == "eager":
        def run(x: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode(), autocast():
                return model(x).float()
        return Runner(run, "eager")
    if backend == "compile":
        import torch._inductor.config as inductor

        inductor.freezing = True  # fold the weights into the graph: the fast CPU path
        compiled = torch.compile(model, dynamic=False)
        compiling = True

        def run_fixed(x: torch.Tensor) -> torch.Tensor:
            nonlocal compiling
            if compiling:  # the first call compiles for 20-30 s on 2 cores, which would otherwise look like a hang
                logger.warning("compiling with torch.compile (about 25 s, once per process)")
                compiling = False
            with torch.no_grad(), autocast():
                return compiled(x).float()
        return Runner(fixed_batch(run_fixed), "compile")
    if backend == "onnxruntime" and precision != "fp32":
        raise InputError("onnxruntime runs fp32 here; use openvino or compile for bf16")
    modules, extra = _BACKEND_MODULES[backend]
    require(*modules, extra=extra)
    try:
        if backend == "litert":
            return Runner(load_runner(_cached_export(model, "litert", shape, precision), "litert"), backend)
        if backend == "openvino":
            path = _int8_model(model, shape, calibration) if precision == "int8" else _cached_export(
                model, "openvino", shape, "fp32")
            return Runner(load_runner(path, "openvino", precision), backend)  # bf16: the fp32 file, compiled
        return Runner(load_runner(_cached_export(model, "onnx", shape, "fp32"), "onnx"), backend)
    except OSError as exc:  # a read-only or full cache folder: slower, not broken
        if precision == "int8":
            raise
        logger.warning("cannot use the export cache in %s (%s); running eager %s instead", cache_dir(), exc,
                       precision)
        return make_runner(model, "eager", precision, device, image_size)  # its .backend says eager


__all__ = ["BACKENDS", "PRECISIONS", "ExportError", "Runner", "available", "choose_backend", "fixed_batch",
           "make_runner", "weights_key"]
