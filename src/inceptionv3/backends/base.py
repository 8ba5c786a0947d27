"""What a backend is: a name, the precisions it runs, the packages it needs, and ``build``, which turns a model into
a :class:`Runner`. Each backend module declares one :class:`Backend` as ``BACKEND``; ``backends.REGISTRY`` lists
them, and ``make_runner`` checks the request against them before anything is built."""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

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


@dataclass(frozen=True)
class Build:
    """What a backend's ``build`` gets: the model, the precision, the device, the input shape (1 x 3 x H x W),
    and calibration images for post-training int8 (None when not given)."""

    model: nn.Module
    precision: str
    device: torch.device
    shape: tuple[int, ...]
    calibration: torch.Tensor | None = None

    def autocast(self):
        """bf16 through autocast for the PyTorch backends; a no-op otherwise."""
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()


@dataclass(frozen=True)
class Backend:
    """One way to run the model. ``exported`` backends run a file from the export cache, so a read-only or full
    cache makes them fall back to eager (except at int8, which eager cannot give)."""

    name: str
    build: Callable[[Build], RunFn]
    precisions: tuple[str, ...] = ("fp32", "bf16")
    modules: tuple[str, ...] = ()
    """The packages it needs, and the extra that installs them."""
    extra: str = ""
    cpu_only: bool = False
    exported: bool = False
    notes: tuple[tuple[str, str], ...] = ()
    """(precision, how this backend runs it), said when another backend refuses that precision."""

    def available(self) -> bool:
        """Whether its packages are installed (the PyTorch ones always are)."""
        return all(importlib.util.find_spec(m) is not None for m in self.modules)


__all__ = ["PRECISIONS", "Backend", "Build", "RunFn", "Runner"]
