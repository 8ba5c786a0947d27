"""LiteRT (TensorFlow Lite) on the CPU: the file phones and microcontrollers run, checked here against eager; int8 is
dynamic-range quantisation, which needs no calibration images."""

from __future__ import annotations

from ..export import load_runner
from .base import Backend, Build, RunFn
from .cache import cached_export


def build(b: Build) -> RunFn:
    return load_runner(cached_export(b.model, "litert", b.shape, b.precision), "litert")


BACKEND = Backend("litert", build, precisions=("fp32", "int8"),
                  modules=("litert_torch", "ai_edge_quantizer", "ai_edge_litert"), extra="litert", cpu_only=True,
                  exported=True, notes=(("int8", "dynamic-range quantisation"),))
