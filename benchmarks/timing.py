"""What the benchmarks share: the model-only rate, timed the same way for every comparison."""

from __future__ import annotations

import time

import torch

from inceptionv3 import Classifier


def model_only_rate(classifier: Classifier, tensor: torch.Tensor, batches: int) -> float:
    """Images per second of ``classifier.scores`` alone on a ready batch, repeated ``batches`` times."""
    start = time.perf_counter()
    for _ in range(batches):
        classifier.scores(tensor)
    return batches * len(tensor) / (time.perf_counter() - start)
