"""The export cache: each exported file is built once per weights, backend, precision and input size under
``cache_dir()/compiled``, with a manifest holding the file's sha256, so that an entry whose file no longer matches (a
stale or corrupted cache) is rebuilt, never used. Keyed on the tensors and the architecture's settings, never on a
path: a model edited after loading never runs the export of the file it came from."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from ..export import export_model, quantize_openvino, require
from ..files import cache_dir, file_digest

logger = logging.getLogger("inceptionv3")

#: Below this much free space in the cache, a failed export is taken for a full disk (an export is ~100 MB), and the
#: fast backends fall back to eager as for a read-only cache.
MIN_FREE_BYTES = 256 * 1024**2

#: First builds long enough to pass for a hang (2 CPU cores, Inception V3 at 299) are announced at WARNING, the
#: level the CLI shows; the ONNX export takes about a second.
SLOW_BUILDS = {"openvino export": "about 25 s", "int8 model": "about a minute", "litert export": "about 30 s"}


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


def cached_export(model: nn.Module, fmt: str, shape: tuple[int, ...], precision: str) -> Path:
    """The exported file for these weights and shape, made once; a mismatching file is rebuilt."""
    name = f"{weights_key(model)}-{fmt}-{precision}-{'x'.join(map(str, shape[1:]))}"
    filename = {"openvino": "model.xml", "litert": "model.tflite"}.get(fmt, "model.onnx")
    return _cached_files(name, filename, f"{fmt} export",
                         lambda target: export_model(model, fmt, target, example=torch.zeros(2, *shape[1:]),
                                                     dynamic_batch=True, precision=precision))


def int8_model(model: nn.Module, shape: tuple[int, ...], calibration: torch.Tensor) -> Path:
    """Post-training int8 quantisation of the cached OpenVINO model with NNCF, calibrated on ``calibration``
    (normalised images from the data the model will see), cached by the calibration data's hash too."""
    require("nncf", "openvino", extra="int8")
    calibration_key = hashlib.sha256(calibration.contiguous().numpy().tobytes()).hexdigest()[:12]
    fp32_path = cached_export(model, "openvino", shape, "fp32")
    name = fp32_path.parent.name.replace("-fp32-", f"-int8-{calibration_key}-")
    return _cached_files(name, "model.xml", "int8 model",
                         lambda target: quantize_openvino(fp32_path, calibration, target))


__all__ = ["cached_export", "int8_model", "weights_key"]
