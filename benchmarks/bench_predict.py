"""End-to-end ``Classifier.predict`` on a folder of real photos against the model alone, same batch, one run.

The target (issue 3): end-to-end images per second >= 90 % of model-only. Decoding and cropping run in worker
threads while the model runs, so the gap is only the CPU time the workers take from the model.

    .venv/bin/python benchmarks/bench_predict.py [--images tests/data/images] [--repeat 8] [--batch-size 16]

Weights are random (no real weights can be downloaded here); speed does not depend on their values.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from timing import model_only_rate

from inceptionv3 import Classifier, InceptionV3
from inceptionv3.files import find_images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", default=str(Path(__file__).resolve().parents[1] / "tests" / "data" / "images"))
    parser.add_argument("--repeat", type=int, default=8, help="pass over the photos this many times")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=3, help="alternate the two measurements this many times")
    args = parser.parse_args()

    photos = [str(p) for p in find_images(args.images)] * args.repeat
    classifier = Classifier(InceptionV3().eval(), batch_size=args.batch_size, workers=args.workers)
    batches = len(photos) // args.batch_size
    preset = classifier.preprocess
    tensor = preset.batch(photos[:args.batch_size])
    classifier.scores(tensor)  # warm-up

    model_only, end_to_end = [], []
    for _ in range(args.rounds):
        model_only.append(model_only_rate(classifier, tensor, batches))
        start = time.perf_counter()
        results = list(classifier.predict(photos))
        end_to_end.append(len(results) / (time.perf_counter() - start))
        assert all(r.ok for r in results)
    best_model, best_e2e = max(model_only), max(end_to_end)
    print(f"{len(photos)} real photos ({len(photos) // args.repeat} distinct), batch {args.batch_size}, "
          f"{classifier.workers} decode workers, {torch.get_num_threads()} torch threads, {args.rounds} rounds")
    print(f"model only   : {best_model:6.2f} img/s  (rounds: {', '.join(f'{v:.2f}' for v in model_only)})")
    print(f"end to end   : {best_e2e:6.2f} img/s  (rounds: {', '.join(f'{v:.2f}' for v in end_to_end)})")
    print(f"ratio        : {best_e2e / best_model:.3f}  (target >= 0.90)")


if __name__ == "__main__":
    main()
