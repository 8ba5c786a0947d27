"""``inceptionv3 test``: metrics on labelled real photos in both layouts against independently computed scores,
ReaL, multi-crop geometry and averaging, ensembles, and 2 processes against 1."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import SHARED_DATA, independent_scores, photo_labels, torchrun
from PIL import Image
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from inceptionv3 import Classifier
from inceptionv3.cli import main
from inceptionv3.data import load_dataset
from inceptionv3.evaluate import EvalConfig, evaluate, shard
from inceptionv3.preprocess import PRESETS

PHOTOS = sorted(photo_labels())[:12]
WNIDS = [line.split("\t")[1] for line in (SHARED_DATA / "imagenet" / "classes.tsv").read_text().splitlines()[1:]]


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """The same 12 real photos as ImageNet's val layout (flat folder, val.txt, ReaL-style labels) and as class
    folders named by wnid. Each photo's label is the first class its README row lists."""
    root = tmp_path_factory.mktemp("labelled")
    flat, folders = root / "val", root / "train"
    flat.mkdir()
    labels = photo_labels()
    lines, real = [], []
    for number, name in enumerate(PHOTOS, start=1):
        val_name = f"ILSVRC2012_val_{number:08d}.JPEG"
        shutil.copy(SHARED_DATA / "images" / name, flat / val_name)
        lines.append(f"{val_name} {labels[name][0]}")
        real.append(labels[name] if number != 3 else [])  # one image without a valid ReaL label
        (folders / WNIDS[labels[name][0]]).mkdir(parents=True, exist_ok=True)
        shutil.copy(SHARED_DATA / "images" / name, folders / WNIDS[labels[name][0]] / name)
    (root / "val.txt").write_text("\n".join(lines) + "\n")
    (root / "real.json").write_text(json.dumps(real))
    return root


@pytest.fixture(scope="module")
def expected(trained_like_checkpoint):
    scores = independent_scores(trained_like_checkpoint, [SHARED_DATA / "images" / name for name in PHOTOS])
    return {path.name: value for path, value in scores.items()}


def test_report_matches_independent_scores(trained_like_checkpoint, labelled, expected, tmp_path, capsys):
    out, predictions = tmp_path / "report.json", tmp_path / "preds.csv"
    code = main(["test", "--data", str(labelled / "val"), "--ann", str(labelled / "val.txt"), "--weights",
                 str(trained_like_checkpoint), "--batch-size", "5", "--real-labels", str(labelled / "real.json"),
                 "--out", str(out), "--predictions", str(predictions), "--quiet"])
    assert code == 0
    report = json.loads(out.read_text())
    labels = np.array([photo_labels()[name][0] for name in PHOTOS])
    scores = np.stack([expected[name] for name in PHOTOS])
    top5 = np.argsort(-scores, axis=1, kind="stable")[:, :5]
    assert len(set(top5[:, 0])) > 3, "the test model must tell the photos apart"
    assert report["top1"] == pytest.approx(100 * np.mean(top5[:, 0] == labels))
    assert report["top5"] == pytest.approx(100 * np.mean((top5 == labels[:, None]).any(axis=1)))
    real = [photo_labels()[name] for name in PHOTOS]
    judged = [i for i in range(12) if i != 2]
    assert report["real_top1"] == pytest.approx(100 * np.mean([top5[i, 0] in real[i] for i in judged]))
    assert report["metrics"]["real_count"] == 11

    precision, recall, f1, _ = precision_recall_fscore_support(labels, top5[:, 0], average="macro", zero_division=0)
    metrics = report["metrics"]
    assert metrics["macro_precision"] == pytest.approx(100 * precision)
    assert metrics["macro_recall"] == pytest.approx(100 * recall)
    assert metrics["macro_f1"] == pytest.approx(100 * f1)
    for label in set(labels.tolist()):
        assert metrics["per_class_accuracy"][label] == pytest.approx(100 * np.mean(top5[labels == label, 0] == label))
    assert metrics["per_class_accuracy"][0] is None and metrics["count"] == 12

    # Everything needed to reproduce the run.
    model = report["models"][0]
    assert model["weights"] == str(trained_like_checkpoint) and len(model["weights_sha256"]) == 64
    assert model["preprocessing"].startswith("mmpretrain:") and report["crops"] == 1
    assert (model["backend"], model["precision"]) == ("eager", "fp32")  # auto: 12 images are too few to export
    assert report["data"]["images"] == 12 and report["data"]["failed"] == [] and report["images_per_s"] > 0
    assert report["wall_time_s"] > 0 and report["versions"]["torch"] == torch.__version__

    rows = list(csv.DictReader(predictions.open()))
    assert [Path(r["path"]).name for r in rows] == [f"ILSVRC2012_val_{n:08d}.JPEG" for n in range(1, 13)]
    for row, top, label in zip(rows, top5, labels, strict=True):
        assert [int(row[f"top{r}_label"]) for r in range(1, 6)] == top.tolist() and int(row["label"]) == label

    with open(out.with_suffix(".confusion.csv")) as handle:  # the classes that were a label or a prediction only
        table = list(csv.reader(handle))
    present = sorted(set(labels.tolist()) | set(top5[:, 0].tolist()))
    matrix = np.array([[int(v) for v in row[1:]] for row in table[1:]])
    np.testing.assert_array_equal(matrix, confusion_matrix(labels, top5[:, 0], labels=present))
    assert table[0][1:] == [report["class_names"][i] for i in present] and len(present) < 40
    with Image.open(out.with_suffix(".png")) as plot:  # few classes: the confusion matrix itself
        assert plot.size[0] >= 400 and len(plot.convert("RGB").getcolors(1 << 20)) > 3
    assert "top-1" in capsys.readouterr().out


