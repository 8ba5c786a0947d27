"""Export to ONNX, OpenVINO IR, TorchScript or torch.export, each checked right after it is written.

The check runs the written artefact on crops of a real photo (the packaged demo photo's 10-crop views, or
photos you name), at two batch sizes when the batch is dynamic, and compares its logits with eager PyTorch.
An export whose largest difference exceeds the tolerance is reported as failed, not handed out.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .decode import load_image
from .preprocess import Preprocess

FORMATS = ("onnx", "openvino", "torchscript", "torch-export")

#: Largest |logit difference| accepted for an fp32 export, as a fraction of the largest |logit| (at least 1):
#: exporters reorder and fuse float operations, which costs about 1e-6 to 3e-5 of the range.
FP32_TOLERANCE = 1e-4

_EXTRAS = {"onnx": ("onnx", "onnxruntime"), "openvino": ("openvino",)}


class ExportError(RuntimeError):
    """An export that could not be written or did not reproduce eager PyTorch."""


def require(*modules: str, extra: str) -> None:
    """A one-line error naming what to install, instead of an ImportError from deep inside."""
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise ExportError(f"{', '.join(missing)} not installed: pip install 'inceptionv3[{extra}]'")


def sample_batch(preprocess: Preprocess, photos: Sequence[str | os.PathLike] = ()) -> torch.Tensor:
    """Real pixels for checks: the 10-crop views of each photo (default: the packaged demo photo)."""
    if not photos:
        photos = [resources.files(__package__).joinpath("assets", "bird.jpg")]
    views = [preprocess.views(load_image(Path(str(p)), decoder=preprocess.backend), 10) for p in photos]
    return preprocess.normalize(np.concatenate(views))


def export_model(model: nn.Module, fmt: str, out: str | os.PathLike, *, example: torch.Tensor,
                 dynamic_batch: bool = False) -> Path:
    """Write ``model`` in ``fmt`` to ``out``. ``example`` fixes the input shape (its batch too, unless dynamic)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    if fmt == "onnx":
        require("onnx", extra="onnx")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (example,), str(out), input_names=["images"], output_names=["logits"],
                              dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None,
                              opset_version=17, dynamo=False)
    elif fmt == "openvino":
        require("openvino", extra="openvino")
        import openvino as ov

        shape = [-1 if dynamic_batch else example.shape[0], *example.shape[1:]]
        with warnings.catch_warnings():  # OpenVINO traces through torch.jit, which warns of its deprecation
            warnings.simplefilter("ignore")
            converted = ov.convert_model(model, example_input=example, input=[shape])
        ov.save_model(converted, str(out.with_suffix(".xml")), compress_to_fp16=False)
        out = out.with_suffix(".xml")
    elif fmt == "torchscript":
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(model, example)
        traced.save(str(out))
    elif fmt == "torch-export":
        dims = {"x": {0: torch.export.Dim("batch", min=1, max=1024)}} if dynamic_batch else None
        with torch.no_grad():
            program = torch.export.export(model, (example,), dynamic_shapes=dims)
        torch.export.save(program, str(out))
    else:
        raise ExportError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    return out


def load_runner(path: str | os.PathLike, fmt: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function that runs the exported artefact on an N x 3 x H x W float32 batch and returns logits."""
    path = Path(path)
    if fmt == "onnx":
        require("onnxruntime", extra="onnx")
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return lambda x: torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
    if fmt == "openvino":
        require("openvino", extra="openvino")
        import openvino as ov

        compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        return lambda x: torch.from_numpy(compiled(x.numpy())[0].copy())
    if fmt == "torchscript":
        module = torch.jit.load(str(path)).eval()
    elif fmt == "torch-export":
        module = torch.export.load(str(path)).module()
    else:
        raise ExportError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return module(x)

    return run


@dataclass
class ExportCheck:
    """How an exported artefact compared with eager PyTorch on real pixels."""

    batch_sizes: tuple[int, ...]
    max_abs_diff: float
    tolerance: float
    logit_range: float

    @property
    def limit(self) -> float:
        return self.tolerance * max(1.0, self.logit_range)

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.limit

    def describe(self) -> str:
        verdict = "ok" if self.passed else "FAILED"
        return (f"max |logit difference| {self.max_abs_diff:.2e} over batch sizes {list(self.batch_sizes)} "
                f"(logits span +-{self.logit_range:.1f}; limit {self.limit:.1e} = {self.tolerance:.0e} of it): "
                f"{verdict}")


def verify_export(model: nn.Module, runner: Callable[[torch.Tensor], torch.Tensor], batch: torch.Tensor,
                  batch_sizes: Sequence[int], tolerance: float = FP32_TOLERANCE) -> ExportCheck:
    """Run eager and exported side by side on slices of ``batch`` of each size."""
    worst, span = 0.0, 0.0
    for size in batch_sizes:
        x = batch[:size].contiguous()
        with torch.no_grad():
            expected = model.eval()(x)
        got = runner(x)
        if tuple(got.shape) != tuple(expected.shape):
            raise ExportError(f"batch {size}: the export returned shape {tuple(got.shape)}, "
                              f"eager {tuple(expected.shape)}")
        worst = max(worst, float((got.float() - expected).abs().max()))
        span = max(span, float(expected.abs().max()))
    return ExportCheck(tuple(batch_sizes), worst, tolerance, span)
