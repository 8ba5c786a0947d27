"""Benchmark: ratios to eager fp32 from one run, and the matrix-product peak they are read against."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from inceptionv3 import benchmark


def test_benchmark_reports_ratios_from_one_run(model_and_batch):
    model, batch = model_and_batch
    rows = benchmark.benchmark(model, batch, ["onnxruntime"], ["fp32"], [2], seconds=0.5)
    assert [(r["backend"], r["batch"]) for r in rows] == [("eager", 2), ("onnxruntime", 2)]
    assert rows[0]["ratio_to_eager_fp32"] == 1.0 and all(r["runs"] >= 2 for r in rows)
    for r in rows:
        assert np.isclose(r["img_per_s"], 2000 / r["latency_ms"])
        assert np.isclose(r["gflop_per_s"], r["img_per_s"] * 2 * 5_713_216_096 / 1e9)
        assert np.isclose(r["fraction_of_peak"], r["gflop_per_s"] / r["matmul_peak_gflop_per_s"])


def test_matmul_peak_is_the_fastest_product_on_the_clock(monkeypatch):
    ticks = iter(range(10**6))  # a clock that advances 1 ms per reading: every product "takes" 1 ms
    monkeypatch.setattr(benchmark.time, "perf_counter", lambda: next(ticks) / 1000)
    assert benchmark.matmul_peak("fp32", seconds=0.05, size=64) == pytest.approx(2 * 64**3 / 0.001 / 1e9)


def test_matmul_peak_times_a_real_product(monkeypatch):
    calls = []
    real_mm = torch.mm
    monkeypatch.setattr(torch, "mm", lambda a, b: calls.append((a.dtype, a.shape)) or real_mm(a, b))
    peak = benchmark.matmul_peak("bf16", seconds=0.2, size=256)
    assert calls and set(calls) == {(torch.bfloat16, (256, 256))} and peak > 0
