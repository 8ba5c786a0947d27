"""Export to ONNX, OpenVINO IR, TorchScript, torch.export or LiteRT, each checked right after it is written.

The check runs the written artefact on crops of a real photo (the packaged demo photo's 10-crop views, or
photos you name), at two batch sizes when the batch is dynamic, and compares its logits with eager PyTorch.
An export whose largest difference exceeds the tolerance is reported as failed, not handed out.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .errors import ExportError
from .files import not_regular
from .preprocess import Preprocess

FORMATS = ("onnx", "openvino", "torchscript", "torch-export", "litert")
#: The precisions each format is written in besides fp32. OpenVINO: bf16 (a runtime hint) and int8 (NNCF's static
#: quantisation, calibrated on your images); LiteRT: int8 as dynamic-range quantisation (int8 weights, activations
#: quantised per call, no calibration), the usual mobile choice.
LOW_PRECISIONS = {"openvino": ("bf16", "int8"), "litert": ("int8",)}

#: Largest |logit difference| accepted for an fp32 export, as a fraction of the largest |logit| (at least 1):
#: exporters reorder and fuse float operations, which costs about 1e-6 to 3e-5 of the range.
FP32_TOLERANCE = 1e-4
#: For bf16 (8 bits of mantissa) the difference measured 0.03 of the range on the digits model of the training
#: section and up to 0.14 on the tests' random model (calibrated batch norm, head scaled x20).
BF16_TOLERANCE = 0.25
#: int8 moves single logits a long way (0.91 of the range on the digits model) while keeping the answers (199 of
#: 200 top-1 the same), so bf16 and int8 exports must also agree with eager fp32 on the top-1 answer of at least
#: this share of the check images; for int8 that is the whole check.
LOW_PRECISION_MIN_AGREEMENT = 0.9
TOLERANCES = {"fp32": FP32_TOLERANCE, "bf16": BF16_TOLERANCE, "int8": float("inf")}

OPENVINO_PRECISION_KEY = ("runtime_options", "INFERENCE_PRECISION_HINT")
OPENVINO_HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}  # int8: the layers left unquantised run in f32


def require(*modules: str, extra: str) -> None:
    """A one-line error naming what to install, instead of an ImportError from deep inside."""
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise ExportError(f"{', '.join(missing)} not installed: pip install -e '.[{extra}]' in the clone")


def sample_batch(preprocess: Preprocess, photos: Sequence[str | os.PathLike] = ()) -> torch.Tensor:
    """Real pixels for checks: the 10-crop views of each photo (default: the packaged demo photo)."""
    if not photos:
        photos = [resources.files(__package__).joinpath("assets", "bird.jpg")]
    views = [preprocess.views(preprocess.decode(Path(str(p))), 10) for p in photos]
    return preprocess.normalize(np.concatenate(views))


def quantize_openvino(fp32_xml: str | os.PathLike, calibration: torch.Tensor, out: str | os.PathLike) -> Path:
    """NNCF post-training int8 quantisation of an OpenVINO fp32 model, calibrated on ``calibration`` (normalised
    images like the real inputs), written to ``out``."""
    require("nncf", "openvino", extra="int8")
    import nncf
    import openvino as ov

    samples = [calibration[i:i + 1].numpy() for i in range(len(calibration))]
    with contextlib.redirect_stdout(sys.stderr):  # NNCF draws progress bars on stdout, where results go
        # Full bias correction (not NNCF's fast one): on the digits model it keeps 178 of 179 held-out answers
        # instead of 173, for 1.5x the calibration time; on the Omniglot model both keep 254 of 272.
        quantized = nncf.quantize(ov.Core().read_model(str(fp32_xml)), nncf.Dataset(samples),
                                  subset_size=len(samples), fast_bias_correction=False)
    out = Path(out).with_suffix(".xml")
    ov.save_model(quantized, str(out), compress_to_fp16=False)
    return out


def export_litert(model: nn.Module, example: torch.Tensor, out: str | os.PathLike, *, int8: bool = False) -> Path:
    """A ``.tflite`` flatbuffer from litert-torch, optionally with dynamic-range int8 weights (ai-edge-quantizer's
    ``dynamic_wi8_afp32``: per-channel int8 weights, activations quantised at run time). The input stays
    N x 3 x H x W. It is converted at batch 1, since litert-torch cannot yet trace a symbolic batch for this graph;
    LiteRT's interpreter resizes the input for other batch sizes, and ``load_runner`` does that."""
    require("litert_torch", "ai_edge_quantizer", extra="litert")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import litert_torch

    out = Path(out).with_suffix(".tflite")
    with contextlib.redirect_stdout(sys.stderr), torch.no_grad():  # the converter's progress lines are not results
        converted = litert_torch.convert(model.eval(), (example[:1].contiguous(),))
        if not int8:
            converted.export(str(out))
            return out
        from ai_edge_quantizer import quantizer, recipe

        fp32 = out.with_name(out.stem + ".fp32.tflite")
        converted.export(str(fp32))
        try:
            quantized = quantizer.Quantizer(str(fp32), recipe.dynamic_wi8_afp32()).quantize()
            out.unlink(missing_ok=True)
            quantized.export_model(str(out))
        finally:
            fp32.unlink(missing_ok=True)
    return out


