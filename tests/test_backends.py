"""Backends: OpenVINO and ONNX Runtime against eager on real pixels, the export cache, auto choice, benchmark."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import photo_paths

import inceptionv3.backends as backends
from inceptionv3 import Classifier, get_model
from inceptionv3.decode import load_image
from inceptionv3.errors import InputError
from inceptionv3.export import sample_batch
from inceptionv3.files import cache_dir


@pytest.fixture(scope="module")
def shared_home(tmp_path_factory):
    """One cache for the tests that export the unchanged trained-like model to OpenVINO fp32: the export is keyed
    on the tensors, so the second and third find the first's (each export costs about 10 s)."""
    return tmp_path_factory.mktemp("shared-home")


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_fp32_backends_match_eager_on_real_pixels(model_and_batch, backend, shared_home, monkeypatch):
    monkeypatch.setenv("INCEPTIONV3_HOME", str(shared_home))
    model, batch = model_and_batch
    tolerance = 1e-4
    run = backends.make_runner(model, backend, "fp32", torch.device("cpu"), 299)
    with torch.no_grad():
        expected = model(batch)
    got = run(batch[:3]), run(batch)  # two batch sizes through the same runner
    span = float(expected.abs().max())
    for out in got:
        assert float((out - expected[: len(out)]).abs().max()) <= tolerance * span
    assert torch.equal(got[1].argmax(1), expected.argmax(1))


def test_openvino_bf16_really_computes_in_bf16(model_and_batch):
    model, batch = model_and_batch
    run = backends.make_runner(model, "openvino", "bf16", torch.device("cpu"), 299)
    with torch.no_grad():
        expected = model(batch)
    error = float((run(batch) - expected).abs().max()) / float(expected.abs().max())
    # bf16 keeps 8 bits of mantissa: visibly different from fp32, still the same logits to within a fraction.
    # (This test model's head is scaled x20, which amplifies the error; int8/bf16 agreement on a real trained
    # model is measured in benchmarks, not here.)
    assert 1e-3 < error < 0.25, error


def test_exports_are_cached_and_a_corrupted_entry_is_rebuilt(model_and_batch, monkeypatch, caplog):
    model, batch = model_and_batch
    calls = []
    real_export = backends.cache.export_model
    monkeypatch.setattr(backends.cache, "export_model", lambda *a, **k: calls.append(a[1]) or real_export(*a, **k))
    backends.make_runner(model, "onnxruntime", "fp32", torch.device("cpu"), 299)
    run = backends.make_runner(model, "onnxruntime", "fp32", torch.device("cpu"), 299)
    assert calls == ["onnx"]  # the second runner reused the cached file
    cached = next((cache_dir() / "compiled").glob("*-onnx-fp32-3x299x299/model.onnx"))
    cached.write_bytes(cached.read_bytes()[:1000])  # a truncated file, as a crash mid-write would leave
    with caplog.at_level(logging.WARNING, logger="inceptionv3"):
        rebuilt = backends.make_runner(model, "onnxruntime", "fp32", torch.device("cpu"), 299)
    assert calls == ["onnx", "onnx"] and "does not match its manifest; rebuilding" in caplog.text
    torch.testing.assert_close(rebuilt(batch[:2]), run(batch[:2]))


@pytest.mark.slow
def test_compile_runs_every_batch_size_through_one_compilation(trained_like_checkpoint, caplog):
    import torch._dynamo

    model = get_model(trained_like_checkpoint)
    batch = sample_batch(model.weights_info.preprocess.with_crop(96))
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    run = backends.make_runner(model, "compile", "fp32", torch.device("cpu"), 96)
    with torch.no_grad():
        expected = model(batch)
    span = float(expected.abs().max())
    with caplog.at_level(logging.WARNING, logger="inceptionv3"):
        for size in (4, 10, 1, 7):  # the first call fixes the batch; the rest are split and padded to it
            got = run(batch[:size])
            assert got.shape == (size, model.num_classes)
            assert float((got - expected[:size]).abs().max()) <= 1e-4 * span
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1
    said = [r.getMessage() for r in caplog.records]  # the 20-30 s compilation says so, once
    assert said.count("compiling with torch.compile (about 25 s, once per process)") == 1, said


