"""FID end to end and its last step, against pytorch-fid, on the same weights and folders.

1. Folder FID: ``inceptionv3.metrics`` (streamed float64 statistics, eigh distance) against pytorch-fid's
   ``calculate_fid_given_paths`` on two folders of flips and crops of the shared photos. Both load one weights file
   in the published layout (seeded random weights, BN statistics measured on the photos); pytorch-fid reads it from
   a temporary $TORCH_HOME, so nothing is downloaded. Prints both wall times, both FIDs and their relative gap.
2. The distance alone at d=2048 on synthetic covariances: eigh against scipy's sqrtm (pytorch-fid's path), full
   rank and rank-deficient, with the exact value from an n x n SVD where the rank is low.

    .venv/bin/python benchmarks/bench_fid.py [--images 100] [--dims 2048] [--batch-size 50] [--device cpu]
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from inceptionv3.decode import find_images
from inceptionv3.fid_math import frechet_distance
from inceptionv3.metrics import folder_statistics, make_extractor
from inceptionv3.model import InceptionV3

REPO = Path(__file__).resolve().parents[1]
PT_NAME = "pt_inception-2015-12-05-6726825d.pth"


def realistic_fid_weights(photos: list[Path], path: Path) -> None:
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


def make_folder(folder: Path, photos: list[Path], count: int, seed: int, size: tuple[int, int]) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for i in range(count):
        image = Image.open(photos[int(rng.integers(len(photos)))]).convert("RGB")
        w, h = image.size
        left, top = int(rng.integers(0, w // 4)), int(rng.integers(0, h // 4))
        image = image.crop((left, top, left + 3 * w // 4, top + 3 * h // 4)).resize(size, Image.BILINEAR)
        (ImageOps.mirror(image) if i % 2 else image).save(folder / f"{i:04d}.png")


def folder_fid(args: argparse.Namespace, work: Path) -> None:
    photos = find_images(REPO / "tests" / "data" / "images")
    weights = work / "torch-home" / "hub" / "checkpoints" / PT_NAME
    weights.parent.mkdir(parents=True)
    realistic_fid_weights(photos, weights)
    a, b = work / "a", work / "b"
    make_folder(a, photos, args.images, 1, (320, 240))
    make_folder(b, photos, args.images, 2, (320, 240))
    os.environ["TORCH_HOME"] = str(work / "torch-home")

    from pytorch_fid.fid_score import calculate_fid_given_paths

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = time.perf_counter()
        reference = calculate_fid_given_paths([str(a), str(b)], args.batch_size, args.device, args.dims, 0)
        reference_s = time.perf_counter() - start
        start = time.perf_counter()
        extractor = make_extractor(weights=weights, device=args.device)
        one = folder_statistics(a, extractor, layer=str(args.dims), batch_size=args.batch_size, workers=args.workers)
        two = folder_statistics(b, extractor, layer=str(args.dims), batch_size=args.batch_size, workers=args.workers)
        ours = frechet_distance(one.stats, two.stats)
        ours_s = time.perf_counter() - start
    print(f"folder FID, {args.images} images per side, d={args.dims}, batch {args.batch_size}, {args.device}:")
    print(f"  pytorch-fid  {reference_s:7.1f} s  FID {reference:.10f}")
    print(f"  inceptionv3  {ours_s:7.1f} s  FID {ours.fid:.10f}  (workers {args.workers})")
    print(f"  relative gap {abs(ours.fid - reference) / abs(reference):.2e}")


def distance_only(d: int) -> None:
    from pytorch_fid.fid_score import calculate_frechet_distance

    rng = np.random.default_rng(0)
    for n in (2 * d, 100):
        x = rng.standard_normal((n, d))
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
        exact = ""
        if n < d:
            xc, yc = x - x.mean(0), y - y.mean(0)
            trace = np.linalg.svd(xc @ yc.T / (n - 1), compute_uv=False).sum()
            exact_fid = ours.mean_term + ours.trace1 + ours.trace2 - 2 * trace
            exact = (f", vs exact: eigh {abs(ours.fid - exact_fid) / exact_fid:.1e}, "
                     f"sqrtm {abs(reference - exact_fid) / exact_fid:.1e}")
        print(f"distance d={d}, N={n}: eigh {ours_s:.2f} s, scipy sqrtm {reference_s:.2f} s, "
              f"relative gap {abs(ours.fid - reference) / reference:.1e}{exact}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--dims", type=int, default=2048, choices=(64, 192, 768, 2048))
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--skip-folders", action="store_true", help="only the distance timings")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_folders:
            folder_fid(args, Path(tmp))
    distance_only(2048)
    return 0


if __name__ == "__main__":
    sys.exit(main())
