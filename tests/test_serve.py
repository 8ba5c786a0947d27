"""The HTTP server against real clients on 127.0.0.1: httpx, tritonclient (the Open Inference Protocol v2) and a
headless Chromium on the web page. Every request is bounded in time; every server stops by itself."""

from __future__ import annotations

import base64
import io
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from conftest import free_port, photo_paths, wait_ready
from PIL import Image

from inceptionv3.errors import InputError
from inceptionv3.inference import Classifier
from inceptionv3.serve.app import ServeConfig, create_app

TIMEOUT = 60.0


@pytest.fixture(scope="module")
def classifier(trained_like_checkpoint):
    return Classifier(trained_like_checkpoint, backend="eager", device="cpu")


@pytest.fixture(scope="module")
def rolled(trained_like_checkpoint, tmp_path_factory):
    """A second model: the same checkpoint with its classifier's rows rolled by one, so that its scores for class
    i + 1 are the first model's for class i."""
    state = torch.load(trained_like_checkpoint, weights_only=True)
    for key in ("backbone.fc.weight", "backbone.fc.bias"):
        state["state_dict"][key] = state["state_dict"][key].roll(1, dims=0)
    path = tmp_path_factory.mktemp("rolled") / "rolled.pth"
    torch.save(state, path)
    return Classifier(path, backend="eager", device="cpu")


@pytest.fixture(scope="module")
def app(classifier, rolled):
    """Two models (``inceptionv3``, the default, and ``rolled``) over REST and gRPC: uvicorn in a thread of this
    process, on free loopback ports; stopped at the end of the module."""
    import uvicorn

    config = ServeConfig(max_batch=4, max_pixels=2_000_000, max_files=4, max_body_mb=2.0, timeout_s=30.0,
                         grpc_port=0)
    app = create_app(config, {"inceptionv3": classifier, "rolled": rolled})
    port = free_port()
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    app.state.base = f"http://127.0.0.1:{port}"
    wait_ready(app.state.base)
    yield app
    uv.should_exit = True
    thread.join(30)
    assert not thread.is_alive()


@pytest.fixture(scope="module")
def server(app):
    return app.state.base, app.state.server


def _jpeg(index: int, size: tuple[int, int] | None = None) -> bytes:
    image = Image.open(photo_paths()[index]).convert("RGB")
    if size:
        image = image.resize(size)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def _expected(classifier, data: bytes, k: int = 5) -> list[tuple[int, float]]:
    """The in-process answer for the same bytes: the Classifier's own predict, batch of one."""
    prediction = next(classifier.predict([data], batch_size=1))
    return [(label, score) for label, _, score in prediction.topk(k)]


def test_every_read_endpoint_answers_and_requests_carry_an_id(server):
    base, state = server
    with httpx.Client(base_url=base, timeout=TIMEOUT) as client:
        page = client.get("/")
        assert page.status_code == 200 and "<title>inceptionv3</title>" in page.text
        assert "http://" not in page.text.replace("http://www.w3.org", "") and "https://" not in page.text
        assert client.get("/healthz").json() == {"status": "live"}
        assert client.get("/readyz").status_code == 200
        card = client.get("/v1/models").json()
        assert card["num_classes"] == 1000 and card["backend"] == "eager" and card["limits"]["max_files"] == 4
        assert client.get("/v2").json()["extensions"] == ["classification", "binary_tensor_data", "model_repository"]
        assert client.get("/v2/health/live").status_code == 200
        assert client.get("/v2/health/ready").json() == {"ready": True}
        meta = client.get("/v2/models/inceptionv3").json()
        assert meta["inputs"][0] == {"name": "image", "datatype": "BYTES", "shape": [-1]}
        assert client.get("/v2/models/inceptionv3/ready").status_code == 200
        missing = client.get("/v2/models/resnet/ready")
        assert missing.status_code == 404 and "resnet" in missing.json()["error"]
        given = client.get("/healthz", headers={"X-Request-ID": "abc-123"})
        assert given.headers["x-request-id"] == "abc-123"
        made = client.get("/healthz", headers={"X-Request-ID": "not (a) token"}).headers["x-request-id"]
        assert len(made) == 32 and made != client.get("/healthz").headers["x-request-id"]
        assert client.get("/nowhere").json() == {"error": "Not Found"}


def test_predict_takes_raw_multipart_and_json_and_answers_like_the_classifier(server, classifier):
    base, _ = server
    photos = [_jpeg(i) for i in (0, 3)]
    with httpx.Client(base_url=base, timeout=TIMEOUT) as client:
        raw = client.post("/v1/predict?topk=3", content=photos[0], headers={"Content-Type": "image/jpeg"}).json()
        expected = _expected(classifier, photos[0], 3)
        assert [p["class_id"] for p in raw["predictions"]] == [label for label, _ in expected]
        assert [p["score"] for p in raw["predictions"]] == pytest.approx([s for _, s in expected], abs=1e-6)
        assert raw["pred_label"] == expected[0][0] and raw["pred_class"] == classifier.class_names[expected[0][0]]
        assert raw["predictions"][0]["label"] == raw["pred_class"]
        files = [("files", ("a.jpg", photos[0], "image/jpeg")), ("files", ("bad.jpg", b"\xff\xd8junk", "image/jpeg")),
                 ("files", ("b.jpg", photos[1], "image/jpeg"))]
        multi = client.post("/v1/predict", files=files).json()["results"]
        assert [r["index"] for r in multi] == [0, 1, 2] and [r["name"] for r in multi] == ["a.jpg", "bad.jpg", "b.jpg"]
        second = _expected(classifier, photos[1])[0][0]
        assert multi[0]["pred_label"] == expected[0][0] and multi[2]["pred_label"] == second
        assert multi[1]["status"] == 400 and "bad.jpg" in multi[1]["error"] and "pred_label" not in multi[1]
        body = {"inputs": [base64.b64encode(p).decode() for p in photos], "parameters": {"top_k": 2}}
        listed = client.post("/v1/predict", json=body).json()["results"]
        assert [r["pred_label"] for r in listed] == [multi[0]["pred_label"], multi[2]["pred_label"]]
        assert all(len(r["predictions"]) == 2 for r in listed)
        single = client.post("/v1/predict", json={"inputs": base64.b64encode(photos[1]).decode()}).json()
        assert single["pred_label"] == multi[2]["pred_label"] and "results" not in single


def _chunks(total: int, size: int = 65536):
    sent = 0
    while sent < total:
        yield b"\0" * min(size, total - sent)
        sent += size


