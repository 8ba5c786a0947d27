"""Datasets: both ImageNet layouts from the real photos, the shipped ImageNet label files, and bad annotations."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import SHARED_DATA, photo_labels

from inceptionv3 import imagenet_classes
from inceptionv3.data import (
    DatasetError,
    align_to_model,
    annotation_dataset,
    folder_dataset,
    load_dataset,
    read_class_names,
    real_labels_for,
)
from inceptionv3.weights import imagenet_wnids

IMAGES = SHARED_DATA / "images"
IMAGENET = SHARED_DATA / "imagenet"


def test_the_shipped_val_txt_parses_and_names_what_is_missing(tmp_path):
    with pytest.raises(DatasetError, match=r"50000 of 50000 files are missing.*ILSVRC2012_val_00000001\.JPEG"):
        annotation_dataset(IMAGENET / "val.txt", tmp_path)
    (tmp_path / "ILSVRC2012_val_00000002.JPEG").write_bytes((IMAGES / "coral_cat.bmp").read_bytes())
    dataset = annotation_dataset(IMAGENET / "val.txt", tmp_path, imagenet_classes(), skip_missing=True)
    line = (IMAGENET / "val.txt").read_text().splitlines()[1].split()
    assert len(dataset) == 1 and dataset.skipped_missing == 49_999
    assert dataset.labels.tolist() == [int(line[1])] and dataset.names == [str(tmp_path / line[0])]


def test_folder_layout_sorts_classes_and_recurses(tmp_path):
    for relative, photo in [("n02123045/x/a.JPG", "coral_cat.bmp"), ("n01530575/b.png", "coral_bird.bmp"),
                            ("n02123045/c.jpeg", "skimage_chelsea.png")]:
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(IMAGES / photo, tmp_path / relative)
    (tmp_path / "n01530575" / "readme.txt").write_text("ignored")
    dataset = folder_dataset(tmp_path)
    assert dataset.class_names == ("n01530575", "n02123045")
    assert [p.removeprefix(str(tmp_path) + "/") for p in dataset.names] == [
        "n01530575/b.png", "n02123045/c.jpeg", "n02123045/x/a.JPG"]
    assert dataset.labels.tolist() == [0, 1, 1]
    # ImageNet wnid folders are matched to the 1000 outputs by wnid, not by their rank among these two.
    aligned = align_to_model(dataset, imagenet_classes(), 1000)
    wnids = [line.split("\t")[1] for line in (IMAGENET / "classes.tsv").read_text().splitlines()[1:]]
    assert list(imagenet_wnids()) == wnids
    assert aligned.labels.tolist() == [wnids.index("n01530575"), wnids.index("n02123045"), wnids.index("n02123045")]
    assert aligned.labels.tolist() == [10, 281, 281] and aligned.class_names == imagenet_classes()


def test_folders_named_like_the_models_classes_are_matched_by_name(tmp_path):
    for name in ("zebra", "ant"):
        (tmp_path / name).mkdir()
        shutil.copy(IMAGES / "coral_cat.bmp", tmp_path / name / "x.bmp")
    dataset = folder_dataset(tmp_path)
    assert align_to_model(dataset, ("cat", "zebra", "ant"), 3).labels.tolist() == [2, 1]
    assert align_to_model(dataset, None, 2).labels.tolist() == [0, 1]  # no names: ImageFolder's indices
    with pytest.raises(DatasetError, match="outside 0..0"):
        align_to_model(dataset, None, 1)


@pytest.mark.parametrize("content, message", [
    ("a.png 1\nb.png\n", r"1 lines are not 'filename label': line 2: 'b.png'"),
    ("a.png 1\nb.png one\n", r"line 2: 'b.png one'"),
    ("a.png 1\nb.png 1000\nc.png -1\n", r"2 labels outside 0..999: .*b.png \(label 1000\), .*c.png \(label -1\)"),
    ("a.png 1\nb.png 2\na.png 3\n", r"1 files are listed more than once: a.png \(2 times\)"),
    ("a.png 1\nmissing.png 2\n", r"1 of 2 files are missing under .*: missing.png \(--skip-missing"),
    ("\n# only a comment\n", "no entries"),
])
def test_bad_annotation_files_each_give_their_error(tmp_path, content, message):
    for name in ("a.png", "b.png", "c.png"):
        shutil.copy(IMAGES / "skimage_coffee.png", tmp_path / name)
    ann = tmp_path / "val.txt"
    ann.write_text(content)
    with pytest.raises(DatasetError, match=message) as caught:
        load_dataset(tmp_path, ann, imagenet_classes())
    assert str(ann) in str(caught.value)


def test_skip_missing_scores_the_rest_and_counts(tmp_path):
    shutil.copy(IMAGES / "skimage_coffee.png", tmp_path / "a.png")
    (tmp_path / "val.txt").write_text("a.png 967\nb.png 1\nc.png 2\n")
    dataset = load_dataset(tmp_path / "val.txt", skip_missing=True)  # an annotation file alone: root is its folder
    assert dataset.names == [str(tmp_path / "a.png")] and dataset.skipped_missing == 2


def test_class_lists_from_tsv_or_plain_lines(tmp_path):
    assert read_class_names(IMAGENET / "classes.tsv") == imagenet_classes()
    (tmp_path / "classes.txt").write_text("cat\ndog\n\n")
    assert read_class_names(tmp_path / "classes.txt") == ("cat", "dog")


def test_real_labels_are_found_by_val_number(tmp_path):
    table = json.loads((IMAGENET / "real_labels.json").read_text())
    assert len(table) == 50_000 and sum(1 for t in table if not t) > 0
    names = {"ILSVRC2012_val_00000001.JPEG": 0, "ILSVRC2012_val_00049999.JPEG": 49_998}
    lines = [f"{name} {i % 1000}" for i, name in enumerate(names)]
    for name in names:
        shutil.copy(IMAGES / "coral_cat.bmp", tmp_path / name)
    (tmp_path / "val.txt").write_text("\n".join(lines) + "\n")
    dataset = load_dataset(tmp_path, tmp_path / "val.txt")
    assert real_labels_for(dataset, IMAGENET / "real_labels.json") == [table[i] for i in names.values()]
    shutil.copy(IMAGES / "coral_cat.bmp", tmp_path / "holiday.jpg")
    (tmp_path / "val.txt").write_text("holiday.jpg 3\n")
    with pytest.raises(DatasetError, match="no ILSVRC2012_val_######## number.*holiday.jpg"):
        real_labels_for(load_dataset(tmp_path, tmp_path / "val.txt"), IMAGENET / "real_labels.json")


def test_photo_labels_cover_the_real_photos():
    labels = photo_labels()
    assert len(labels) == 21 and all(0 <= i < 1000 for v in labels.values() for i in v)
    assert np.unique([v[0] for v in labels.values()]).size >= 10
