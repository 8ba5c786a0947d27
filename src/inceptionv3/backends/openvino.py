"""OpenVINO on the CPU: the fastest path here (about 116 % of a 2048² matmul's GFLOP/s in fp32), bf16 where the CPU
has it, and int8 by NNCF's post-training quantisation, calibrated on the user's own images."""

from __future__ import annotations

from ..errors import InputError
from ..export import load_runner
from .base import Backend, Build, RunFn
from .cache import cached_export, int8_model


def build(b: Build) -> RunFn:
    if b.precision == "int8":
        if b.calibration is None or len(b.calibration) == 0:
            raise InputError("int8 needs calibration images from your data (--calibration DIR)")
        return load_runner(int8_model(b.model, b.shape, b.calibration), "openvino", "int8")
    return load_runner(cached_export(b.model, "openvino", b.shape, "fp32"), "openvino", b.precision)  # bf16: compiled


BACKEND = Backend("openvino", build, precisions=("fp32", "bf16", "int8"), modules=("openvino",), extra="openvino",
                  cpu_only=True, exported=True, notes=(("int8", "NNCF post-training quantisation"),))