def test_every_error_is_json_with_its_status(server, monkeypatch):
    base, state = server
    photo = _jpeg(1)
    with httpx.Client(base_url=base, timeout=TIMEOUT) as client:
        def post(**kwargs):
            kwargs.setdefault("headers", {"Content-Type": "image/jpeg"})
            return client.post("/v1/predict", **kwargs)

        declared = post(content=b"\0" * (3 * 1024 * 1024))
        assert declared.status_code == 413 and "limit" in declared.json()["error"]
        chunked = post(content=_chunks(3 * 1024 * 1024))  # no Content-Length: counted while it streams
        assert chunked.status_code == 413 and "over the limit" in chunked.json()["error"]
        assert post(content=photo, headers={"Content-Type": "text/plain"}).status_code == 415
        assert post(content=photo, params={"topk": "0"}).status_code == 422
        assert "integer" in post(content=photo, params={"topk": "x"}).json()["error"]
        broken = post(content=b"\xff\xd8 not a jpeg")
        assert broken.status_code == 400 and "<body>" in broken.json()["error"]
        big = _jpeg(2, size=(2000, 1200))  # 2.4 MP over the server's 2 MP cap, under the library's
        pixels = post(content=big)
        assert pixels.status_code == 400 and "decompression bomb" in pixels.json()["error"]
        too_many = client.post("/v1/predict", files=[("f", (f"{i}.jpg", photo, "image/jpeg")) for i in range(5)])
        assert too_many.status_code == 400 and "files" in too_many.json()["error"].lower()
        assert client.post("/v1/predict", json={"inputs": 3}).status_code == 422
        assert client.post("/v1/predict", content=b"{", headers={"Content-Type": "application/json"}).status_code == 400

        from inceptionv3.serve.engine import QueueFullError

        def full(job):
            raise QueueFullError

        monkeypatch.setattr(state.engine, "submit", full)
        busy = post(content=photo)
        assert busy.status_code == 503 and busy.headers["retry-after"] == "1" and "busy" in busy.json()["error"]
        monkeypatch.undo()
        monkeypatch.setattr(state.config, "timeout_s", 0.3)  # the body arrives at once; the model takes 1 s
        scored = state.classifier.predict_views
        monkeypatch.setattr(state.classifier, "predict_views", lambda *a, **k: (time.sleep(1), scored(*a, **k))[1])
        late = post(content=photo)
        assert late.status_code == 504 and "timeout" in late.json()["error"]
        monkeypatch.undo()
        state.engine.ready.clear()
        try:
            assert client.get("/readyz").status_code == 503 and client.get("/healthz").status_code == 200
            assert post(content=photo).status_code == 503
        finally:
            state.engine.ready.set()
        monkeypatch.setattr(state.config, "api_key", "s3cret")
        assert post(content=photo).status_code == 401 and client.get("/healthz").status_code == 200
        assert post(content=photo, headers={"Content-Type": "image/jpeg",
                                            "Authorization": "Bearer s3cret"}).status_code == 200
        monkeypatch.undo()
        assert post(content=photo).status_code == 200  # and the server is still fine


def test_explain_returns_the_heatmap_of_the_explanations_module(server, classifier):
    base, _ = server
    photo = _jpeg(4)
    with httpx.Client(base_url=base, timeout=TIMEOUT) as client:
        answer = client.post("/v1/explain", content=photo, headers={"Content-Type": "image/jpeg"},
                             params={"method": "gradcam++", "target": "3"}).json()
        assert client.post("/v1/explain", content=photo, headers={"Content-Type": "image/jpeg"},
                           params={"method": "lime"}).status_code == 422
        costly = client.post("/v1/explain", content=photo, headers={"Content-Type": "image/jpeg"},
                             params={"method": "scorecam"})  # 2049 passes: over the default bound of 64
        card = client.get("/v1/models").json()["explain"]
    assert costly.status_code == 422 and costly.json()["error"] == (
        "method scorecam costs 2049 network passes per image; this server allows 64 (--explain-max-passes)")
    assert "scorecam" not in card["methods"] and "eigencam" in card["methods"] and card["passes"]["gradcam"] == 1
    reference = classifier.explain(photo, target=3, method="gradcam++")
    assert answer["target"]["class_id"] == 3 and answer["method"] == "gradcam++"
    assert answer["crop_box"] == pytest.approx(list(reference.crop_box))
    values = np.asarray(Image.open(io.BytesIO(base64.b64decode(answer["heatmap_values_png"])))) / 255
    assert np.abs(values - reference.heatmap).max() <= 0.5 / 255 + 1e-6
    coloured = Image.open(io.BytesIO(base64.b64decode(answer["heatmap_png"])))
    assert coloured.mode == "RGBA" and coloured.size == (299, 299)


def test_features_are_the_features_commands_for_the_same_bytes(server, trained_like_checkpoint, tmp_path):
    """/v1/features and v2's features output against `inceptionv3 features --model` on the same JPEG files, in
    float32 and float16; bad taps and dtypes are 422s that say what is allowed."""
    from inceptionv3.cli import main

    base, _ = server
    folder = tmp_path / "photos"
    folder.mkdir()
    photos = [_jpeg(i) for i in (2, 3)]
    for i, data in enumerate(photos):
        (folder / f"{i}.jpg").write_bytes(data)
    assert main(["features", str(folder), "--model", str(trained_like_checkpoint), "--out", str(tmp_path / "f.npz"),
                 "--layers", "2048", "768", "--workers", "0", "--quiet"]) == 0
    expected = np.load(tmp_path / "f.npz")
    with httpx.Client(base_url=base, timeout=TIMEOUT) as client:
        files = [("files", (f"{i}.jpg", data, "image/jpeg")) for i, data in enumerate(photos)]
        both = client.post("/v1/features", files=files, params={"taps": "2048,768"}).json()["results"]
        half = client.post("/v1/features", content=photos[0], headers={"Content-Type": "image/jpeg"},
                           params={"dtype": "float16"}).json()
        v2 = client.post("/v2/models/inceptionv3/infer", json={
            "inputs": [{"name": "image", "datatype": "BYTES", "shape": [2],
                        "data": [base64.b64encode(p).decode() for p in photos]}],
            "outputs": [{"name": "features"}, {"name": "probabilities", "parameters": {"classification": 2}}]}).json()
        bad_tap = client.post("/v1/features", content=photos[0], headers={"Content-Type": "image/jpeg"},
                              params={"taps": "pool5"})
        bad_dtype = client.post("/v1/features", content=photos[0], headers={"Content-Type": "image/jpeg"},
                                params={"dtype": "int8"})
    for i, row in enumerate(both):
        for tap in ("2048", "768"):
            assert np.abs(np.array(row["features"][tap]) - expected[tap][i]).max() <= 1e-6, tap
    assert half["dtype"] == "float16" and half["features"]["2048"] == expected["2048"][0].astype(np.float16).tolist()
    features, probabilities = v2["outputs"][1], v2["outputs"][0]
    assert features["name"] == "features" and features["shape"] == [2, 2048] and probabilities["shape"] == [2, 2]
    assert np.abs(np.array(features["data"]).reshape(2, 2048) - expected["2048"]).max() <= 1e-6
    assert bad_tap.status_code == bad_dtype.status_code == 422 and "taps must be some of 64, 192" in bad_tap.text


