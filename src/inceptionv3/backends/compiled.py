"""``torch.compile`` with frozen weights: the fast PyTorch path on a CPU once its warm-up (about 25 s on 2 cores, once
per process) is repaid, and on GPUs."""

from __future__ import annotations

import logging

import torch

from .base import Backend, Build, RunFn

logger = logging.getLogger("inceptionv3")


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


def build(b: Build) -> RunFn:
    import torch._inductor.config as inductor

    inductor.freezing = True  # fold the weights into the graph: the fast CPU path
    compiled = torch.compile(b.model, dynamic=False)
    compiling = True

    def run(x: torch.Tensor) -> torch.Tensor:
        nonlocal compiling
        if compiling:  # the first call compiles for 20-30 s on 2 cores, which would otherwise look like a hang
            logger.warning("compiling with torch.compile (about 25 s, once per process)")
            compiling = False
        with torch.no_grad(), b.autocast():
            return compiled(x).float()
    return fixed_batch(run)


BACKEND = Backend("compile", build)
