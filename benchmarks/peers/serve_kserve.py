"""KServe's Python ``ModelServer`` around ``inceptionv3.Classifier``: the v1 protocol,
``{"instances": [{"image": {"b64": "<base64 JPEG>"}}]}`` in, ``{"predictions": [top 5 per instance]}`` out.

Started by ``benchmarks/bench_peers.py``, which sets the BENCH_* variables. The Python server has no batcher (in a
cluster, KServe batches in a sidecar agent in front of it): a synchronous ``predict`` runs one request at a time.
"""

import base64
import os

import torch
from kserve import Model, ModelServer

from inceptionv3.inference import Classifier


class InceptionV3Model(Model):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.load()

    def load(self) -> bool:
        self.classifier = Classifier(None, os.environ["BENCH_WEIGHTS"], device="cpu",
                                     backend=os.environ["BENCH_BACKEND"], expected_images=10_000, decode="fast")
        crop = self.classifier.preprocess.crop
        for n in sorted({1, int(os.environ["BENCH_MAX_BATCH"])}):  # warm up before ready, as `inceptionv3 serve` does
            self.classifier.scores(torch.zeros(n, 3, crop, crop))
        self.ready = True
        return self.ready

    def predict(self, payload: dict, headers: dict | None = None) -> dict:
        views = [self.classifier.load_views(base64.b64decode(instance["image"]["b64"]), "<upload>")
                 for instance in payload["instances"]]
        predictions = self.classifier.predict_views(views, batch_size=len(views))
        return {"predictions": [[{"label": name, "class_id": label, "score": score}
                                 for label, name, score in p.topk(5, self.classifier.class_names)]
                                for p in predictions]}


if __name__ == "__main__":
    ModelServer(http_port=int(os.environ["BENCH_PORT"]), enable_grpc=False, enable_latency_logging=False).start(
        [InceptionV3Model("inceptionv3")])