def test_open_inference_protocol_with_tritonclient(server, classifier):
    """tritonclient (PyPI) against /v2: liveness, readiness, metadata, then inference with base64 JSON and with the
    binary extension (raw bytes), FP32 probabilities and top-k classification."""
    import tritonclient.http as triton

    base, _ = server
    photos = [_jpeg(i) for i in (5, 6)]
    client = triton.InferenceServerClient(base.removeprefix("http://"), connection_timeout=TIMEOUT,
                                          network_timeout=TIMEOUT)
    try:
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("inceptionv3")
        assert client.get_model_metadata("inceptionv3")["outputs"][0]["name"] == "probabilities"
        encoded = triton.InferInput("image", [2], "BYTES")
        encoded.set_data_from_numpy(np.array([base64.b64encode(p) for p in photos], dtype=object), binary_data=False)
        probabilities = client.infer("inceptionv3", [encoded], outputs=[
            triton.InferRequestedOutput("probabilities", binary_data=False)]).as_numpy("probabilities")
        assert probabilities.shape == (2, 1000)
        for row, photo in zip(probabilities, photos, strict=True):
            best = _expected(classifier, photo, 1)[0]
            # the two images may share a batch on the server: float32 results move by ~1e-6 with batch make-up
            assert int(row.argmax()) == best[0] and float(row.max()) == pytest.approx(best[1], abs=1e-5)
        raw = triton.InferInput("image", [2], "BYTES")
        raw.set_data_from_numpy(np.array(photos, dtype=object), binary_data=True)
        top = client.infer("inceptionv3", [raw], outputs=[
            triton.InferRequestedOutput("probabilities", binary_data=False, class_count=5)]).as_numpy("probabilities")
        assert top.shape == (2, 5)
        for row, photo in zip(top, photos, strict=True):
            parsed = [entry.decode() if isinstance(entry, bytes) else entry for entry in row]
            assert [int(e.split(":")[1]) for e in parsed] == [label for label, _ in _expected(classifier, photo)]
    finally:
        client.close()


def _triton_grpc(app):
    import tritonclient.grpc as triton_grpc

    return triton_grpc, triton_grpc.InferenceServerClient(f"127.0.0.1:{app.state.grpc_port}")


def test_grpc_answers_as_rest_does_for_the_same_bytes_with_tritonclient(app, classifier):
    """tritonclient's gRPC client: liveness, readiness, metadata and the repository, then inference of raw BYTES
    with FP32 probabilities, top-k classification and FP16 features, each equal to the REST answer for the same
    bytes; the second model answers with its own (rolled) scores."""
    triton_grpc, client = _triton_grpc(app)
    photos = [_jpeg(i) for i in (5, 6)]
    try:
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("rolled")
        meta = client.get_model_metadata("inceptionv3", as_json=True)
        assert [o["name"] for o in meta["outputs"]] == ["probabilities", "features"]
        assert client.get_server_metadata(as_json=True)["extensions"] == ["classification", "binary_tensor_data",
                                                                         "model_repository"]
        index = client.get_model_repository_index(as_json=True)["models"]
        assert [(m["name"], m["state"]) for m in index] == [("inceptionv3", "READY"), ("rolled", "READY")]
        image = triton_grpc.InferInput("image", [2], "BYTES")
        image.set_data_from_numpy(np.array(photos, dtype=object))
        outputs = [triton_grpc.InferRequestedOutput("probabilities"), triton_grpc.InferRequestedOutput("features")]
        outputs[1]._get_tensor().parameters["datatype"].string_param = "FP16"  # this client has no setter for it
        result = client.infer("inceptionv3", [image], outputs=outputs, request_id="r-1")
        probabilities = result.as_numpy("probabilities")
        assert result.get_response().id == "r-1" and probabilities.dtype == np.float32
        rest = httpx.post(f"{app.state.base}/v2/models/inceptionv3/infer", timeout=TIMEOUT, json={
            "inputs": [{"name": "image", "datatype": "BYTES", "shape": [2],
                        "data": [base64.b64encode(p).decode() for p in photos]}],
            "outputs": [{"name": "probabilities"}, {"name": "features"}]}).json()["outputs"]
        assert np.abs(probabilities - np.array(rest[0]["data"]).reshape(2, 1000)).max() <= 1e-5
        for row, photo in zip(probabilities, photos, strict=True):
            best = _expected(classifier, photo, 1)[0]  # the in-process Classifier, batch of one
            assert int(row.argmax()) == best[0] and float(row.max()) == pytest.approx(best[1], abs=1e-5)
        features = result.as_numpy("features")
        assert features.dtype == np.float16
        assert np.abs(features - np.array(rest[1]["data"]).reshape(2, 2048)).max() <= 1e-2
        top = client.infer("rolled", [image], outputs=[triton_grpc.InferRequestedOutput("probabilities",
                                                                                         class_count=3)])
        for row, photo in zip(top.as_numpy("probabilities"), photos, strict=True):
            ids = [int(entry.decode().split(":")[1]) for entry in row]
            assert ids == [(label + 1) % 1000 for label, _ in _expected(classifier, photo, 3)]
    finally:
        client.close()


def test_grpc_refusals_are_status_codes_with_rests_messages(app, monkeypatch):
    """Each limit and error as its gRPC code: a bad image and a wrong input (INVALID_ARGUMENT), an unknown model
    (NOT_FOUND), a message over --max-body-mb and a key over --max-concurrency (RESOURCE_EXHAUSTED), a full queue
    (UNAVAILABLE), the caller's deadline (DEADLINE_EXCEEDED), and a missing key (UNAUTHENTICATED) while the probes
    stay open."""

    from inceptionv3.serve.engine import QueueFullError

    triton_grpc, client = _triton_grpc(app)
    models = app.state.models

    def code(call, *args, **kwargs):
        with pytest.raises(triton_grpc.InferenceServerException) as caught:
            call(*args, **kwargs)
        return caught.value.status(), caught.value.message()

    def image(items):
        tensor = triton_grpc.InferInput("image", [len(items)], "BYTES")
        tensor.set_data_from_numpy(np.array(items, dtype=object))
        return tensor

    try:
        status, message = code(client.infer, "inceptionv3", [image([b"\xff\xd8junk"])])
        assert status == "StatusCode.INVALID_ARGUMENT" and "image[0]" in message
        wrong = triton_grpc.InferInput("pixels", [1], "FP32")
        wrong.set_data_from_numpy(np.zeros(1, np.float32))
        assert code(client.infer, "inceptionv3", [wrong])[0] == "StatusCode.INVALID_ARGUMENT"
        status, message = code(client.infer, "resnet", [image([_jpeg(0)])])
        assert status == "StatusCode.NOT_FOUND" and "'inceptionv3', 'rolled'" in message
        assert code(client.infer, "inceptionv3", [image([b"\0" * (3 * 1024 * 1024)])])[0] == \
            "StatusCode.RESOURCE_EXHAUSTED"
        assert code(client.infer, "inceptionv3", [image([_jpeg(0)] * 5)])[0] == "StatusCode.INVALID_ARGUMENT"
        with monkeypatch.context() as patch:
            patch.setattr(models.servers["rolled"].engine, "submit", lambda job: (_ for _ in ()).throw(QueueFullError))
            status, message = code(client.infer, "rolled", [image([_jpeg(0)])])
            assert status == "StatusCode.UNAVAILABLE" and "queue" in message
            slow = models.servers["rolled"].decode
            patch.setattr(models.servers["rolled"], "decode", lambda *a: (time.sleep(0.5), slow(*a))[1])
            assert code(client.infer, "rolled", [image([_jpeg(0)])], client_timeout=0.2)[0] == \
                "StatusCode.DEADLINE_EXCEEDED"
            # on the server: the call ended at the deadline (cancelled by grpc, or timed out by the server's own
            # wait on the deadline, whichever came first), was counted so, and its place in flight was freed
            deadline, ended = time.monotonic() + 10, re.compile(
                r'code="(CANCELLED|DEADLINE_EXCEEDED)",endpoint="grpc:/inference.GRPCInferenceService/ModelInfer"')
            while not ended.search(httpx.get(f"{app.state.base}/metrics", timeout=TIMEOUT).text):
                assert time.monotonic() < deadline, "the server did not see the call end at its deadline"
                time.sleep(0.05)
            assert sum(models.in_flight.values()) == 0
        with monkeypatch.context() as patch:
            patch.setattr(models.config, "api_key", "k1,k2")
            patch.setattr(models.config, "max_concurrency", 1)
            assert code(client.get_model_metadata, "inceptionv3")[0] == "StatusCode.UNAUTHENTICATED"
            assert code(client.is_model_ready, "inceptionv3")[0] == "StatusCode.UNAUTHENTICATED"  # as REST's
            assert client.is_server_live() and client.is_server_ready()  # the probes stay open
            assert client.get_model_metadata("inceptionv3", headers={"authorization": "Bearer k2"}).name == \
                "inceptionv3"
            patch.setitem(models.in_flight, "k1", 1)
            status, message = code(client.get_model_metadata, "inceptionv3", headers={"authorization": "Bearer k1"})
            assert status == "StatusCode.RESOURCE_EXHAUSTED" and "--max-concurrency 1" in message
        metrics = httpx.get(f"{app.state.base}/metrics", timeout=TIMEOUT).text
        assert 'code="NOT_FOUND",endpoint="grpc:/inference.GRPCInferenceService/ModelInfer"' in metrics
    finally:
        client.close()


