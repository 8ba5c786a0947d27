"""A repeated ``inference_model`` call against the pure forward pass on the same image, in one run.

The target (issue 6): a repeat call costs at most 1.2x the forward pass, so decoding, preprocessing,
caching and result building together stay under a fifth of it.

    .venv/bin/python benchmarks/bench_repeat.py [--image demo/bird.jpg] [--calls 20]

Weights are random (saved to a temporary checkpoint file); speed does not depend on their values.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from inceptionv3 import InceptionV3, inference_model, save_canonical
from inceptionv3.inference import cached_classifier


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", default=str(Path(__file__).resolve().parents[1] / "demo" / "bird.jpg"))
    parser.add_argument("--calls", type=int, default=20)
    args = parser.parse_args()

    torch.set_flush_denormal(True)
    path = Path(tempfile.mkdtemp()) / "random.safetensors"
    save_canonical(InceptionV3().eval(), path, source="inceptionv3", preprocess="mmpretrain")
    inference_model(path, args.image)  # first call: loads and caches the model
    classifier = cached_classifier(path)
    tensor = classifier.preprocess.normalize(classifier.preprocess.load(args.image)[None])
    forward, repeat = [], []
    for _ in range(args.calls):  # alternate, so that both see the same machine state
        start = time.perf_counter()
        classifier.scores(tensor)
        forward.append(time.perf_counter() - start)
        start = time.perf_counter()
        inference_model(path, args.image)
        repeat.append(time.perf_counter() - start)
    f, r = statistics.median(forward), statistics.median(repeat)
    print(f"pure forward (batch 1): {1000 * f:.1f} ms   repeat inference_model: {1000 * r:.1f} ms   "
          f"ratio {r / f:.3f} (target <= 1.2; medians of {args.calls})")


if __name__ == "__main__":
    main()
