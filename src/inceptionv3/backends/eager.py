"""Eager PyTorch: the reference arithmetic, on any device; bf16 through autocast."""

from __future__ import annotations

import torch

from .base import Backend, Build, RunFn


def build(b: Build) -> RunFn:
    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), b.autocast():
            return b.model(x).float()
    return run


BACKEND = Backend("eager", build)