PEERS_PYTHON = Path(__file__).resolve().parents[1] / "benchmarks" / ".peers-venv" / "bin" / "python"
KSERVE_CLIENT = """
import asyncio, json, sys
import numpy as np
from kserve import InferenceGRPCClient, InferInput, InferRequest
from kserve.protocol.infer_type import RequestedOutput

async def main(url, paths):
    photos = [open(p, "rb").read() for p in paths]
    client = InferenceGRPCClient(url, timeout=60)
    out = {"live": await client.is_server_live(), "ready": await client.is_server_ready(),
           "model_ready": await client.is_model_ready("rolled")}
    raw = InferInput("image", [len(photos)], "BYTES")
    raw.set_data_from_numpy(np.array(photos, dtype=object), binary_data=True)   # raw_input_contents
    listed = InferInput("image", [len(photos)], "BYTES", data=photos)           # contents.bytes_contents
    for key, model, tensor in (("raw", "inceptionv3", raw), ("contents", "rolled", listed)):
        response = await client.infer(InferRequest(model, [tensor], request_id=key, request_outputs=[
            RequestedOutput("probabilities", {"classification": 3})]))
        rows = response.outputs[0].as_numpy()
        out[key] = {"id": response.id, "model": response.model_name,
                    "ids": [[int(e.decode().split(":")[1]) for e in row] for row in rows]}
    await client.close()
    print(json.dumps(out))

asyncio.run(main(sys.argv[1], sys.argv[2:]))
"""