def test_concurrent_runners_build_the_export_once(model_and_batch, monkeypatch):
    """Two torchrun ranks start at once: one builds, the other waits and reuses it (the lock is per open file, so
    threads show it as well as processes)."""
    import threading
    import time

    model, batch = model_and_batch
    builds = []
    real_export = backends.cache.export_model

    def slow_export(*args, **kwargs):
        builds.append(args[1])
        time.sleep(1.0)  # widen the window in which the other thread arrives
        return real_export(*args, **kwargs)

    monkeypatch.setattr(backends.cache, "export_model", slow_export)
    runners = [None, None]

    def make(i):
        runners[i] = backends.make_runner(model, "onnxruntime", "fp32", torch.device("cpu"), 299)

    threads = [threading.Thread(target=make, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert builds == ["onnx"]
    torch.testing.assert_close(runners[0](batch[:2]), runners[1](batch[:2]))


def test_classifier_with_a_backend_predicts_like_eager(trained_like_checkpoint, shared_home, monkeypatch):
    monkeypatch.setenv("INCEPTIONV3_HOME", str(shared_home))
    photos = [str(p) for p in photo_paths()[:6]]
    eager = [p.label for p in Classifier(trained_like_checkpoint).predict(photos)]
    fast = [p.label for p in Classifier(trained_like_checkpoint, backend="openvino").predict(photos)]
    assert fast == eager


def test_auto_prefers_openvino_on_cpu_and_falls_back(monkeypatch):
    cpu, choose = torch.device("cpu"), backends.choose_backend
    assert choose(cpu) == "openvino" and choose(cpu, "bf16") == "openvino"
    few = backends.FAST_PATH_WORTH_IT_IMAGES
    assert choose(cpu, images=few - 1) == "eager" and choose(cpu, images=few) == "openvino"
    installed = {"onnxruntime"}
    monkeypatch.setattr(backends, "available", lambda name: name in installed)
    assert choose(cpu) == "onnxruntime"
    assert choose(cpu, "bf16") == "eager"  # ONNX Runtime runs fp32 only
    installed.clear()
    long_run = backends.COMPILE_WORTH_IT_IMAGES
    assert choose(cpu) == "eager" and choose(cpu, images=long_run - 1) == "eager"
    assert choose(cpu, images=long_run) == "compile" and choose(cpu, "bf16", images=50_000) == "compile"
    assert choose(torch.device("cuda"), images=50_000) == "eager"
    assert choose(cpu, "int8") == "openvino"
    with pytest.raises(InputError, match="backend must be one of"):
        backends.make_runner(torch.nn.Identity(), "tensorrt", "fp32", torch.device("cpu"), 299)
    with pytest.raises(InputError, match="onnxruntime runs fp32 here; bf16 runs on eager, compile, openvino$"):
        backends.make_runner(torch.nn.Identity(), "onnxruntime", "bf16", torch.device("cpu"), 299)
    with pytest.raises(InputError, match="eager runs fp32, bf16 here; int8 runs on openvino, litert "):
        backends.make_runner(torch.nn.Identity(), "eager", "int8", torch.device("cpu"), 299)


def test_int8_is_calibrated_on_the_given_pixels_cached_by_them_and_refused_without_data(model_and_batch,
                                                                                       monkeypatch, shared_home):
    """The backend's part of int8: refusals, the calibration images handed to the quantiser as given, and the
    quantised model cached under their hash (another calibration builds another). The quantiser is the one
    `export --precision int8` runs, which tests/test_export.py checks really quantises (FakeQuantize ops, top-1
    agreement on unseen photos); here it is a copy of the fp32 model, which saves NNCF's 15 s."""
    import shutil

    from inceptionv3.backends import cache

    monkeypatch.setenv("INCEPTIONV3_HOME", str(shared_home))
    model, batch = model_and_batch
    cpu = torch.device("cpu")
    with pytest.raises(InputError, match="int8 needs calibration images"):
        backends.make_runner(model, "openvino", "int8", cpu, 299)
    with pytest.raises(InputError, match="onnxruntime runs fp32 here; int8 runs on openvino, litert"):
        backends.make_runner(model, "onnxruntime", "int8", cpu, 299, calibration=batch)
    calibration = sample_batch(model.weights_info.preprocess, photo_paths()[:4])  # 40 real crops
    seen = []

    def quantize(fp32_xml, pixels, out):
        seen.append(pixels)
        shutil.copyfile(fp32_xml, out)
        shutil.copyfile(Path(fp32_xml).with_suffix(".bin"), Path(out).with_suffix(".bin"))
        return Path(out)

    monkeypatch.setattr(cache, "quantize_openvino", quantize)
    run = backends.make_runner(model, "openvino", "int8", cpu, 299, calibration=calibration)
    backends.make_runner(model, "openvino", "int8", cpu, 299, calibration=calibration)
    assert len(seen) == 1 and torch.equal(seen[0], calibration)  # cached with its calibration data's hash
    backends.make_runner(model, "openvino", "int8", cpu, 299, calibration=calibration[:10])
    assert len(seen) == 2  # other pixels, another model
    with torch.no_grad():
        expected = model(batch)
    assert float((run(batch) - expected).abs().max()) <= 1e-4 * float(expected.abs().max())


def test_predict_int8_from_the_cli(trained_like_checkpoint, tmp_path, monkeypatch, capsys):
    """The CLI's part of int8: refused without --calibration, and with it the folder's images reach the backend
    as the preset's crops. The quantisation itself is the test above; here the runner is eager, to save a minute."""
    from inceptionv3.cli import main

    monkeypatch.setenv("INCEPTIONV3_HOME", str(tmp_path))
    seen = []
    real = backends.make_runner

    def recording(model, backend, precision, device, size, calibration=None):
        if calibration is None:
            return real(model, backend, precision, device, size)  # raises: int8 needs calibration images
        seen.append((backend, precision, calibration))
        return real(model, "eager", "fp32", device, size)

    monkeypatch.setattr(backends, "make_runner", recording)
    photos = [str(p) for p in photo_paths()]
    common = ["predict", photos[0], "--weights", str(trained_like_checkpoint), "--backend", "openvino",
              "--precision", "int8", "--topk", "1"]
    assert main(common) == 2
    assert "int8 needs calibration images" in capsys.readouterr().err
    calibration = tmp_path / "calibration"
    calibration.mkdir()
    for p in photos[1:9]:
        (calibration / p.rsplit("/", 1)[-1]).write_bytes(open(p, "rb").read())
    assert main([*common, "--calibration", str(calibration)]) == 0
    assert capsys.readouterr().out.startswith(photos[0])
    (backend, precision, batch), = seen
    preset = get_model(trained_like_checkpoint).weights_info.preprocess
    expected = preset.normalize(np.stack([preset.crop_image(load_image(f, decoder=preset.decoder))
                                          for f in sorted(calibration.iterdir())]))
    assert (backend, precision) == ("openvino", "int8") and torch.equal(batch, expected)


def test_cli_default_is_auto_sized_by_the_run(trained_like_checkpoint, shared_home, monkeypatch, capsys):
    """One photo runs eager (an OpenVINO start-up costs more than it saves); a folder runs OpenVINO, with the
    same answers as eager."""
    from inceptionv3.cli import main

    monkeypatch.setenv("INCEPTIONV3_HOME", str(shared_home))
    photos = photo_paths()
    common = ["--weights", str(trained_like_checkpoint), "--format", "csv", "--quiet"]
    assert main(["predict", str(photos[0]), *common]) == 0
    assert "backend: eager fp32" in capsys.readouterr().err
    folder = str(photos[0].parent)
    assert main(["predict", folder, *common]) == 0
    fast = capsys.readouterr()
    assert "backend: openvino fp32" in fast.err and len(photos) >= backends.FAST_PATH_WORTH_IT_IMAGES
    assert main(["predict", folder, *common, "--backend", "eager"]) == 0
    exact = capsys.readouterr().out.splitlines()
    labels = [[row.split(",")[0], row.split(",")[1]] for row in fast.out.splitlines()]
    assert labels == [[row.split(",")[0], row.split(",")[1]] for row in exact] and len(labels) == len(photos) + 1


# The export cache's key (backends.cache.cached_export: the weights' hash, the format, the shape) is one function for
# every exported format, so the two tests of what it must notice run on ONNX Runtime, the cheaper export to build;
# OpenVINO's exports go through the same cache in the real-pixels, bf16 and CLI tests above.
@pytest.mark.parametrize("backend", ["onnxruntime"])
def test_scores_follow_an_edit_made_after_loading(model_and_batch, backend):
    model, batch = model_and_batch
    before = Classifier(model, backend=backend).scores(batch[:2])
    model.fc.weight.data.zero_()
    model.fc.bias.data.zero_()  # every logit 0: a uniform softmax, whatever the image
    after = Classifier(model, backend=backend).scores(batch[:2])
    assert float(before.max()) > 0.01
    assert torch.allclose(after, torch.full_like(after, 1 / 1000), atol=1e-6)


@pytest.mark.parametrize("backend", ["onnxruntime"])
def test_a_reheaded_model_gets_its_own_export(model_and_batch, backend):
    model, batch = model_and_batch
    Classifier(model, backend=backend).scores(batch[:1])  # the 1000-class export is now cached
    model.reset_classifier(10)
    with torch.no_grad():
        expected = torch.softmax(model.eval()(batch[:2]), dim=1)
    got = Classifier(model, backend=backend, class_names=[str(i) for i in range(10)]).scores(batch[:2])
    assert got.shape == (2, 10) and float((got - expected).abs().max()) < 1e-4


def test_the_pool_convention_is_part_of_the_export_key(model_and_batch):
    model, _ = model_and_batch
    tf_pools = type(model)(count_include_pad=False)
    tf_pools.load_state_dict(model.state_dict())
    assert backends.weights_key(tf_pools) != backends.weights_key(model)


def test_an_unwritable_cache_falls_back_to_eager_with_a_warning(model_and_batch, tmp_path, monkeypatch, caplog):
    model, batch = model_and_batch
    blocker = tmp_path / "a_file"
    blocker.write_text("the cache folder would have to be inside a regular file")
    monkeypatch.setenv("INCEPTIONV3_HOME", str(blocker / "home"))
    with caplog.at_level(logging.WARNING, logger="inceptionv3"):
        classifier = Classifier(model, backend="openvino")
        scores = classifier.scores(batch[:2])
    assert classifier.backend == "eager" and "running eager fp32 instead" in caplog.text
    with torch.no_grad():
        assert torch.allclose(scores, torch.softmax(model(batch[:2]), dim=1), atol=1e-6)


def test_a_full_cache_disk_falls_back_to_eager_too(model_and_batch, tmp_path, monkeypatch, caplog):
    """OpenVINO reports a full disk as its own RuntimeError, which escaped as a traceback with no rows; with little
    space left, a failed export is taken for a full disk and the run goes on eager, as for a read-only cache."""
    import shutil
    from collections import namedtuple

    from inceptionv3 import backends

    model, batch = model_and_batch
    monkeypatch.setenv("INCEPTIONV3_HOME", str(tmp_path))

    def full_disk(*args, **kwargs):
        raise RuntimeError("Exception from src/core/src/pass/serialize.cpp: Can't open bin file for writing")

    monkeypatch.setattr(backends.cache, "export_model", full_disk)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**12, 10**12 - 10**6, 10**6))
    with caplog.at_level(logging.WARNING, logger="inceptionv3"):
        classifier = Classifier(model, backend="openvino")
    assert classifier.backend == "eager" and "1 MB free for the openvino export" in caplog.text
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**12, 0, 10**12))  # space left: a real bug
    with pytest.raises(RuntimeError, match="serialize.cpp"):
        Classifier(model, backend="openvino")


