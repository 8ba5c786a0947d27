"""LitServe around ``inceptionv3.Classifier``: JSON ``{"image": "<base64 JPEG>"}`` in, the top 5 out.

Started by ``benchmarks/bench_peers.py``, which sets the BENCH_* variables; LitServe's own batcher (``max_batch_size``,
``batch_timeout``) gathers requests for one ``predict``.
"""

import base64
import os

import litserve as ls
import torch

from inceptionv3.inference import Classifier


class InceptionV3API(ls.LitAPI):
    def setup(self, device):
        self.classifier = Classifier(None, os.environ["BENCH_WEIGHTS"], device="cpu",
                                     backend=os.environ["BENCH_BACKEND"], expected_images=10_000, decode="fast")
        crop = self.classifier.preprocess.crop
        for n in sorted({1, self.max_batch_size}):  # warm up before /health answers, as `inceptionv3 serve` does
            self.classifier.scores(torch.zeros(n, 3, crop, crop))

    def decode_request(self, request):
        return self.classifier.load_views(base64.b64decode(request["image"]), "<upload>")

    def batch(self, inputs):
        return inputs  # a list of views, as predict_views takes them

    def predict(self, views):
        return self.classifier.predict_views(views, batch_size=len(views))

    def encode_response(self, prediction):
        top = prediction.topk(5, self.classifier.class_names)
        return {"predictions": [{"label": name, "class_id": label, "score": score} for label, name, score in top]}


if __name__ == "__main__":
    api = InceptionV3API(max_batch_size=int(os.environ["BENCH_MAX_BATCH"]),
                         batch_timeout=float(os.environ["BENCH_DELAY_MS"]) / 1000)
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1)
    server.run(host="127.0.0.1", port=int(os.environ["BENCH_PORT"]), generate_client_file=False, log_level="warning")
