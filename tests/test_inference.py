"""inference_model and Classifier: mmpretrain's result contract, every input kind, order, failures, caching."""

from __future__ import annotations

import dataclasses
import io
import itertools
import logging

import cv2
import numpy as np
import pytest
import torch
from conftest import SHARED_DATA, independent_scores, photo_paths
from PIL import Image

import inceptionv3.inference as inference
from inceptionv3 import Classifier, ImageLoadError, InceptionV3, PredictionError, get_model, inference_model
from inceptionv3.errors import InputError
from inceptionv3.preprocess import PRESETS

CLASSES = [line.split("\t")[2] for line in (SHARED_DATA / "imagenet" / "classes.tsv").read_text().splitlines()[1:]]


@pytest.fixture(scope="module")
def expected(trained_like_checkpoint):
    return independent_scores(trained_like_checkpoint, photo_paths()[:8])


def test_result_dict_has_mmpretrains_keys_and_types(trained_like_checkpoint, expected):
    path = next(iter(expected))
    result = inference_model(trained_like_checkpoint, str(path))
    assert set(result) == {"pred_scores", "pred_label", "pred_score", "pred_class"}
    scores = result["pred_scores"]
    assert isinstance(scores, np.ndarray) and scores.dtype == np.float32 and scores.shape == (1000,)
    assert abs(float(scores.sum()) - 1.0) < 1e-5
    assert type(result["pred_label"]) is int and type(result["pred_score"]) is float
    assert type(result["pred_class"]) is str
    assert result["pred_label"] == int(expected[path].argmax())
    assert result["pred_score"] == float(scores[result["pred_label"]])
    assert result["pred_class"] == CLASSES[result["pred_label"]]
    np.testing.assert_allclose(scores, expected[path], atol=1e-5)


def test_a_list_gives_a_list_in_order_matching_independent_scores(trained_like_checkpoint, expected):
    paths = list(expected)
    results = inference_model(trained_like_checkpoint, [str(p) for p in paths], batch_size=3)
    assert len({r["pred_label"] for r in results}) > 1, "the test model must tell the photos apart"
    for path, result in zip(paths, results, strict=True):
        assert result["pred_label"] == int(expected[path].argmax())
        np.testing.assert_allclose(result["pred_scores"], expected[path], atol=1e-5)
    reversed_results = inference_model(trained_like_checkpoint, [str(p) for p in reversed(paths)], batch_size=5)
    assert [r["pred_label"] for r in reversed_results] == [r["pred_label"] for r in reversed(results)]


def test_every_input_kind_gives_the_same_answer(trained_like_checkpoint):
    path = SHARED_DATA / "images" / "coral_cat.bmp"  # lossless, so every decoder sees the same pixels
    reference = inference_model(trained_like_checkpoint, str(path))
    bgr = cv2.imread(str(path))
    kinds = {
        "pathlib.Path": path,
        "bytes": path.read_bytes(),
        "BGR array": bgr,
        "PIL image": Image.open(path),
        "PNG bytes": cv2.imencode(".png", bgr)[1].tobytes(),
    }
    for kind, item in kinds.items():
        result = inference_model(trained_like_checkpoint, item)
        assert result["pred_label"] == reference["pred_label"], kind
        np.testing.assert_array_equal(result["pred_scores"], reference["pred_scores"], err_msg=kind)
    # An RGB array handed over as if it were BGR is read as BGR, as mmpretrain reads it: a different answer.
    swapped = inference_model(trained_like_checkpoint, np.ascontiguousarray(bgr[:, :, ::-1]))
    assert not np.array_equal(swapped["pred_scores"], reference["pred_scores"])


def test_a_bad_input_is_named_and_the_others_are_kept(trained_like_checkpoint, tmp_path):
    good = [str(p) for p in photo_paths()[:3]]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(PredictionError) as caught:
        inference_model(trained_like_checkpoint, [good[0], str(broken), good[1], b"", good[2]])
    error = caught.value
    assert isinstance(error, ImageLoadError) and str(broken) in str(error) and "<bytes #3>" in str(error)
    assert [r is None for r in error.results] == [False, True, False, True, False]
    alone = inference_model(trained_like_checkpoint, good)
    for kept, single in zip([error.results[i] for i in (0, 2, 4)], alone, strict=True):
        np.testing.assert_allclose(kept["pred_scores"], single["pred_scores"], atol=1e-6)
    with pytest.raises(ImageLoadError, match=r"missing\.png: no such file"):
        inference_model(trained_like_checkpoint, str(tmp_path / "missing.png"))


