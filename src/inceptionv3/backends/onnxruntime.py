"""ONNX Runtime on the CPU, fp32: the fast path where OpenVINO is not installed."""

from __future__ import annotations

from ..export import load_runner
from .base import Backend, Build, RunFn
from .cache import cached_export


def build(b: Build) -> RunFn:
    return load_runner(cached_export(b.model, "onnx", b.shape, "fp32"), "onnx")


BACKEND = Backend("onnxruntime", build, precisions=("fp32",), modules=("onnxruntime",), extra="onnx", cpu_only=True,
                  exported=True)
