"""``inceptionv3 test`` end to end (decode, crop, model, metrics) against the model alone, same batch, one run.

Builds a val-style folder (``ILSVRC2012_val_*.JPEG`` plus ``val.txt``) from the real photos, repeated to
``--images`` files, scores it with ``evaluate`` and times the bare forward passes on the same batch size.

    .venv/bin/python benchmarks/bench_test.py [--images 160] [--batch-size 32] [--rounds 2]

Weights are random (no real weights can be downloaded here); speed does not depend on their values.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import torch
from timing import model_only_rate

from inceptionv3 import Classifier, InceptionV3
from inceptionv3.data import load_dataset
from inceptionv3.evaluate import EvalConfig, evaluate
from inceptionv3.files import find_images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", default=str(Path(__file__).resolve().parents[1] / "tests" / "data" / "images"))
    parser.add_argument("--images", type=int, default=160)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    photos = find_images(args.photos)
    root = Path(tempfile.mkdtemp())
    lines = []
    for n in range(args.images):
        name = f"ILSVRC2012_val_{n + 1:08d}.JPEG"
        shutil.copy(photos[n % len(photos)], root / name)
        lines.append(f"{name} {n % 1000}")
    (root / "val.txt").write_text("\n".join(lines) + "\n")
    dataset = load_dataset(root, root / "val.txt")

    classifier = Classifier(InceptionV3().eval(), batch_size=args.batch_size)
    preset = classifier.preprocess
    tensor = preset.batch(dataset.items[:args.batch_size])
    classifier.scores(tensor)  # warm-up
    batches = -(-len(dataset) // args.batch_size)
    model_only, end_to_end = [], []
    for _ in range(args.rounds):
        model_only.append(model_only_rate(classifier, tensor, batches))
        report, _, _ = evaluate([classifier], dataset, EvalConfig(data=str(root), models=("random",)), progress=False)
        end_to_end.append(report["images_per_s"])
    shutil.rmtree(root)
    best_model, best_e2e = max(model_only), max(end_to_end)
    print(f"{len(dataset)} images, batch {args.batch_size}, {classifier.workers} decode workers, "
          f"{torch.get_num_threads()} torch threads, {args.rounds} rounds")
    print(f"model only : {best_model:6.2f} img/s  (rounds: {', '.join(f'{v:.2f}' for v in model_only)})")
    print(f"test       : {best_e2e:6.2f} img/s  (rounds: {', '.join(f'{v:.2f}' for v in end_to_end)})")
    print(f"ratio      : {best_e2e / best_model:.3f}")


if __name__ == "__main__":
    main()