def test_a_slow_first_build_says_so_once(tmp_path, monkeypatch, caplog):
    """The OpenVINO export takes ~25 s on 2 cores: one line at WARNING (the level the CLI shows) says it is being
    built once; the next runner reuses it silently. (The export itself is faked: the message is under test.)"""
    from inceptionv3 import InceptionV3

    monkeypatch.setenv("INCEPTIONV3_HOME", str(tmp_path))

    exports = []

    def fake_export(model, fmt, target, **kwargs):
        exports.append(fmt)
        target = Path(target)
        target.write_text("<net/>")
        target.with_suffix(".bin").write_bytes(b"weights")
        return target

    monkeypatch.setattr(backends.cache, "export_model", fake_export)
    monkeypatch.setattr(backends.openvino, "load_runner", lambda path, fmt, precision=None: lambda x: x)
    model = InceptionV3(num_classes=10, init_weights=False).eval()
    with caplog.at_level(logging.WARNING, logger="inceptionv3"):
        for _ in range(2):
            backends.make_runner(model, "openvino", "fp32", torch.device("cpu"), 299)
    said = [r for r in caplog.records if r.getMessage().startswith(
        "building the openvino export once (about 25 s); later runs reuse it from ")]
    assert len(said) == 1 and said[0].levelno == logging.WARNING, caplog.text
    assert exports == ["openvino"]  # built once; the second runner reused it
