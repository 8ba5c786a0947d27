"""FID end to end against pytorch-fid, whole processes, and the distance and memory on their own.

1. Folder FID: ``inceptionv3 fid A B`` against ``python -m pytorch_fid A B``, each a fresh process, one run each,
   on the same weights file (seeded random weights in the published layout, BN statistics measured on the shared
   photos; pytorch-fid reads it from a temporary $TORCH_HOME, ours gets ``--weights``, so nothing is downloaded).
   Each folder holds ``--images`` crops and flips of tests/data/images: half 256x256 PNGs, half 1024x1024 JPEGs.
   pytorch-fid stacks a batch before resizing, so each batch must be one size: the PNGs sort first and each half
   is a multiple of the batch size. Prints both wall times, their ratio, both FIDs and their relative gap.
2. The Fréchet distance alone at d=2048: ours (eigh) against scipy's sqrtm (pytorch-fid's function), on
   covariances of 4096 and of 100 synthetic samples (the exact value from an n x n SVD where the rank is low).
3. Peak RSS of streaming N synthetic 2048-d features (batches of 50) through FIDStatistics, N = 2,000 and 20,000,
   each in a fresh process: memory is O(d^2), whatever N.

    .venv/bin/python benchmarks/bench_fid.py [--images 2000] [--batch-size 50] [--device cpu] [--skip-folders]
                                          [--skip-distance] [--backend eager,auto]
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from inceptionv3.fid_math import FIDStatistics, frechet_distance
from inceptionv3.files import find_images
from inceptionv3.model import InceptionV3

REPO = Path(__file__).resolve().parents[1]
PT_NAME = "pt_inception-2015-12-05-6726825d.pth"


def realistic_fid_weights(photos: list[Path], path: Path) -> None:
    """Random weights in the published file's layout, BN statistics measured on real photos (realistic features)."""
    torch.manual_seed(0)
    model = InceptionV3(num_classes=1008, count_include_pad=False, mixed_7c_pool="max", init_weights=False)
    batch = torch.stack([torch.from_numpy(np.array(Image.open(p).convert("RGB").resize((299, 299))))
                         for p in photos[:8]]).permute(0, 3, 1, 2).float() / 127.5 - 1
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None
            module.reset_running_stats()
    model.train()
    with torch.no_grad():
        model(batch)
    state = collections.OrderedDict((k, v) for k, v in model.eval().state_dict().items()
                                    if not k.endswith("num_batches_tracked"))
    torch.save(state, path, _use_new_zipfile_serialization=False)