@pytest.mark.peers
def test_kserves_own_grpc_client_reads_both_input_forms_and_each_model(app, classifier, tmp_path):
    """KServe's ``InferenceGRPCClient`` (from the peers' environment, where kserve lives: ``make test-peers``):
    liveness and readiness, then the top 3 of two photos sent as raw contents to the first model and as
    ``bytes_contents`` to the second, which answers with its rolled classes."""
    assert PEERS_PYTHON.exists(), "the peers' environment is missing: make test-peers builds it"
    photos = [_jpeg(i) for i in (4, 7)]
    paths = []
    for i, photo in enumerate(photos):
        paths.append(tmp_path / f"{i}.jpg")
        paths[-1].write_bytes(photo)
    done = subprocess.run([str(PEERS_PYTHON), "-c", KSERVE_CLIENT, f"127.0.0.1:{app.state.grpc_port}",
                           *map(str, paths)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    import json

    out = json.loads(done.stdout.splitlines()[-1])
    expected = [[label for label, _ in _expected(classifier, photo, 3)] for photo in photos]
    assert out["live"] and out["ready"] and out["model_ready"]
    assert out["raw"] == {"id": "raw", "model": "inceptionv3", "ids": expected}
    assert out["contents"] == {"id": "contents", "model": "rolled",
                               "ids": [[(label + 1) % 1000 for label in row] for row in expected]}


def test_grpc_health_and_reflection_with_grpcs_own_clients(app):
    """grpc.health.v1 (grpcio-health-checking's stub): SERVING for the server and each model, NOT_FOUND for a name
    it does not serve. Reflection (grpcio-reflection's client database) lists the services and gives the
    ModelInfer method's types."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    with grpc.insecure_channel(f"127.0.0.1:{app.state.grpc_port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService", "rolled"):
            assert health.Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT).status == \
                health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as missing:
            health.Check(health_pb2.HealthCheckRequest(service="resnet"), timeout=TIMEOUT)
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        watch = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=TIMEOUT)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        watch.cancel()
        database = ProtoReflectionDescriptorDatabase(channel)
        assert {"inference.GRPCInferenceService", "grpc.health.v1.Health"} <= set(database.get_services())
        from google.protobuf.descriptor_pool import DescriptorPool

        method = DescriptorPool(database).FindServiceByName("inference.GRPCInferenceService").methods_by_name[
            "ModelInfer"]
        assert (method.input_type.full_name, method.output_type.full_name) == (
            "inference.ModelInferRequest", "inference.ModelInferResponse")


def test_grpc_messages_are_tritonclients_field_for_field():
    """Every message of the service, built from protos.py's table, against tritonclient's generated copy: the same
    field names, numbers, types, repetition and message types, nested types included."""
    import tritonclient.grpc.service_pb2 as theirs

    from inceptionv3.serve import protos

    def fields(descriptor) -> dict:
        out = {}
        for f in descriptor.fields:
            out[f.name] = (f.number, f.type, f.is_repeated, f.message_type.full_name if f.message_type else None,
                           f.containing_oneof.name if f.containing_oneof else None)
        for nested in descriptor.nested_types:
            out[nested.name] = fields(nested)
        return out

    compared = []
    for name in protos.INFERENCE:
        if "." not in name:  # nested messages are compared within their parents
            ours = protos.POOL.FindMessageTypeByName(f"inference.{name}")
            assert fields(ours) == fields(theirs.DESCRIPTOR.message_types_by_name[name]), name
            compared.append(name)
    assert {"ModelInferRequest", "ModelInferResponse", "InferParameter", "RepositoryIndexResponse"} <= set(compared)
    service = theirs.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    for method in protos.POOL.FindServiceByName("inference.GRPCInferenceService").methods:
        assert (method.input_type.name, method.output_type.name) == (
            service.methods_by_name[method.name].input_type.name, service.methods_by_name[method.name].output_type.name)


def test_two_models_each_answer_with_their_own_scores_and_metrics(app, classifier):
    """?model= picks a model on v1 (the first is the default), /v2/models/{name} on v2; each model's metrics carry
    its name; an unknown name is a 404 that lists the served ones."""
    photo = _jpeg(2)
    best = _expected(classifier, photo, 1)[0][0]
    with httpx.Client(base_url=app.state.base, timeout=TIMEOUT) as client:
        default = client.post("/v1/predict", content=photo, headers={"Content-Type": "image/jpeg"}).json()
        rolled = client.post("/v1/predict?model=rolled", content=photo, headers={"Content-Type": "image/jpeg"}).json()
        body = {"inputs": base64.b64encode(photo).decode(), "parameters": {"model": "rolled"}}
        assert client.post("/v1/predict", json=body).json()["pred_label"] == (best + 1) % 1000
        assert default["pred_label"] == best and rolled["pred_label"] == (best + 1) % 1000
        assert rolled["pred_score"] == pytest.approx(default["pred_score"], abs=1e-6)
        v2 = client.post("/v2/models/rolled/infer", json={"inputs": [
            {"name": "image", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(photo).decode()]}]}).json()
        assert v2["model_name"] == "rolled" and int(np.argmax(v2["outputs"][0]["data"])) == (best + 1) % 1000
        cards = client.get("/v1/models").json(), client.get("/v1/models/rolled").json()
        assert [c["name"] for c in cards] == ["inceptionv3", "rolled"] and cards[0]["models"] == ["inceptionv3",
                                                                                                 "rolled"]
        unknown = client.post("/v1/predict?model=resnet", content=photo, headers={"Content-Type": "image/jpeg"})
        assert unknown.status_code == 404 and "'inceptionv3', 'rolled'" in unknown.json()["error"]
        metrics = client.get("/metrics").text
    assert 'inceptionv3_batch_size_count{model="rolled"}' in metrics
    assert 'inceptionv3_model_info{backend="eager",device="cpu",model="rolled"' in metrics


def test_model_names_come_from_the_zoo_the_file_or_name_equals(tmp_path):
    """One model is --name; several are each NAME=, else the zoo name, else the file's stem; clashes, bad names and
    --weights beside several models are refused before anything loads."""
    from inceptionv3.serve.config import model_specs

    assert [s.name for s in model_specs(ServeConfig())] == ["inceptionv3"]
    assert [(s.name, s.model) for s in model_specs(ServeConfig(model=["inception_v3.tv_in1k"], name="x"))] == [
        ("x", "inception_v3.tv_in1k")]
    specs = model_specs(ServeConfig(model=["inception_v3.tv_in1k", str(tmp_path / "mine.pth"), "b=other.pth"]))
    assert [(s.name, s.model) for s in specs] == [("inception_v3.tv_in1k", "inception_v3.tv_in1k"),
                                                  ("mine", str(tmp_path / "mine.pth")), ("b", "other.pth")]
    assert [(s.name, s.model) for s in model_specs(ServeConfig(model=["runs/lr=0.1/best.pt"]))] == [
        ("inceptionv3", "runs/lr=0.1/best.pt")]  # a path with '=' in a folder's name is a path
    for config, words in ((ServeConfig(model=["a.pth", "x/a.pth"]), "share a name"),
                          (ServeConfig(model=["a/b=c.pth", "d.pth"]), "must be 1 to 64"),
                          (ServeConfig(model=["a.pth", "b.pth"], weights="w.pth"), "--weights goes with one")):
        with pytest.raises(InputError, match=words):
            model_specs(config)


def test_metrics_count_requests_batches_and_decode_errors(server):
    """The server is shared by the module's tests, so the counts are compared before and after this test's own
    two requests."""
    base, _ = server

    def value(text: str, series: str) -> float:
        return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(series))

    ok, bad = 'inceptionv3_requests_total{code="200",endpoint="/v1/predict"}', "inceptionv3_decode_errors_total{"
    with httpx.Client(base_url=base, timeout=TIMEOUT) as client:
        before = client.get("/metrics").text
        client.post("/v1/predict", content=b"GIF89a junk", headers={"Content-Type": "image/gif"})
        client.post("/v1/predict", content=_jpeg(0), headers={"Content-Type": "image/jpeg"})
        text = client.get("/metrics").text
    assert value(text, ok) == value(before, ok) + 1 and value(text, bad) == value(before, bad) + 1
    batches = "inceptionv3_batch_size_count"
    assert value(text, batches) == value(before, batches) + 1 and "inceptionv3_queue_wait_seconds_bucket" in text
    assert 'inceptionv3_model_info{backend="eager"' in text and "inceptionv3_queue_depth" in text


def test_sigterm_lets_requests_in_flight_finish(trained_like_checkpoint, tmp_path):
    """A real `inceptionv3 serve` process: 6 requests in flight when SIGTERM arrives all get their answer, then
    the app shuts down (the model thread drains) and the process exits by itself."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    log = open(tmp_path / "serve.log", "w")
    process = subprocess.Popen([sys.executable, "-m", "inceptionv3", "serve", "--weights", str(trained_like_checkpoint),
                                "--backend", "eager", "--device", "cpu", "--port", str(port), "--max-batch", "2"],
                               stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        wait_ready(base)
        photo = _jpeg(7)
        codes: list[int] = []

        def call() -> None:
            codes.append(httpx.post(f"{base}/v1/predict", content=photo, headers={"Content-Type": "image/jpeg"},
                                    timeout=TIMEOUT).status_code)

        threads = [threading.Thread(target=call) for _ in range(6)]
        for thread in threads:
            thread.start()
        time.sleep(0.3)  # the requests are in the server
        process.send_signal(signal.SIGTERM)
        for thread in threads:
            thread.join(TIMEOUT)
        assert codes == [200] * 6
        assert process.wait(timeout=60) == 0  # a drained SIGTERM is a clean stop (uvicorn alone re-raises it)
    finally:
        if process.poll() is None:
            process.kill()
        log.close()
    text = (tmp_path / "serve.log").read_text()
    assert "Waiting for application shutdown" in text and "Finished server process" in text, text
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{base}/healthz", timeout=2)


CHROMIUM = Path("/usr/bin/chromium")


def test_web_page_in_headless_chromium(server, tmp_path):
    """The page in Debian's chromium: a real photo dropped on it gives 5 sorted bars whose top label is
    /v1/predict's for the same file, and a heatmap that renders; picking the second model gives that model's answer;
    an oversize file shows the 413 message."""
    from playwright.sync_api import sync_playwright

    assert CHROMIUM.exists(), "install Debian's chromium (apt-get install chromium); .ci/run does it"
    base, _ = server
    photo = _jpeg(8)
    expected, rolled = (httpx.post(f"{base}/v1/predict{query}", content=photo, headers={"Content-Type": "image/jpeg"},
                                   timeout=TIMEOUT).json()["pred_class"] for query in ("", "?model=rolled"))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            outside = []
            page.on("request", lambda r: outside.append(r.url) if not r.url.startswith((base, "data:", "blob:"))
                    else None)
            page.goto(base, timeout=TIMEOUT * 1000)
            # Before any upload: no broken-image placeholder and no empty "Top 5" (a CSS rule used to override
            # the hidden attribute).
            assert not page.locator("#preview").is_visible() and not page.locator("#results").is_visible()
            # By keyboard: Tab reaches the drop zone first, and Enter there clicks the file input (what the browser
            # then shows is its own; headless chromium shows no chooser for it), whose file is then classified.
            page.keyboard.press("Tab")
            assert page.evaluate("() => document.activeElement.id") == "drop"
            page.evaluate("() => { window.fileClicks = 0; document.getElementById('file').addEventListener("
                          "'click', () => { window.fileClicks += 1; }); }")
            page.keyboard.press("Enter")
            assert page.evaluate("() => window.fileClicks") == 1
            page.set_input_files("#file", files=[{"name": "first.jpg", "mimeType": "image/jpeg", "buffer": _jpeg(3)}])
            page.wait_for_selector("#bars li:nth-child(5)", timeout=TIMEOUT * 1000)
            assert page.locator("#preview").is_visible() and page.locator("#results").is_visible()
            page.evaluate("() => { document.getElementById('bars').innerHTML = ''; }")  # wait for the next ones
            data = base64.b64encode(photo).decode()
            page.evaluate("""async (b64) => {
                const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
                const transfer = new DataTransfer();
                transfer.items.add(new File([bytes], "bird.jpg", {type: "image/jpeg"}));
                document.getElementById("drop").dispatchEvent(new DragEvent("drop", {dataTransfer: transfer,
                                                                                     bubbles: true}));
            }""", data)
            # selectors, not wait_for_function: the page's CSP forbids the eval that polling a JS predicate uses
            page.wait_for_selector("#bars li:nth-child(5)", timeout=TIMEOUT * 1000)
            assert page.locator("#bars li").count() == 5
            labels = page.eval_on_selector_all("#bars li", "items => items.map(i => i.dataset.label)")
            scores = page.eval_on_selector_all("#bars li", "items => items.map(i => Number(i.dataset.score))")
            assert labels[0] == expected and scores == sorted(scores, reverse=True)
            page.wait_for_selector("#heatmap:not([hidden])", timeout=TIMEOUT * 1000)
            deadline = time.monotonic() + TIMEOUT
            while page.eval_on_selector("#heatmap", "h => h.complete ? h.naturalWidth : 0") != 299:
                assert time.monotonic() < deadline, "the heatmap image did not render"
                time.sleep(0.1)
            box = page.locator("#heatmap").bounding_box()
            assert box["width"] > 50 and box["height"] > 50
            page.screenshot(path=str(tmp_path / "page.png"))
            print(f"screenshot: {tmp_path / 'page.png'}")
            # The second model, picked on the page, scores the photo on show again with its own answer.
            page.evaluate("() => { document.getElementById('bars').innerHTML = ''; }")
            page.select_option("#model", "rolled")
            page.wait_for_selector("#bars li:nth-child(5)", timeout=TIMEOUT * 1000)
            assert page.eval_on_selector("#bars li", "i => i.dataset.label") == rolled
            page.wait_for_selector("#card:has-text('\"name\": \"rolled\"')", state="attached",
                                   timeout=TIMEOUT * 1000)  # in the closed "model card" details
            page.set_input_files("#file", files=[{"name": "huge.jpg", "mimeType": "image/jpeg",
                                                  "buffer": b"\xff\xd8" + b"\0" * (3 * 1024 * 1024)}])
            page.wait_for_selector("#message:has-text('too large')", timeout=TIMEOUT * 1000)
            assert "2 MB" in page.text_content("#message")
            assert outside == []
        finally:
            browser.close()


@pytest.mark.ray
def test_ray_serve_spreads_requests_over_two_replicas(trained_like_checkpoint, classifier):
    """A local Ray cluster on 127.0.0.1 (usage statistics off), the app as a deployment with 2 replicas: every
    request gets its own correct answer, and both replicas (told apart by X-Served-By) answered some."""
    import ray  # the ray extra; the `ray` marker keeps this test out of `make test` (make test-ray runs it)
    from ray import serve

    from inceptionv3.serve.ray import run

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    config = ServeConfig(model="", weights=str(trained_like_checkpoint), backend="eager", device="cpu")
    run(config, replicas=2, host="127.0.0.1", port=port, cpus_per_replica=0.5, block=False)
    try:
        photos = [_jpeg(i) for i in range(4)]
        expected = [_expected(classifier, p, 1)[0][0] for p in photos]
        served_by, answers = Counter(), []
        with httpx.Client(base_url=base, timeout=TIMEOUT) as client:
            for i in range(24):
                r = client.post("/v1/predict", content=photos[i % 4], headers={"Content-Type": "image/jpeg"})
                assert r.status_code == 200, r.text
                answers.append(r.json()["pred_label"] == expected[i % 4])
                served_by[r.headers["x-served-by"]] += 1
        assert all(answers) and len(served_by) == 2 and min(served_by.values()) > 0, served_by
    finally:
        serve.shutdown()
        ray.shutdown()


def test_metric_labels_are_route_templates_so_a_path_scan_cannot_grow_them(server):
    """Each made-up path used to become a label value of its own (3,000 requests made /metrics 219 MB); now every
    request is labelled by its route's template, and paths no route has share one value."""
    base, _ = server
    with httpx.Client(base_url=base, timeout=TIMEOUT) as client:
        for i in range(40):
            assert client.get(f"/no/such/path/{i}").status_code == 404
        client.get("/v2/models/inceptionv3/ready")
        client.get("/v2/models/other-name/ready")
        text = client.get("/metrics").text
    endpoints = {line.split('endpoint="')[1].split('"')[0] for line in text.splitlines()
                 if line.startswith("inceptionv3_requests_total{")}
    assert "unmatched" in endpoints and "/v2/models/{model}/ready" in endpoints
    assert not any("no/such" in e or "other-name" in e for e in endpoints), endpoints


def test_api_key_scheme_is_case_insensitive(classifier):
    """RFC 7235: the auth scheme is case-insensitive ("bearer" and "BEARER" are "Bearer"); the key is not."""
    from starlette.testclient import TestClient

    with TestClient(create_app(ServeConfig(api_key="s3cret"), classifier)) as client:
        for scheme in ("Bearer", "bearer", "BEARER"):
            assert client.get("/v1/models", headers={"Authorization": f"{scheme} s3cret"}).status_code == 200
        assert client.get("/v1/models", headers={"Authorization": "bearer S3CRET"}).status_code == 401
        assert client.get("/v1/models", headers={"Authorization": "Basic s3cret"}).status_code == 401


def test_nan_weights_give_the_same_per_image_error_everywhere(trained_like_checkpoint, tmp_path, capsys):
    """The same photo through the CLI, Classifier, v1 (one image and several) and v2: each says the model's output
    is not finite, in the same words, and the JSON stays strict (no NaN scores); before, the server answered 500
    "internal error" with a traceback's text, having built its answer from NaN scores."""
    import json

    import torch
    from starlette.testclient import TestClient

    from inceptionv3.cli import main
    from inceptionv3.inference import NON_FINITE_OUTPUT

    saved = torch.load(trained_like_checkpoint, weights_only=True)
    saved["state_dict"]["backbone.fc.weight"][0].fill_(float("nan"))
    broken = tmp_path / "nan.pth"
    torch.save(saved, broken)
    photo = str(photo_paths()[0])
    data = Path(photo).read_bytes()

    rows = tmp_path / "rows.jsonl"
    assert main(["predict", photo, "--weights", str(broken), "--output", str(rows), "--backend", "eager"]) == 1
    assert json.loads(rows.read_text())["error"] == NON_FINITE_OUTPUT
    nan_classifier = Classifier(broken, backend="eager", device="cpu")
    assert next(nan_classifier.predict([photo])).error == NON_FINITE_OUTPUT

    with TestClient(create_app(ServeConfig(), nan_classifier)) as client:
        server_ready = client.get("/readyz")  # the warm-up is done once requests are served: wait for it
        while server_ready.status_code == 503 and "not finite" not in server_ready.text:
            time.sleep(0.05)
            server_ready = client.get("/readyz")
        assert server_ready.json()["error"] == f"not ready: {NON_FINITE_OUTPUT}"
        assert client.get("/v2/health/ready").status_code == 503
        one = client.post("/v1/predict", content=data, headers={"Content-Type": "image/jpeg"})
        assert one.status_code == 500 and one.json()["error"] == f"<body>: {NON_FINITE_OUTPUT}"
        many = client.post("/v1/predict", files=[("files", ("a.jpg", data)), ("files", ("b.jpg", data))])
        assert many.status_code == 200
        assert [r["error"] for r in many.json()["results"]] == [f"{n}: {NON_FINITE_OUTPUT}" for n in ("a.jpg", "b.jpg")]
        v2 = client.post("/v2/models/inceptionv3/infer", json={"inputs": [
            {"name": "image", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(data).decode()]}]})
        assert v2.status_code == 500 and v2.json()["error"] == f"image[0]: {NON_FINITE_OUTPUT}"


def test_malformed_parameters_are_422s_with_an_id_and_the_connection_lives_on(server):
    """Each of these gave a 500 with a traceback's text (or dropped the connection, so the client's next keep-alive
    request failed too). Now each is a 4xx naming the parameter, with its request id, on a connection that still
    answers the next request."""
    base, _ = server
    photo = base64.b64encode(_jpeg(0)).decode()
    v2_input = {"name": "image", "datatype": "BYTES", "shape": [1], "data": [photo]}
    with httpx.Client(base_url=base, timeout=TIMEOUT) as client:
        for top_k in (2.9, True, "1_0", "\u00b9", [5], None):
            answer = client.post("/v1/predict", json={"inputs": photo, "parameters": {"top_k": top_k}})
            if top_k is None:  # absent means the default
                assert answer.status_code == 200
                continue
            assert answer.status_code == 422 and "topk must be an integer" in answer.json()["error"], top_k
            assert answer.headers["x-request-id"]
        raw = [b'{"inputs": "%s", "parameters": {"top_k": Infinity}}' % photo.encode(),
               b"[" * 100_000 + b"]" * 100_000]
        for body in raw:
            answer = client.post("/v1/predict", content=body, headers={"Content-Type": "application/json"})
            assert answer.status_code in (400, 422) and "error" in answer.json()
        for target in ("\u00b9", 3.0, True):
            answer = client.post("/v1/explain", json={"inputs": photo, "parameters": {"target": target}})
            assert answer.status_code == 422 and "target" in answer.json()["error"], target
        for request in ({"inputs": [v2_input, v2_input]}, {"inputs": [{**v2_input, "parameters": [1]}]},
                        {"inputs": [v2_input], "outputs": {"name": "probabilities"}},
                        {"inputs": [v2_input], "outputs": [{"name": "probabilities", "parameters": "x"}]},
                        {"inputs": [v2_input], "outputs": [{"name": "probabilities",
                                                            "parameters": {"classification": 2.5}}]}):
            answer = client.post("/v2/models/inceptionv3/infer", json=request)
            assert 400 <= answer.status_code < 500 and "error" in answer.json(), request
        assert client.post("/v1/predict", json={"inputs": photo}).status_code == 200


def test_a_stalled_upload_is_cut_off_at_the_deadline(server, monkeypatch):
    """A client that declares 100 kB and sends 10 bytes used to hold its connection and buffers for ever (30 such
    uploads held half a gigabyte); the body must now arrive within --timeout-s, else 408."""
    import socket as socketlib

    base, state = server
    monkeypatch.setattr(state.config, "timeout_s", 1.0)
    port = int(base.rsplit(":", 1)[1])
    started = time.monotonic()
    with socketlib.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                     b"Content-Length: 100000\r\n\r\n" + b"\xff\xd8" * 5)
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 408") and time.monotonic() - started < 10


def test_every_server_setting_is_one_flag_with_the_configs_default(monkeypatch):
    """The flags are made from ServeConfig's fields, so a default lives in one place: `serve` with no flags is
    ServeConfig() exactly, and every field a user may set has its flag."""
    import dataclasses

    from inceptionv3.cli import build_parser
    from inceptionv3.options import config_from
    from inceptionv3.serve.config import ServeConfig

    monkeypatch.delenv("INCEPTIONV3_API_KEY", raising=False)
    args = build_parser().parse_args(["serve"])
    assert config_from(ServeConfig, args) == ServeConfig()
    flags = {action.dest for action in build_parser()._subparsers._group_actions[0].choices["serve"]._actions}
    assert {f.name for f in dataclasses.fields(ServeConfig)} - flags == {"ready_before_start"}
    assert config_from(ServeConfig, build_parser().parse_args(["serve", "--max-batch", "3"])).max_batch == 3


def test_photos_waiting_for_explanations_are_bounded_in_bytes(server, monkeypatch):
    """Each explanation holds its whole decoded photo until the model thread reaches it; past the byte budget the
    server answers 503 instead of queueing more, and the budget is given back as explanations finish."""
    from inceptionv3.serve import server as app_module

    base, state = server
    with httpx.Client(base_url=base, timeout=TIMEOUT) as client:
        monkeypatch.setattr(app_module, "MAX_EXPLAIN_QUEUE_BYTES", 1000)  # less than any photo
        refused = client.post("/v1/explain", content=_jpeg(1), headers={"Content-Type": "image/jpeg"})
        assert refused.status_code == 503 and "waiting to be explained" in refused.json()["error"]
        monkeypatch.undo()
        assert client.post("/v1/explain", content=_jpeg(1), headers={"Content-Type": "image/jpeg"}).status_code == 200
    deadline = time.monotonic() + 10
    while state.explain_bytes and time.monotonic() < deadline:
        time.sleep(0.05)
    assert state.explain_bytes == 0


def test_an_oversize_body_sent_whole_still_gets_its_413(server):
    """A client that writes its whole body before reading (urllib does) met a closed socket, "broken pipe",
    because the 413 came from the Content-Length alone. The server now reads and drops the body (up to a bound)
    before it answers, so the client reads the 413."""
    import socket as socketlib

    base, _ = server
    port = int(base.rsplit(":", 1)[1])
    body = b"\xff\xd8" + b"\0" * (3 * 1024 * 1024)  # over the fixture's 2 MB
    with socketlib.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body))
        time.sleep(0.5)  # the old server had answered and closed by now
        sock.sendall(body)
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(4096)
            assert chunk, "connection closed without an answer"
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 413")


