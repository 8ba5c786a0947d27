"""LiteRT (TFLite): `export --format litert` in fp32 and dynamic-range int8, and the `litert` backend, each checked
with LiteRT's own interpreter (the `litert` extra; `make test-tf` installs it and runs these)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from conftest import photo_paths

from inceptionv3 import Classifier, get_model
from inceptionv3.backends import make_runner
from inceptionv3.cli import main

pytestmark = pytest.mark.tf


def _interpreter(path):
    """LiteRT's interpreter, driven directly (not through the package's runner)."""
    from ai_edge_litert.interpreter import Interpreter

    return Interpreter(model_path=str(path), num_threads=2)


def _invoke(interpreter, batch: torch.Tensor) -> np.ndarray:
    source = interpreter.get_input_details()[0]["index"]
    interpreter.resize_tensor_input(source, list(batch.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(source, batch.numpy())
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


@pytest.fixture(scope="module")
def photo_crops(trained_like_checkpoint):
    """The centre crops of all 21 real photos, prepared by the checkpoint's preset."""
    model = get_model(trained_like_checkpoint).eval()
    return model, model.weights_info.preprocess.batch([str(p) for p in photo_paths()])


def test_fp32_litert_export_matches_eager_in_litert_itself(trained_like_checkpoint, photo_crops, tmp_path, capsys):
    out = tmp_path / "model.tflite"
    assert main(["export", str(trained_like_checkpoint), "--format", "litert", "--dynamic-batch",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "litert fp32" in printed and "batch sizes [1, 7]" in printed and ": ok" in printed
    assert not printed.startswith("(")  # the converter's progress lines go to stderr, not among the results
    model, batch = photo_crops
    with torch.no_grad():
        expected = model(batch).numpy()
    got = _invoke(_interpreter(out), batch[:5])  # a batch size the export's own check never ran
    span = float(np.abs(expected).max())
    print(f"litert fp32: max abs {np.abs(got - expected[:5]).max():.3g} on logits up to {span:.3g}")
    assert span > 1.0 and np.abs(got - expected[:5]).max() <= 1e-4 * span


def test_int8_litert_export_has_int8_weights_and_keeps_the_answers(trained_like_checkpoint, photo_crops, tmp_path,
                                                                   capsys):
    out = tmp_path / "model-int8.tflite"
    assert main(["export", str(trained_like_checkpoint), "--format", "litert", "--precision", "int8",
                 "--dynamic-batch", "--out", str(out), "--min-agreement", "0.5"]) == 0  # no calibration asked for
    assert "litert int8" in capsys.readouterr().out and not (tmp_path / "model-int8.fp32.tflite").exists()
    interpreter = _interpreter(out)
    int8 = [len(t["shape"]) for t in interpreter.get_tensor_details() if t["dtype"] == np.int8]
    assert int8.count(4) == 94 and int8.count(2) == 1  # every convolution kernel and the classifier's matrix
    assert out.stat().st_size < 0.3 * 4 * 23.8e6  # about a quarter of the fp32 file
    model, batch = photo_crops
    with torch.no_grad():
        expected = model(batch).argmax(1).numpy()
    got = np.concatenate([_invoke(interpreter, part) for part in batch.split(7)]).argmax(1)
    agreement = float((got == expected).mean())
    # This test model (random convolutions, head x20) is harder on int8 than trained weights: measured 0.81 here.
    print(f"litert int8: top-1 agreement with eager fp32 on {len(batch)} real photos: {agreement:.3f}")
    assert agreement >= 0.5


def test_litert_backend_classifies_like_eager_and_reuses_its_export(trained_like_checkpoint, photo_crops, tmp_path,
                                                                     monkeypatch):
    monkeypatch.setenv("INCEPTIONV3_HOME", str(tmp_path / "cache"))
    model, batch = photo_crops
    run = make_runner(model, "litert", "fp32", torch.device("cpu"), 299)
    with torch.no_grad():
        expected = model(batch[:3])
    assert float((run(batch[:3]) - expected).abs().max()) <= 1e-4 * float(expected.abs().max())
    exports = list((tmp_path / "cache" / "compiled").glob("*-litert-fp32-*/model.tflite"))
    assert len(exports) == 1
    stamp = exports[0].stat().st_mtime_ns
    classifier = Classifier(model, backend="litert", batch_size=4)
    eager = Classifier(model, backend="eager", batch_size=4)
    photos = [str(p) for p in photo_paths()[:6]]
    ours, reference = list(classifier.predict(photos)), list(eager.predict(photos))
    assert all(r.ok for r in ours) and [r.label for r in ours] == [r.label for r in reference]
    assert exports[0].stat().st_mtime_ns == stamp  # the second runner loaded the cached file


def test_litert_refuses_bf16_and_an_int8_request_elsewhere_names_both_formats(trained_like_checkpoint, tmp_path,
                                                                               capsys):
    assert main(["export", str(trained_like_checkpoint), "--format", "litert", "--precision", "bf16",
                 "--out", str(tmp_path / "m.tflite")]) == 2
    assert "--format openvino" in capsys.readouterr().err
    assert main(["export", str(trained_like_checkpoint), "--format", "onnx", "--precision", "int8",
                 "--out", str(tmp_path / "m.onnx")]) == 2
    assert "--format openvino or --format litert" in capsys.readouterr().err


def test_files_litert_cannot_load_are_export_errors_naming_them(tmp_path):
    from inceptionv3 import ExportError
    from inceptionv3.export import load_runner

    garbage, empty = tmp_path / "garbage.tflite", tmp_path / "empty.tflite"
    garbage.write_bytes(np.random.default_rng(0).bytes(5000))
    empty.write_bytes(b"")
    for path, reason in ((garbage, "not a valid Flatbuffer"), (empty, "size 0"),
                         (tmp_path / "missing.tflite", "no such LiteRT file"), (tmp_path, "is a directory"),
                         ("/dev/zero", "is a character device, not a regular file")):
        with pytest.raises(ExportError, match=f"^{re.escape(str(path))}: .*{reason}"):
            load_runner(path, "litert")
