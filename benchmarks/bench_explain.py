"""What one explanation costs: time against the eager forward pass at batch 1 (every method of ours), and peak
memory at batch 16, ours against the grad-cam package on the same model, one run.

    .venv/bin/python benchmarks/bench_explain.py [--repeats 10] [--threads N]

Score-CAM and Ablation-CAM at Mixed_7c run 2,048 passes each, so they are timed once (several minutes).

Each figure is a median over ``--repeats`` calls after one warm-up call; peak memory is the peak RSS of a fresh
process that builds the model and runs one call at batch 16 (ru_maxrss), so the model's own footprint is in every
figure, including the forward-only one it is compared with.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from inceptionv3 import InceptionV3
from inceptionv3.explain import METHODS, PER_CHANNEL_METHODS, grad_cam


def build() -> InceptionV3:
    torch.manual_seed(0)
    return InceptionV3(init_weights=False).eval()


def median_time(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def child(kind: str, batch: int) -> None:
    """One call of ``kind`` at ``batch`` in this fresh process; prints the peak RSS in MiB."""
    model = build()
    x = torch.randn(batch, 3, 299, 299)
    if kind == "forward":
        with torch.inference_mode():
            model(x)
    elif kind == "ours":
        grad_cam(model, x)
    elif kind == "scorecam":  # the peak does not depend on the layer's width (one batch of passes at a time)
        grad_cam(model, x, method="scorecam", layer="Conv2d_2a_3x3")
    else:
        from pytorch_grad_cam import GradCAM

        with GradCAM(model=model, target_layers=[model.Mixed_7c]) as cam:
            cam(x, None)
    print(json.dumps({"peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def peak(kind: str, batch: int) -> float:
    out = subprocess.run([sys.executable, __file__, "--child", kind, "--batch", str(batch)], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_mib"]


def faithfulness_cost(model: InceptionV3, t_forward: float) -> None:
    """One map's scores at 299 (each with its random map): deletion and insertion at 50 steps, and ROAD."""
    import numpy as np

    from inceptionv3.faithfulness import faithfulness
    from inceptionv3.preprocess import PRESETS

    preprocess = PRESETS["mmpretrain"]
    crop = np.random.default_rng(0).integers(0, 256, (299, 299, 3), dtype=np.uint8)
    heatmap = grad_cam(model, preprocess.normalize(crop[None])).maps[0].numpy()
    for scores in (("deletion", "insertion"), ("road",)):
        start = time.perf_counter()
        faithfulness(model, preprocess.normalize, crop, heatmap, 0, scores, steps=50)
        took = time.perf_counter() - start
        print(f"  --score {','.join(scores)}: {took:.1f} s per image, random map included "
              f"({took / t_forward:.0f}x the forward)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=16, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        child(args.child, args.batch)
        return
    cpu = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
    print(f"{cpu.group(1) if cpu else platform.machine()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}")
    model = build()
    x = torch.randn(1, 3, 299, 299)

    def forward() -> None:
        with torch.inference_mode():
            model(x)

    def theirs() -> None:
        from pytorch_grad_cam import GradCAM

        with GradCAM(model=model, target_layers=[model.Mixed_7c]) as cam:
            cam(x, None)

    t_forward = median_time(forward, args.repeats)
    t_ours = median_time(lambda: grad_cam(model, x), args.repeats)
    t_theirs = median_time(theirs, args.repeats)
    print(f"batch 1 at 299: eager forward {t_forward * 1e3:.1f} ms; Grad-CAM ours {t_ours * 1e3:.1f} ms "
          f"({t_ours / t_forward:.2f}x the forward); grad-cam package {t_theirs * 1e3:.1f} ms "
          f"({t_theirs / t_forward:.2f}x)")
    for method in METHODS:
        if method in PER_CHANNEL_METHODS:  # minutes each: one call, no warm-up
            start = time.perf_counter()
            grad_cam(model, x, method=method)
            t_method = time.perf_counter() - start
        else:
            t_method = median_time(lambda method=method: grad_cam(model, x, method=method), args.repeats)
        print(f"  --method {method}: {t_method * 1e3:.1f} ms ({t_method / t_forward:.2f}x the forward)")
    start = time.perf_counter()
    from pytorch_grad_cam import AblationCAM

    with AblationCAM(model=model, target_layers=[model.Mixed_7c]) as cam:
        cam(x, None)
    t_ablation = time.perf_counter() - start
    print(f"  grad-cam package AblationCAM: {t_ablation * 1e3:.1f} ms ({t_ablation / t_forward:.2f}x the forward)")
    faithfulness_cost(model, t_forward)
    rows = {kind: peak(kind, args.batch) for kind in ("forward", "ours", "grad-cam")}
    print(f"peak RSS at batch {args.batch}: forward only {rows['forward']:.0f} MiB; Grad-CAM ours "
          f"{rows['ours']:.0f} MiB; grad-cam package {rows['grad-cam']:.0f} MiB")
    print(f"peak RSS of Score-CAM on a batch of 8 (its passes 16 at a time): {peak('scorecam', 8):.0f} MiB")


if __name__ == "__main__":
    main()
