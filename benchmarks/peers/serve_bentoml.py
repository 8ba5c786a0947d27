"""BentoML around ``inceptionv3.Classifier``: JSON ``{"images": ["<base64 JPEG>"]}`` in, one top 5 per image out.

Started by ``benchmarks/bench_peers.py`` (``bentoml serve serve_bentoml:InceptionV3``), which sets the BENCH_*
variables. The API is batchable: BentoML's adaptive batcher merges the lists of concurrent requests, up to
``max_batch_size``; it has no fixed wait, only ``max_latency_ms``, a latency budget past which requests get 503.
"""

import base64
import os

import bentoml
import torch

from inceptionv3.inference import Classifier

MAX_BATCH = int(os.environ.get("BENCH_MAX_BATCH", "8"))


@bentoml.service(workers=1, logging={"access": {"enabled": False}})
class InceptionV3:
    def __init__(self) -> None:
        self.classifier = Classifier(None, os.environ["BENCH_WEIGHTS"], device="cpu",
                                     backend=os.environ["BENCH_BACKEND"], expected_images=10_000, decode="fast")
        crop = self.classifier.preprocess.crop
        for n in sorted({1, MAX_BATCH}):  # warm up before /readyz answers, as `inceptionv3 serve` does
            self.classifier.scores(torch.zeros(n, 3, crop, crop))

    @bentoml.api(batchable=True, max_batch_size=MAX_BATCH,
                 max_latency_ms=int(os.environ.get("BENCH_MAX_LATENCY_MS", "60000")))
    def predict(self, images: list[str]) -> list[dict]:
        views = [self.classifier.load_views(base64.b64decode(image), "<upload>") for image in images]
        predictions = self.classifier.predict_views(views, batch_size=len(views))
        return [{"predictions": [{"label": name, "class_id": label, "score": score}
                                 for label, name, score in p.topk(5, self.classifier.class_names)]}
                for p in predictions]