def make_folder(folder: Path, photos: list[Path], count: int, seed: int) -> None:
    """count / 2 PNGs at 256x256, then count / 2 JPEGs at 1024x1024 (names sort PNGs first)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for i in range(count):
        image = Image.open(photos[int(rng.integers(len(photos)))]).convert("RGB")
        w, h = image.size
        side = int(min(w, h) * rng.uniform(0.6, 0.9))
        left, top = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
        image = image.crop((left, top, left + side, top + side))
        image = ImageOps.mirror(image) if rng.integers(2) else image
        if i < count // 2:
            image.resize((256, 256), Image.BICUBIC).save(folder / f"a{i:05d}.png")
        else:
            image.resize((1024, 1024), Image.BICUBIC).save(folder / f"b{i:05d}.jpg", quality=90)


def _timed(command: list[str], env: dict[str, str]) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return seconds, done.stdout


def _fid_in(output: str) -> float:
    return float(re.search(r"FID:\s+([-0-9.e+]+)", output).group(1))


def folder_fid(args: argparse.Namespace, work: Path) -> None:
    photos = find_images(REPO / "tests" / "data" / "images")
    weights = work / "torch-home" / "hub" / "checkpoints" / PT_NAME
    weights.parent.mkdir(parents=True)
    realistic_fid_weights(photos, weights)
    a, b = work / "a", work / "b"
    start = time.perf_counter()
    make_folder(a, photos, args.images, 1)
    make_folder(b, photos, args.images, 2)
    print(f"made 2 x {args.images} images in {time.perf_counter() - start:.0f} s")
    env = dict(os.environ, TORCH_HOME=str(work / "torch-home"), INCEPTIONV3_OFFLINE="1",
               INCEPTIONV3_HOME=str(work / "home"))  # a fresh cache: an OpenVINO run includes its one-time export
    common = ["--batch-size", str(args.batch_size), "--device", args.device]
    reference = [sys.executable, "-m", "pytorch_fid", str(a), str(b), *common]
    reference_s, reference_out = _timed(reference, env)
    fid_ref = _fid_in(reference_out)
    print(f"folder FID, 2 x {args.images} images (half 256x256 PNG, half 1024x1024 JPEG), d=2048, batch "
          f"{args.batch_size}, {args.device}, default workers:")
    print(f"  python -m pytorch_fid A B   {reference_s:7.1f} s  FID {fid_ref:.10f}")
    results = {}
    for backend in args.backend.split(","):
        ours = [sys.executable, "-m", "inceptionv3", "fid", str(a), str(b), "--weights", str(weights), "--quiet",
                *common, "--backend", backend]
        ours_s, ours_out = _timed(ours, env)
        results[backend] = fid_ours = _fid_in(ours_out)
        gap = abs(fid_ours - fid_ref) / abs(fid_ref)
        print(f"  inceptionv3 fid A B         {ours_s:7.1f} s  FID {fid_ours:.10f}  (--backend {backend}; wall-time "
              f"ratio to pytorch-fid {ours_s / reference_s:.2f}, FID relative gap {gap:.1e})")
    if "eager" in results and len(results) > 1:
        for backend, value in results.items():
            if backend != "eager":
                print(f"  --backend {backend} against eager: FID {value - results['eager']:+.3e} "
                      f"({abs(value - results['eager']) / abs(results['eager']):.1e} relative)")


def distance_only(d: int) -> None:
    from pytorch_fid.fid_score import calculate_frechet_distance

    rng = np.random.default_rng(0)
    for n in (2 * d, 100):
        x = rng.standard_normal((n, d)) @ (np.eye(d) + 0.05 * rng.standard_normal((d, d)))
        y = rng.standard_normal((n, d)) * 1.1 + 0.1
        mu1, s1, mu2, s2 = x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            start = time.perf_counter()
            ours = frechet_distance(mu1, s1, mu2, s2)
            ours_s = time.perf_counter() - start
            start = time.perf_counter()
            reference = calculate_frechet_distance(mu1, s1, mu2, s2)
            reference_s = time.perf_counter() - start
        gap = f"relative gap {abs(ours.fid - reference) / reference:.1e}"
        if n < d:  # tr sqrt(S1 S2) is the nuclear norm of Xc Yc^T / (n - 1), an n x n matrix
            xc, yc = x - x.mean(0), y - y.mean(0)
            trace = np.linalg.svd(xc @ yc.T / (n - 1), compute_uv=False).sum()
            exact = ours.mean_term + ours.trace1 + ours.trace2 - 2 * trace
            gap = (f"relative error vs exact: eigh {abs(ours.fid - exact) / exact:.1e}, "
                   f"sqrtm {abs(reference - exact) / exact:.1e}")
        print(f"distance d={d}, N={n}: eigh {ours_s:.2f} s, scipy sqrtm {reference_s:.2f} s (ratio "
              f"{reference_s / ours_s:.1f}); {gap}")


def _peak_rss_child(n: int) -> None:
    import resource

    rng = np.random.default_rng(0)
    stats = FIDStatistics()
    for start in range(0, n, 50):
        stats.update(rng.standard_normal((min(50, n - start), 2048)).astype(np.float32))
    assert stats.n == n
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # KiB on Linux


def peak_rss() -> None:
    for n in (2_000, 20_000):
        done = subprocess.run([sys.executable, __file__, "--rss-child", str(n)], capture_output=True, text=True,
                              check=True)
        print(f"peak RSS streaming {n:,} x 2048 features through FIDStatistics: "
              f"{int(done.stdout.split()[-1]) / 1024:.0f} MiB")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000, help="per folder; half PNG, half JPEG")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--backend", default="eager,auto",
                        help="ours, comma-separated: eager, auto (the default of the command), openvino")
    parser.add_argument("--skip-folders", action="store_true", help="no folder FID")
    parser.add_argument("--skip-distance", action="store_true", help="no distance or memory figures")
    parser.add_argument("--rss-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        _peak_rss_child(args.rss_child)
        return 0
    if args.images % (2 * args.batch_size):
        parser.error("--images must be a multiple of twice --batch-size (pytorch-fid batches one size at a time)")
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_folders:
            folder_fid(args, Path(tmp))
    if not args.skip_distance:
        distance_only(2048)
        peak_rss()
    return 0


if __name__ == "__main__":
    sys.exit(main())
