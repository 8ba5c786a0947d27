"""Speed measurements: images per second of each backend and precision against eager fp32 in the same run, and
the matrix-product peak they can be read against. Not used at inference time."""

from __future__ import annotations

import logging
import time

import torch
from torch import nn

from .backends import make_runner
from .errors import ExportError, InputError
from .model import count_flops

logger = logging.getLogger("inceptionv3")


def matmul_peak(precision: str, seconds: float = 1.0, size: int = 2048) -> float:
    """GFLOP/s of a large matrix product in PyTorch at this precision (int8: ``torch._int_mm``): the ceiling a
    convolution backend can approach on this machine, so that a ratio can be read against what is possible."""
    if precision == "int8":
        a = torch.randint(-128, 128, (size, size), dtype=torch.int8)
        b = torch.randint(-128, 128, (size, size), dtype=torch.int8)
        product = torch._int_mm
    else:
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
        product = torch.mm
    product(a, b)
    best, deadline = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        product(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def benchmark(model: nn.Module, batch: torch.Tensor, backends: list[str], precisions: list[str],
              batch_sizes: list[int], seconds: float = 5.0, device: torch.device | None = None) -> list[dict]:
    """Images per second, latency and the ratio to eager fp32 at the same batch size, all in one run, on the
    same real-pixel inputs, with each precision's matrix-product peak beside them. The warm-up (compilation,
    export) is excluded; rounds alternate between paths."""
    device = device or torch.device("cpu")
    # Random weights drive deep activations into denormal floats, which are slow on x86 in PyTorch but not in
    # OpenVINO (it flushes them); flushing them here too keeps the comparison about the backends.
    torch.set_flush_denormal(True)
    flops = 2 * count_flops(model, size=batch.shape[-1])  # multiply-adds x 2
    paths = [("eager", "fp32")] + [(b, p) for b in backends for p in precisions if (b, p) != ("eager", "fp32")]
    peaks = {p: matmul_peak(p) for p in {p for _, p in paths}} if device.type == "cpu" else {}
    results = []
    for size in batch_sizes:
        runners = {}  # made per batch size: a compiled runner keeps the batch size it first sees
        for backend, precision in paths:
            logger.warning("preparing %s %s at batch %d (exports are built once)", backend, precision, size)
            try:
                runners[(backend, precision)] = make_runner(model, backend, precision, device, batch.shape[-1],
                                                            calibration=batch)
            except (InputError, ExportError) as exc:
                logger.warning("skipping %s %s: %s", backend, precision, exc)
        x = batch[torch.arange(size) % len(batch)].contiguous().to(device)
        timings: dict[tuple[str, str], list[float]] = {key: [] for key in runners}
        order = list(runners)
        for round_order in (order, order[::-1]):  # two blocks per path, the second in reverse order
            for key in round_order:
                run = runners[key]
                run(x)  # warm-up: compilation and first-call costs
                deadline = time.perf_counter() + seconds / 2
                while time.perf_counter() < deadline:
                    start = time.perf_counter()
                    run(x)
                    timings[key].append(time.perf_counter() - start)
        base = sorted(timings[("eager", "fp32")])[len(timings[("eager", "fp32")]) // 2]
        for (backend, precision), values in timings.items():
            median = sorted(values)[len(values) // 2]
            achieved = flops * size / median / 1e9
            peak = peaks.get(precision)
            results.append({"backend": backend, "precision": precision, "batch": size, "img_per_s": size / median,
                            "latency_ms": 1000 * median, "ratio_to_eager_fp32": base / median,
                            "gflop_per_s": achieved, "matmul_peak_gflop_per_s": peak,
                            "fraction_of_peak": achieved / peak if peak else None, "runs": len(values)})
    return results


__all__ = ["benchmark", "matmul_peak"]