def export_model(model: nn.Module, fmt: str, out: str | os.PathLike, *, example: torch.Tensor,
                 dynamic_batch: bool = False, precision: str = "fp32",
                 calibration: torch.Tensor | None = None) -> Path:
    """Write ``model`` in ``fmt`` to ``out``. ``example`` fixes the input shape (its batch too, unless dynamic).

    ``precision="bf16"``: OpenVINO only, recorded as the model's inference precision (a whole-bf16 TorchScript
    program lost 1 top-1 answer in 8 on the tests' model, where OpenVINO's bf16 lost none; for PyTorch, export fp32
    and run it under ``torch.autocast``). ``"int8"``: OpenVINO quantised with NNCF on ``calibration``, or LiteRT
    with dynamic-range quantisation (no calibration)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    if precision not in TOLERANCES:
        raise ExportError(f"precision must be one of {', '.join(TOLERANCES)}, got {precision!r}")
    if precision != "fp32" and precision not in LOW_PRECISIONS.get(fmt, ()):
        formats = " or ".join(f"--format {f}" for f, kept in LOW_PRECISIONS.items() if precision in kept)
        raise ExportError(f"{precision} exports are written with {formats}; export {fmt} in fp32"
                          + (" and run it under torch.autocast" if fmt in ("torchscript", "torch-export") else ""))
    if precision == "int8" and fmt == "openvino":
        if calibration is None or len(calibration) == 0:
            raise ExportError("int8 needs calibration images from your data (--calibration DIR)")
        fp32_xml = export_model(model, fmt, out.with_name(out.stem + ".fp32.xml"), example=example,
                                dynamic_batch=dynamic_batch)
        try:
            return quantize_openvino(fp32_xml, calibration, out)
        finally:
            fp32_xml.unlink(missing_ok=True)
            fp32_xml.with_suffix(".bin").unlink(missing_ok=True)
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
        # OpenVINO quietly runs fp32 models in bf16 on CPUs that have bf16 (this one does), unless the application
        # passes INFERENCE_PRECISION_HINT. The file records the precision it was checked at; load_runner reads it.
        converted.set_rt_info(OPENVINO_HINTS[precision], list(OPENVINO_PRECISION_KEY))
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
    elif fmt == "litert":
        out = export_litert(model, example, out, int8=precision == "int8")
    else:
        raise ExportError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    return out


def load_runner(path: str | os.PathLike, fmt: str,
                precision: str | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function that runs the exported artefact on an N x 3 x H x W float32 batch and returns logits.
    An OpenVINO file runs at ``precision`` when given, else at the precision it records (f32 if none)."""
    path = Path(path)
    if fmt == "onnx":
        require("onnxruntime", extra="onnx")
        import onnxruntime as ort

        options = ort.SessionOptions()
        # Spinning worker threads would keep the cores busy between calls, slowing whatever runs next.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return lambda x: torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
    if fmt == "openvino":
        require("openvino", extra="openvino")
        import openvino as ov

        core = ov.Core()
        model = core.read_model(str(path))
        key = list(OPENVINO_PRECISION_KEY)
        hint = OPENVINO_HINTS[precision] if precision else (
            model.get_rt_info(key).astype(str) if model.has_rt_info(key) else "f32")
        cores = os.cpu_count() or 1
        compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": hint,
                                                     "PERFORMANCE_HINT": "THROUGHPUT" if cores > 4 else "LATENCY"})
        return lambda x: torch.from_numpy(compiled(x.numpy())[0].copy())
    if fmt == "litert":
        return _litert_runner(path)
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


