"""KServe's Python ``ModelServer`` around ``inceptionv3.Classifier``: the v1 protocol,
``{"instances": [{"image": {"b64": "<base64 JPEG>"}}]}`` in, ``{"predictions": [top 5 per instance]}`` out; and, when
BENCH_GRPC_PORT is set, the v2 protocol over gRPC too: a BYTES ``image`` input in, a BYTES [N, 5] output of
``"score:index:label"`` out (what Triton's classification extension gives).

Started by ``benchmarks/bench_peers.py``, which sets the BENCH_* variables. The Python server has no batcher (in a
cluster, KServe batches in a sidecar agent in front of it): a synchronous ``predict`` runs one request at a time.
"""

import base64
import os

import numpy as np
import torch
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer

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

    def predict(self, payload: dict | InferRequest, headers: dict | None = None) -> dict | InferResponse:
        if isinstance(payload, InferRequest):  # v2 (gRPC)
            top = self.top5(list(payload.inputs[0].as_numpy()))
            rows = np.array([[f"{score:.6f}:{label}:{name}".encode() for label, name, score in row] for row in top],
                            dtype=object)
            output = InferOutput("probabilities", list(rows.shape), "BYTES")
            output.set_data_from_numpy(rows)
            return InferResponse(payload.id, self.name, [output])
        top = self.top5([base64.b64decode(instance["image"]["b64"]) for instance in payload["instances"]])
        return {"predictions": [[{"label": name, "class_id": label, "score": score} for label, name, score in row]
                                for row in top]}

    def top5(self, images: list[bytes]) -> list:
        views = [self.classifier.load_views(image, "<upload>") for image in images]
        predictions = self.classifier.predict_views(views, batch_size=len(views))
        return [p.topk(5, self.classifier.class_names) for p in predictions]


if __name__ == "__main__":
    grpc_port = os.environ.get("BENCH_GRPC_PORT")
    ModelServer(http_port=int(os.environ["BENCH_PORT"]), grpc_port=int(grpc_port or 0), enable_grpc=bool(grpc_port),
                enable_latency_logging=False).start([InceptionV3Model("inceptionv3")])