def _by_photo(predictions: Path) -> dict[str, tuple[int, list[int]]]:
    """photo -> (label, top-5 labels) from a --predictions CSV; val copies are mapped back to their photo."""
    rows = list(csv.DictReader(predictions.open()))
    out = {}
    for row in rows:
        name = Path(row["path"]).name
        if name.startswith("ILSVRC2012_val_"):
            name = PHOTOS[int(name[15:23]) - 1]
        out[name] = (int(row["label"]), [int(row[f"top{r}_label"]) for r in range(1, 6)])
    assert len(out) == len(rows)
    return out


def test_class_folders_give_the_same_answers(trained_like_checkpoint, labelled, tmp_path):
    flat_preds, folder_preds = tmp_path / "flat.csv", tmp_path / "folders.csv"
    common = ["--weights", str(trained_like_checkpoint), "--quiet", "--batch-size", "4"]
    assert main(["test", "--data", str(labelled / "val"), "--ann", str(labelled / "val.txt"),
                 "--predictions", str(flat_preds), *common]) == 0
    assert main(["test", "--data", str(labelled / "train"), "--predictions", str(folder_preds), *common]) == 0
    flat, by_folder = _by_photo(flat_preds), _by_photo(folder_preds)
    assert sorted(flat) == sorted(PHOTOS)
    assert by_folder == flat  # photo by photo: the same label (wnid folder -> index) and the same top 5
    assert {name: label for name, (label, _) in flat.items()} == {name: photo_labels()[name][0] for name in PHOTOS}


def test_plainly_named_class_folders_score_against_their_classes(trained_like_checkpoint, expected, tmp_path):
    # issue 11: 'cheetah/' and 'cougar/' were taken as classes 0 (tench) and 1 (goldfish), their folder order.
    photos = {"cheetah": ["felix_220_cheetah.jpg", "felix_221_cheetah.jpg"],
              "Cougar": ["felix_218_cougar.jpg", "felix_219_cougar.jpg"]}
    for folder, names in photos.items():
        (tmp_path / folder).mkdir()
        for name in names:
            shutil.copy(SHARED_DATA / "images" / name, tmp_path / folder / name)
    members = [Classifier(trained_like_checkpoint, batch_size=4, backend="eager")]
    report, scores, _ = evaluate(members, load_dataset(tmp_path), EvalConfig(data=str(tmp_path)), progress=False)
    in_order = [name for folder in sorted(photos) for name in photos[folder]]  # 'Cougar' sorts before 'cheetah'
    assert [Path(n).name for n in scores.names] == in_order
    labels = [photo_labels()[name][0] for name in in_order]  # from the README table
    assert labels == [286, 286, 293, 293] and scores.labels.tolist() == labels
    independent = np.stack([expected[Path(n).name] for n in scores.names])
    np.testing.assert_array_equal(scores.topk, np.argsort(-independent, axis=1, kind="stable")[:, :5])
    assert report["class_names"][293].startswith("cheetah") and report["data"]["failed"] == []