def _litert_runner(path: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    """LiteRT's interpreter on every core (XNNPACK), its input resized whenever the batch size changes. One
    interpreter holds one set of buffers, so calls are serialised."""
    import threading

    require("ai_edge_litert", extra="litert")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from ai_edge_litert.interpreter import Interpreter

    if not path.exists():
        raise ExportError(f"{path}: no such LiteRT file")
    problem = not_regular(str(path), path.stat().st_mode, "a LiteRT file")
    if problem:  # LiteRT maps the file; a FIFO would block and a device never end
        raise ExportError(f"{path}: {problem}")
    try:
        interpreter = Interpreter(model_path=str(path), num_threads=os.cpu_count() or 1)
        inputs, outputs = interpreter.get_input_details(), interpreter.get_output_details()
    except (ValueError, RuntimeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ExportError(f"{path}: not a LiteRT model that LiteRT can load ({reason})") from None
    if len(inputs) != 1 or len(outputs) != 1:
        raise ExportError(f"{path}: a LiteRT model with {len(inputs)} inputs and {len(outputs)} outputs; an exported "
                          "classifier has one of each")
    source, target = inputs[0], outputs[0]["index"]
    lock = threading.Lock()
    shape: list[int] = []

    def run(x: torch.Tensor) -> torch.Tensor:
        with lock:
            if list(x.shape) != shape:
                interpreter.resize_tensor_input(source["index"], list(x.shape))
                interpreter.allocate_tensors()
                shape[:] = list(x.shape)
            interpreter.set_tensor(source["index"], x.detach().float().contiguous().numpy())
            interpreter.invoke()
            return torch.from_numpy(interpreter.get_tensor(target).copy())

    return run


@dataclass
class ExportCheck:
    """How an exported artefact compared with eager PyTorch fp32 on real pixels."""

    batch_sizes: tuple[int, ...]
    max_abs_diff: float
    tolerance: float
    logit_range: float
    top1_agreement: float = 1.0
    min_agreement: float = 0.0

    @property
    def limit(self) -> float:
        return self.tolerance * max(1.0, self.logit_range)

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.limit and self.top1_agreement >= self.min_agreement

    def describe(self) -> str:
        verdict = "ok" if self.passed else "FAILED"
        bound = f"limit {self.limit:.1e} = {self.tolerance:.0e} of it" if self.tolerance != float("inf") else "no limit"
        return (f"max |logit difference| {self.max_abs_diff:.2e} over batch sizes {list(self.batch_sizes)} "
                f"(logits span +-{self.logit_range:.1f}; {bound}); top-1 agreement {100 * self.top1_agreement:.1f} %"
                f"{f' (at least {100 * self.min_agreement:.0f} %)' if self.min_agreement else ''}: {verdict}")


def verify_export(model: nn.Module, runner: Callable[[torch.Tensor], torch.Tensor], batch: torch.Tensor,
                  batch_sizes: Sequence[int], tolerance: float = FP32_TOLERANCE,
                  min_agreement: float = 0.0) -> ExportCheck:
    """Run eager fp32 and the export side by side on slices of ``batch`` of each size."""
    worst, span, agree, seen = 0.0, 0.0, 0, 0
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
        agree += int((got.argmax(1) == expected.argmax(1)).sum())
        seen += size
    return ExportCheck(tuple(batch_sizes), worst, tolerance, span, agree / seen, min_agreement)
