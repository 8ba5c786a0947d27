"""ADM evaluation: its cost against plain FID on the same images, the sFID distance, float16 distances, memory.

1. ``inceptionv3 fid --adm REF.npz SAMPLE.npz`` against ``inceptionv3 fid --preset tf SAMPLE/ REF/`` on the same
   images as PNG folders, each a fresh process, the same weights (seeded, BN measured on the shared photos) and the
   default backend. ``--images`` 256x256 crops and tints of tests/data/images per side. Prints both wall times and
   their ratio (ADM mode also computes the spatial statistics, IS and precision/recall).
2. The Fréchet distance at d = 2023 (sFID) against d = 2048 (FID), on covariances of 4,096 synthetic samples.
3. Precision and recall from the run's own pool features: float64 distances (ours) against the evaluator's float16
   distance block (norms and products rounded to float16 as its TensorFlow graph casts them).
4. Peak RSS of ``fid --adm`` on a sample batch of N and of 10 N images against a 100-image reference, each a fresh
   process: the array is read a batch at a time, so memory grows only by the kept pool features (8 KB an image).

    .venv/bin/python benchmarks/bench_adm.py [--images 500] [--rss-images 300] [--skip-speed] [--skip-rss]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_fid import realistic_fid_weights
from PIL import Image

from inceptionv3.fid_math import FIDStatistics, frechet_distance
from inceptionv3.files import find_images

REPO = Path(__file__).resolve().parents[1]


def synthetic_batch(n: int, seed: int, size: int = 256) -> np.ndarray:
    """n crops of the shared photos at size x size, each shifted and tinted differently (uint8 N x H x W x 3)."""
    rng = np.random.default_rng(seed)
    photos = [np.array(Image.open(p).convert("RGB").resize((400, 320))) for p in find_images(REPO / "tests/data")]
    out = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        photo = photos[int(rng.integers(len(photos)))]
        top, left = int(rng.integers(0, 320 - size)), int(rng.integers(0, 400 - size))
        tint = rng.integers(-30, 30, size=3)
        out[i] = np.clip(photo[top:top + size, left:left + size].astype(int) + tint, 0, 255)
    return out


def run(args: list[str]) -> tuple[float, str, int]:
    """Wall time, stdout and the child's peak RSS in MB of one ``inceptionv3`` process."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "inceptionv3", *args], capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(done.stderr)
    return elapsed, done.stdout, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024


def fp16_squared_distances(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """The evaluator's distance block: features cast to float16, squared norms and the product rounded to float16
    (accumulated in float32, as GPU kernels do), combined in float16, clamped at 0."""
    u16, v16 = u.astype(np.float16).astype(np.float32), v.astype(np.float16).astype(np.float32)
    norm_u = (u16 ** 2).sum(1).astype(np.float16)
    norm_v = (v16 ** 2).sum(1).astype(np.float16)
    product = (u16 @ v16.T).astype(np.float16)
    return np.maximum(norm_u[:, None] - np.float16(2) * product + norm_v[None, :], np.float16(0))


def prc_from(distance, ref: np.ndarray, sample: np.ndarray, k: int = 3) -> tuple[float, float]:
    radii_ref = np.partition(distance(ref, ref), k, axis=1)[:, k]
    radii_sample = np.partition(distance(sample, sample), k, axis=1)[:, k]
    cross = distance(ref, sample)
    return float((cross <= radii_ref[:, None]).any(0).mean()), float((cross <= radii_sample[None, :]).any(1).mean())


def float64_squared_distances(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    u, v = u.astype(np.float64), v.astype(np.float64)
    return np.maximum((u ** 2).sum(1)[:, None] - 2 * u @ v.T + (v ** 2).sum(1)[None, :], 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--rss-images", type=int, default=300)
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-rss", action="store_true")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-adm-"))
    weights = root / "fid.pth"
    realistic_fid_weights(find_images(REPO / "tests/data"), weights)
    common = ["--weights", str(weights), "--quiet"]

    if not args.skip_speed:
        ref, sample = synthetic_batch(args.images, 1), synthetic_batch(args.images, 2)
        np.savez(root / "ref.npz", ref)
        np.savez(root / "sample.npz", sample)
        for name, images in (("ref", ref), ("sample", sample)):
            (root / name).mkdir()
            for i, image in enumerate(images):
                Image.fromarray(image).save(root / name / f"{i:05d}.png")
        run(["fid", "--preset", "tf", str(root / "sample"), str(root / "ref"), *common])  # exports the taps once
        run(["fid", "--adm", str(root / "ref.npz"), str(root / "sample.npz"), *common, "--json",
             str(root / "warm.json")])
        plain, plain_out, _ = run(["fid", "--preset", "tf", str(root / "sample"), str(root / "ref"), *common])
        adm, adm_out, _ = run(["fid", "--adm", str(root / "ref.npz"), str(root / "sample.npz"), *common, "--json",
                               str(root / "adm.json"), "--overwrite"])
        print(f"{args.images} + {args.images} images at 256x256, default backend:")
        print(f"  fid --preset tf on PNG folders  {plain:7.1f} s   {plain_out.splitlines()[0]}")
        print(f"  fid --adm on .npz batches       {adm:7.1f} s   ratio {adm / plain:.2f}")
        print("  " + "\n  ".join(adm_out.strip().splitlines()))

        from inceptionv3.adm import adm_side
        from inceptionv3.features import make_extractor

        extractor = make_extractor("tf", weights, device="cpu", backend="auto", images=2 * args.images)
        pools = [adm_side(root / f"{name}.npz", extractor).pool for name in ("ref", "sample")]
        ours = prc_from(float64_squared_distances, *pools)
        theirs = prc_from(fp16_squared_distances, *pools)
        print(f"precision/recall, {args.images} a side: float64 {ours[0]:.4f} / {ours[1]:.4f}, the evaluator's "
              f"float16 {theirs[0]:.4f} / {theirs[1]:.4f}, gaps {abs(ours[0] - theirs[0]):.4f} / "
              f"{abs(ours[1] - theirs[1]):.4f}")
        report = json.loads((root / "adm.json").read_text())
        print(f"  (the command's own precision/recall: {report['precision']:.4f} / {report['recall']:.4f})")

    rng = np.random.default_rng(0)
    for dims in (2023, 2048):
        stats = [FIDStatistics().update(rng.standard_normal((4096, dims)) * rng.uniform(0.5, 2, dims))
                 for _ in range(2)]
        start = time.perf_counter()
        frechet_distance(*stats)
        print(f"Fréchet distance at d = {dims}: {time.perf_counter() - start:.2f} s")

    if not args.skip_rss:
        np.savez(root / "rss-ref.npz", synthetic_batch(100, 3))
        for n in (args.rss_images, 10 * args.rss_images):
            np.savez(root / f"rss-{n}.npz", synthetic_batch(n, 4))
            script = ("import resource, sys\nfrom inceptionv3.cli import main\nmain(sys.argv[1:])\n"
                      "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)")
            start = time.perf_counter()
            done = subprocess.run([sys.executable, "-c", script, "fid", "--adm", str(root / "rss-ref.npz"),
                                   str(root / f"rss-{n}.npz"), *common], capture_output=True, text=True, check=True)
            print(f"fid --adm, {n} samples of 256x256 ({n * 256 * 256 * 3 / 2**20:.0f} MB): peak RSS "
                  f"{done.stdout.split()[-1]} MB, {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