def test_decoding_counts_against_the_backlog_and_the_deadline(server, monkeypatch):
    """Decoding happened before both bounds: slow decodes (a crafted progressive JPEG held one for 50 s) made an
    ordinary photo wait 105 s, and a flood of large PNGs was never shed. Now a full decode backlog answers 503 and
    a decode that outlasts --timeout-s answers 504; the backlog count comes back down when the thread finishes."""
    base, state = server
    with httpx.Client(base_url=base, timeout=TIMEOUT) as client:
        monkeypatch.setattr(state, "decoding", state.config.queue_size)
        busy = client.post("/v1/predict", content=_jpeg(0), headers={"Content-Type": "image/jpeg"})
        assert busy.status_code == 503 and "waiting to be decoded" in busy.json()["error"]
        monkeypatch.undo()
        monkeypatch.setattr(state.config, "timeout_s", 0.3)
        load = state.classifier.load_views
        monkeypatch.setattr(state.classifier, "load_views", lambda *a, **k: (time.sleep(1.0), load(*a, **k))[1])
        started = time.monotonic()
        late = client.post("/v1/predict", content=_jpeg(0), headers={"Content-Type": "image/jpeg"})
        assert late.status_code == 504 and "not decoded within" in late.json()["error"]
        assert time.monotonic() - started < 1.0  # answered at the deadline, not when the decode ended
    deadline = time.monotonic() + 10
    while state.decoding and time.monotonic() < deadline:
        time.sleep(0.05)
    assert state.decoding == 0