def test_repeat_calls_reuse_the_loaded_model(trained_like_checkpoint, tmp_path, monkeypatch):
    loads = []
    real_get_model = inference.get_model
    monkeypatch.setattr(inference, "get_model", lambda *a, **k: loads.append(a) or real_get_model(*a, **k))
    monkeypatch.setattr(inference, "_CACHE", type(inference._CACHE)())
    copy = tmp_path / "weights.pth"
    copy.write_bytes(trained_like_checkpoint.read_bytes())
    photo = str(photo_paths()[0])
    first = inference_model(copy, photo)
    for _ in range(3):
        assert inference_model(copy, photo)["pred_label"] == first["pred_label"]
    assert len(loads) == 1
    state = torch.load(copy, weights_only=True)
    state["state_dict"]["backbone.fc.bias"][7] += 1e4  # rewriting the file must reload it
    torch.save(state, copy)
    again = inference_model(copy, photo)
    assert len(loads) == 2 and again["pred_label"] == 7


def test_named_model_with_a_local_file_uses_the_entrys_preset(trained_like_checkpoint):
    classifier = Classifier("inception_v3.tv_in1k", pretrained=trained_like_checkpoint)
    # the same pipeline; only the note differs, saying what was done to these weights
    assert dataclasses.replace(classifier.preprocess, source_note="") == dataclasses.replace(
        PRESETS["torchvision"], source_note="")
    assert classifier.class_names[0] == "tench, Tinca tinca"


def test_predict_streams_lazily_and_in_order(trained_like_checkpoint):
    classifier = Classifier(trained_like_checkpoint, batch_size=2, workers=2, backend="eager")
    photos = [str(p) for p in photo_paths()[:3]]
    endless = itertools.cycle(photos + [b"garbage"])
    taken = list(itertools.islice(classifier.predict(endless), 9))
    assert [p.index for p in taken] == list(range(9))
    assert [p.ok for p in taken] == [True, True, True, False] * 2 + [True]
    assert taken[3].error.startswith("not a recognised image format") and taken[3].name == "<bytes #3>"
    assert taken[4].label == taken[0].label and taken[4].name == photos[0]
    top = taken[0].topk(3, classifier.class_names)
    assert [t[0] for t in top] == list(np.argsort(-taken[0].scores, kind="stable")[:3])
    assert top[0][1] == classifier.class_names[top[0][0]] and top[0][2] == taken[0].score
    again = inference_model(trained_like_checkpoint, photos[0], topk=3)["topk"]  # another batch size: ulp noise
    assert [t[:2] for t in again] == [t[:2] for t in top]
    np.testing.assert_allclose([t[2] for t in again], [t[2] for t in top], rtol=1e-4)


def test_without_class_names_there_is_no_pred_class_like_mmpretrain():
    result = inference_model(InceptionV3(num_classes=10).eval(), str(photo_paths()[0]))
    assert set(result) == {"pred_scores", "pred_label", "pred_score"} and result["pred_scores"].shape == (10,)


def test_device_choice_is_logged_and_checked(caplog):
    with caplog.at_level(logging.INFO, logger="inceptionv3"):
        device = inference.select_device()
    expected = "cuda" if torch.cuda.is_available() else ("mps" if torch.backends.mps.is_available() else "cpu")
    assert device.type == expected and f"device {expected}" in caplog.text
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="CUDA is not available"):
            inference.select_device("cuda")


def test_get_model_objects_carry_their_preset(trained_like_checkpoint):
    model = get_model(trained_like_checkpoint)
    classifier = Classifier(model)
    assert classifier.preprocess is PRESETS["mmpretrain"] and len(classifier.class_names) == 1000
    with pytest.raises(InputError, match="class_names has 3 names but the model has 1000"):
        Classifier(model, class_names=["a", "b", "c"])
    buffer = io.BytesIO()
    Image.open(photo_paths()[0]).save(buffer, "PNG")
    assert classifier(buffer.getvalue())["pred_label"] == classifier([buffer.getvalue()])[0]["pred_label"]


def test_the_old_source_attribute_still_answers_with_a_deprecation_warning():
    """0.1.0 called an input's name ``source`` on predictions and load errors (the README printed it)."""
    from inceptionv3.decode import ImageLoadError
    from inceptionv3.inference import Prediction

    prediction, error = Prediction(0, "a.jpg"), ImageLoadError("b.jpg", "no such file", kind="unreadable")
    with pytest.warns(DeprecationWarning, match=r"Prediction.source is now Prediction.name"):
        assert prediction.source == "a.jpg"
    with pytest.warns(DeprecationWarning, match=r"ImageLoadError.source is now ImageLoadError.name"):
        assert error.source == "b.jpg"