@pytest.mark.slow  # a torchrun launch
def test_two_processes_give_the_same_report_and_predictions(trained_like_checkpoint, labelled, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    args = ["test", "--data", str(labelled / "val"), "--ann", str(labelled / "val.txt"), "--limit", "11",
            "--weights", str(trained_like_checkpoint), "--batch-size", "4", "--quiet"]
    def outputs(processes: int) -> list[str]:
        return ["--out", str(tmp_path / f"run{processes}.json"), "--predictions", str(tmp_path / f"run{processes}.csv")]

    # side by side: the one-process run takes one thread while torchrun's two processes start
    alone = subprocess.Popen([sys.executable, "-m", "inceptionv3", *args, *outputs(1)], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    subprocess.run([*torchrun("-m", "inceptionv3"), *args, *outputs(2)], env=env, check=True, capture_output=True,
                   text=True, timeout=300)
    assert alone.wait(timeout=300) == 0, alone.stderr.read()[-3000:]
    runs = {processes: (json.loads((tmp_path / f"run{processes}.json").read_text()),
                        list(csv.DictReader(open(tmp_path / f"run{processes}.csv")))) for processes in (1, 2)}
    one, two = runs[1], runs[2]
    assert two[0]["processes"] == 2 and one[0]["processes"] == 1
    assert one[0]["metrics"] == two[0]["metrics"] and one[0]["data"]["images"] == two[0]["data"]["images"] == 11
    assert len(one[1]) == 11 and one[1] == two[1]  # every image, in order, with bit-identical scores




def test_shards_cover_every_sample_once():
    for count in (0, 1, 7, 11, 32, 33):
        for world in (1, 2, 3):
            parts = [shard(count, 4, rank, world) for rank in range(world)]
            assert sorted(i for p in parts for i in p) == list(range(count))


# Multi-crop geometry, worked out by hand for a 600 x 800 photo with the mmpretrain preset (resize 342, crop 299).
# 10 crops: 342 x 456, corners at 0 and 456 - 299 = 157 / 342 - 299 = 43, centre round(21.5) = 22, round(78.5) = 78.
TEN_LANDSCAPE = [(342, 0, 0), (342, 0, 157), (342, 43, 0), (342, 43, 157), (342, 22, 78)]
# 144 crops, scale 470 (352 x 299 / 224): 470 x int(626.67) = 626; squares at x = 0, round(78) = 78, 156;
# inside a 470 square the corners are at 171 and the centre at round(85.5) = 86.
PAPER_470_MIDDLE_SQUARE = [(470, 0, 78), (470, 0, 249), (470, 171, 78), (470, 171, 249), (470, 86, 164)]


def test_multi_crop_boxes_are_exact():
    preset = PRESETS["mmpretrain"]
    assert [b[:3] for b in preset.view_boxes(600, 800, 10)] == TEN_LANDSCAPE
    portrait = sorted((342, x, y) for _, y, x in TEN_LANDSCAPE)  # the same boxes, transposed
    assert sorted(b[:3] for b in preset.view_boxes(800, 600, 10)) == portrait
    boxes = preset.view_boxes(600, 800, 144)
    assert len(boxes) == 72 and sorted({b[0] for b in boxes}) == [342, 384, 427, 470]
    middle = boxes[-12:-6]  # scale 470, centre square: 5 crops, then the whole square
    assert [b[:3] for b in middle[:5]] == PAPER_470_MIDDLE_SQUARE and middle[5] == (470, 0, 78, 470, 1)
    assert all(b[3] == 299 for b in boxes if not b[4]) and sum(b[4] for b in boxes) == 12


def test_144_views_are_built_and_averaged():
    preset = PRESETS["mmpretrain"]
    rgb = cv2.imread(str(SHARED_DATA / "images" / "felix_220_cheetah.jpg"))[:, :, ::-1].copy()
    views = preset.views(rgb, 144)
    assert views.shape == (144, 299, 299, 3)
    np.testing.assert_array_equal(views[72:], views[:72, :, ::-1])  # the second half mirrors the first
    resized = cv2.resize(rgb, (626, 470), interpolation=cv2.INTER_LINEAR)  # the 470 scale, by hand
    np.testing.assert_array_equal(views[72 - 12 + 4], resized[86:86 + 299, 164:164 + 299])
    whole = cv2.resize(np.ascontiguousarray(resized[:, 78:78 + 470]), (299, 299), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(views[72 - 12 + 5], whole)
    assert len({v.tobytes() for v in views}) == 144

    class ColourModel(torch.nn.Module):
        """Cheap stand-in for the network: logits from each view's mean colour, so 144 views run in a blink."""

        num_classes = 4

        def __init__(self):
            super().__init__()
            self.head = torch.nn.Linear(3, 4)
            generator = torch.Generator().manual_seed(0)  # both parameters: the bias was left to the global RNG
            torch.nn.init.normal_(self.head.weight, std=5.0, generator=generator)
            torch.nn.init.normal_(self.head.bias, std=1.0, generator=generator)

        def forward(self, x):
            return self.head(x.mean(dim=(2, 3)))

    model = ColourModel().eval()
    classifier = Classifier(model, preprocess="mmpretrain", crops=144, class_names=list("abcd"), batch_size=50)
    prediction = next(classifier.predict([SHARED_DATA / "images" / "felix_220_cheetah.jpg"]))
    with torch.no_grad():
        each = torch.softmax(model(preset.normalize(views)), dim=1).numpy()
    # float32 means over 299 x 299 pixels, batched 50 at a time there and 144 here, differ by about 1e-6.
    np.testing.assert_allclose(prediction.scores, each.mean(axis=0), atol=1e-5)
    assert np.abs(each - each.mean(axis=0)).max() > 1e-2  # the views really differ, so averaging matters


def test_ensemble_averages_the_members(trained_like_checkpoint, tmp_path, labelled, expected):
    other = tmp_path / "other.pth"
    state = torch.load(trained_like_checkpoint, weights_only=True)
    state["state_dict"]["backbone.fc.bias"] += torch.randn(1000, generator=torch.Generator().manual_seed(1)) * 3
    torch.save(state, other)
    dataset = load_dataset(labelled / "val", labelled / "val.txt").head(4)
    members = [Classifier(path, batch_size=4, backend="eager") for path in (trained_like_checkpoint, other)]
    config = EvalConfig(data=str(labelled / "val"), models=("a", "b"))
    report, scores, _ = evaluate(members, dataset, config, progress=False)
    # Each member's full softmax, computed without the package (torchvision's network, cv2 preprocessing).
    first = np.stack([expected[name] for name in PHOTOS[:4]])
    second = np.stack(list(independent_scores(other, [SHARED_DATA / "images" / n for n in PHOTOS[:4]]).values()))
    mean = (first + second) / 2
    np.testing.assert_array_equal(scores.topk, np.argsort(-mean, axis=1, kind="stable")[:, :5])
    np.testing.assert_allclose(scores.topk_scores, np.take_along_axis(mean, scores.topk, axis=1), atol=1e-5)
    # The members disagree on these very scores, so matching the average is not matching either member.
    assert np.abs(np.take_along_axis(first - second, scores.topk, axis=1)).max() > 0.02
    assert [m["weights"] for m in report["models"]] == [str(trained_like_checkpoint), str(other)]
    assert main(["test", "--data", str(labelled / "val"), "--ann", str(labelled / "val.txt"), "--limit", "2",
                 "--ensemble", str(trained_like_checkpoint), str(other), "--quiet"]) == 0


def test_bad_data_is_a_one_line_error(trained_like_checkpoint, tmp_path, capsys):
    (tmp_path / "val.txt").write_text("a.png 1\n")
    assert main(["test", "--data", str(tmp_path), "--ann", str(tmp_path / "val.txt"),
                 "--weights", str(trained_like_checkpoint)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("inceptionv3 test: error:") and "a.png" in err and len(err.strip().splitlines()) == 1