def test_access_log_is_one_json_line_per_request_and_the_repository_lists_the_model(classifier, caplog):
    """--access-log: time, request id, method, route template, status, milliseconds, client; never the key."""
    import json
    import logging

    from fastapi.testclient import TestClient

    app = create_app(ServeConfig(access_log=True, api_key="secret-key", name="birds", max_batch=1), classifier)
    with TestClient(app) as client, caplog.at_level(logging.INFO, logger="inceptionv3.access"):
        assert app.state.server.engine.ready.wait(60)
        client.get("/readyz")  # open path: no key needed
        refused = client.post("/v2/repository/index")
        index = client.post("/v2/repository/index", headers={"Authorization": "Bearer secret-key",
                                                              "X-Request-ID": "req-42"})
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "inceptionv3.access"]
    assert [(line["route"], line["status"]) for line in lines] == [
        ("/readyz", 200), ("/v2/repository/index", 401), ("/v2/repository/index", 200)]
    assert lines[2]["request_id"] == "req-42" and lines[2]["method"] == "POST" and lines[2]["ms"] >= 0
    assert lines[2]["model"] == "birds"
    assert "secret-key" not in caplog.text and refused.status_code == 401
    assert index.json() == [{"name": "birds", "version": "1", "state": "READY"}]


def test_each_api_key_gets_its_own_concurrency_limit(classifier):
    """--api-key a,b --max-concurrency 1: while a's upload is still arriving, a's next request gets 429 with
    Retry-After, b is answered, and a is answered again once its first request is done."""
    import asyncio

    app = create_app(ServeConfig(api_key="key-a, key-b", max_concurrency=1), classifier)

    async def scenario():
        arrived = asyncio.Event()
        release = asyncio.Event()

        async def slow_body():
            yield b"\xff\xd8"
            arrived.set()
            await release.wait()
            yield b"not really a jpeg"

        def auth(key: str) -> dict:
            return {"Authorization": f"Bearer {key}"}

        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            first = asyncio.create_task(client.post("/v1/predict", content=slow_body(),
                                                    headers={**auth("key-a"), "Content-Type": "image/jpeg"}))
            await asyncio.wait_for(arrived.wait(), 10)
            busy = await client.get("/v1/models", headers=auth("key-a"))
            other = await client.get("/v1/models", headers=auth("key-b"))
            wrong = await client.get("/v1/models", headers=auth("key-c"))
            release.set()
            await first
            again = await client.get("/v1/models", headers=auth("key-a"))
        return busy, other, wrong, again

    busy, other, wrong, again = asyncio.run(scenario())
    assert busy.status_code == 429 and busy.headers["Retry-After"] == "1" and "--max-concurrency 1" in busy.text
    assert other.status_code == 200 and again.status_code == 200 and wrong.status_code == 401


def test_a_bug_non_finite_features_and_a_failed_warm_up_are_answered_not_hung(classifier, monkeypatch):
    """An unexpected exception in a route is a 500 that still carries its request id; an image whose features are
    not finite gets the CLI's words; a warm-up that fails makes a ready_before_start app fail at once (it waited
    600 s for a readiness that could never come)."""
    import time

    from fastapi.testclient import TestClient

    from inceptionv3.inference import NON_FINITE_OUTPUT

    app = create_app(ServeConfig(max_batch=1), classifier)  # a warm-up of one image
    with TestClient(app, raise_server_exceptions=False) as client:
        assert app.state.server.engine.ready.wait(60)
        monkeypatch.setattr(app.state.server, "card", lambda: 1 / 0)
        broken = client.get("/v1/models", headers={"X-Request-ID": "bug-1"})
        monkeypatch.setattr(classifier, "embed_views", lambda views, taps: [{"2048": np.full(2048, np.nan)}])
        features = client.post("/v1/features", content=_jpeg(0), headers={"Content-Type": "image/jpeg"})
    assert broken.status_code == 500 and broken.headers["X-Request-ID"] == "bug-1"
    assert broken.json() == {"error": "internal error (ZeroDivisionError); the server's log has the details"}
    assert features.status_code == 500 and features.json()["error"] == f"<body>: {NON_FINITE_OUTPUT}"

    def fail(batch):
        raise RuntimeError("no memory for the warm-up")

    monkeypatch.setattr(classifier, "scores", fail)
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="the model failed to start: no memory for the warm-up"):
        with TestClient(create_app(ServeConfig(ready_before_start=True, max_batch=1), classifier)):
            pass
    assert time.monotonic() - started < 30
    with pytest.raises(InputError, match="--max-concurrency must be at least 1"):
        create_app(ServeConfig(api_key="k", max_concurrency=0), classifier)


def test_a_method_that_cannot_run_at_the_default_layer_is_left_out_not_made_infinite():
    """The model card is strict JSON: a method that cannot run on a model without Mixed_7c used to cost
    float('inf') passes, which no JSON answer can carry."""
    import torch

    from inceptionv3.serve.server import _passes

    tiny = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                               torch.nn.Linear(4, 10))
    assert _passes(tiny, "scorecam") is None and _passes(tiny, "gradcam") == 1


def test_a_batch_waits_for_images_still_decoding_but_never_for_nothing():
    """The model thread's batching: a lone image runs at once (nothing is decoding: no wait, whatever
    FILL_WAIT_S); while other images are still being decoded it waits for them, up to FILL_WAIT_S, so that the
    batch fills instead of running one image at a time under load."""
    from types import SimpleNamespace

    from inceptionv3.serve.engine import FILL_WAIT_S, Engine, Job

    batches = []
    fake = SimpleNamespace(preprocess=SimpleNamespace(crop=8), scores=lambda x: torch.zeros(len(x), 2),
                           predict_views=lambda views, batch_size: batches.append(len(views)) or [None] * len(views))
    decoding = {"n": 0}
    engine = Engine(fake, max_batch=4, incoming=lambda: decoding["n"])
    engine.start()
    try:
        assert engine.ready.wait(10)
        started = time.monotonic()
        engine.submit(Job("predict", np.zeros(1))).result(10)
        assert batches == [1] and time.monotonic() - started < FILL_WAIT_S
        decoding["n"] = 1  # a second image is being decoded while the first is queued
        first = engine.submit(Job("predict", np.zeros(1)))
        time.sleep(FILL_WAIT_S / 4)
        decoding["n"] = 0
        second = engine.submit(Job("predict", np.zeros(1)))
        first.result(10), second.result(10)
        assert batches == [1, 2]
        decoding["n"] = 1  # decoding that never ends: the wait is bounded
        started = time.monotonic()
        engine.submit(Job("predict", np.zeros(1))).result(10)
        assert batches == [1, 2, 1] and FILL_WAIT_S <= time.monotonic() - started < FILL_WAIT_S + 1.0
    finally:
        decoding["n"] = 0
        engine.stop()
