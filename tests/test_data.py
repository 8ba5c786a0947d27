"""Datasets: both ImageNet layouts from the real photos, the shipped ImageNet label files, and bad annotations."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

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
from inceptionv3.imagenet import imagenet_wnids

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
    # A model without class names has nothing to match folders against: an error, unless the folder order is asked.
    with pytest.raises(DatasetError, match=r"no class names to match the data's 2 classes.*--label-by-folder-order"):
        align_to_model(dataset, None, 2)
    by_order = folder_dataset(tmp_path, label_by_folder_order=True)
    assert align_to_model(by_order, None, 2).labels.tolist() == [0, 1]  # ImageFolder's indices
    with pytest.raises(DatasetError, match="outside 0..0"):
        align_to_model(by_order, None, 1)


def _tsv_rows() -> list[tuple[str, list[str]]]:
    """(wnid, names) per ImageNet class, read from the shared classes.tsv, apart from the package's own lists."""
    rows = [line.split("\t") for line in (IMAGENET / "classes.tsv").read_text().splitlines()[1:]]
    assert [int(r[0]) for r in rows] == list(range(1000))
    return [(r[1], r[2].split(", ")) for r in rows]


def _index_of(main_name: str) -> int:
    """The one class whose first name is ``main_name``, looked up in classes.tsv."""
    found = [i for i, (_, names) in enumerate(_tsv_rows()) if names[0] == main_name]
    assert len(found) == 1, found
    return found[0]


def _make_folders(root, layout: dict[str, list[str]]) -> None:
    for folder, photos in layout.items():
        (root / folder).mkdir(parents=True)
        for photo in photos:
            shutil.copy(IMAGES / photo, root / folder / photo)


def test_plain_class_folder_names_match_by_name_synonym_or_wnid(tmp_path):
    # issue 11: 'cheetah/' and 'cougar/' were scored as classes 0 and 1 (tench, goldfish) by their folder order.
    tench_wnid = _tsv_rows()[0][0]
    layout = {"cheetah": ["felix_220_cheetah.jpg", "felix_221_cheetah.jpg"],
              "Mountain_Lion": ["felix_218_cougar.jpg"],  # a synonym of 'cougar, puma, catamount, mountain lion, ...'
              "tiger-cat": ["coral_cat.bmp"], "Great White Shark": ["coral_bird.bmp"],
              tench_wnid.upper(): ["skimage_coffee.png"], "harp": ["coral_parrot.jpg"],
              "tank suit": ["coral_hot_dog.jpg"]}
    _make_folders(tmp_path, layout)
    expected = {"cheetah": _index_of("cheetah"), "Mountain_Lion": _index_of("cougar"),
                "tiger-cat": _index_of("tiger cat"), "Great White Shark": _index_of("great white shark"),
                tench_wnid.upper(): 0,
                # 'harp' is also a synonym of 'harmonica, mouth organ, harp, ...': the class named 'harp' first wins.
                "harp": _index_of("harp"),
                "tank suit": next(i for i, (_, n) in enumerate(_tsv_rows()) if n == ["maillot", "tank suit"])}
    aligned = align_to_model(folder_dataset(tmp_path), imagenet_classes(), 1000)
    got = {Path(name).parent.name: int(label) for name, label in zip(aligned.names, aligned.labels, strict=True)}
    assert got == expected
    assert expected["cheetah"] == 293 and expected["Mountain_Lion"] == 286  # the README's indices for these photos
    assert aligned.class_names == imagenet_classes()


def test_unmatched_and_ambiguous_folders_are_an_error_naming_each(tmp_path):
    _make_folders(tmp_path, {"cheetah": ["felix_220_cheetah.jpg"], "crane": ["coral_bird.bmp"],
                             "maillot": ["coral_cat.bmp"], "cheetahs": ["felix_221_cheetah.jpg"]})
    rows = _tsv_rows()
    cranes = [(i, wnid) for i, (wnid, names) in enumerate(rows) if names == ["crane"]]
    maillots = [(i, wnid) for i, (wnid, names) in enumerate(rows) if names[0] == "maillot"]
    assert len(cranes) == 2 and len(maillots) == 2
    with pytest.raises(DatasetError) as caught:
        align_to_model(folder_dataset(tmp_path), imagenet_classes(), 1000)
    message = str(caught.value)
    assert message.startswith(f"{tmp_path}: 3 of 4 classes match none of the model's 1000 classes: ")
    assert "\n" not in message and "--classes FILE" in message and "--label-by-folder-order" in message
    for index, wnid in cranes + maillots:
        assert f"{index} " in message and f"= {wnid}" in message
    assert "cheetahs (no such class)" in message and "crane (ambiguous: " in message
    assert "maillot (ambiguous: " in message and "cheetah (" not in message


def test_explicit_classes_or_folder_order_label_the_folders(tmp_path):
    _make_folders(tmp_path, {"Zebra": ["coral_cat.bmp"], "ant": ["coral_bird.bmp", "skimage_coffee.png"]})
    def by_folder(dataset):
        return sorted((Path(n).parent.name, int(label)) for n, label in zip(dataset.names, dataset.labels, strict=True))

    classes = ("cat", "zebra", "ant")
    given = load_dataset(tmp_path, class_names=classes)
    assert by_folder(given) == [("Zebra", 1), ("ant", 2), ("ant", 2)]
    assert given.class_names == classes and not given.by_name
    assert by_folder(align_to_model(given, None, 3)) == [("Zebra", 1), ("ant", 2), ("ant", 2)]  # the list rules
    ordered = load_dataset(tmp_path, label_by_folder_order=True)
    assert by_folder(ordered) == [("Zebra", 0), ("ant", 1), ("ant", 1)] and ordered.class_names == ("Zebra", "ant")
    # Folder order on a 1000-class model: 'Zebra' (sorted first) is output 0, as the caller asked.
    assert by_folder(align_to_model(ordered, imagenet_classes(), 1000)) == [("Zebra", 0), ("ant", 1), ("ant", 1)]
    with pytest.raises(DatasetError, match=r"1 of 2 classes match none of the 2 classes given: Zebra \(no such"):
        load_dataset(tmp_path, class_names=("cat", "ant"))


def test_match_classes_prefers_the_main_name_and_never_guesses():
    from inceptionv3.data import match_classes

    classes = imagenet_classes()
    wnids = [wnid for wnid, _ in _tsv_rows()]
    names = ["missile", "gong", "partridge", "Cardigan Welsh corgi", "panda", "Cardigan", "crane", "cougar"]
    matched, problems = match_classes(names, classes, wnids)
    assert matched[:4] == [_index_of("missile"), _index_of("gong"), _index_of("partridge"), _index_of("Cardigan")]
    # 'panda' is a synonym of two classes, first of neither; 'Cardigan' is the main name of the corgi and, in
    # another case, of the sweater; 'crane' names a bird and a machine.
    assert matched[4:7] == [None, None, None] and matched[7] == _index_of("cougar")
    assert [p.split(" (")[0] for p in problems] == ["panda", "Cardigan", "crane"]
    assert match_classes(["tench"], ["tench", "tench"])[0] == [None]  # even an exact name, when two carry it


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


@pytest.mark.parametrize("classes, num_classes, label, bound", [
    (None, None, "99999999999", "0..999999"),  # issue 11: this built 10^11 class names
    (None, None, "1" + "0" * 5000, "0..999999"),  # more digits than int() converts
    (None, 10, "10", "0..9"),  # the model's class count, when the caller knows it
    ("imagenet", None, "1000", "0..999"),
])
def test_huge_labels_are_refused_before_anything_is_sized_by_them(tmp_path, classes, num_classes, label, bound):
    shutil.copy(IMAGES / "skimage_coffee.png", tmp_path / "img.jpg")
    shutil.copy(IMAGES / "coral_cat.bmp", tmp_path / "ok.bmp")
    ann = tmp_path / "val.txt"
    ann.write_text(f"ok.bmp 3\n# a comment\nimg.jpg {label}\n")
    class_names = imagenet_classes() if classes == "imagenet" else None
    bound_by_model = {} if num_classes is None else {"num_classes": num_classes}
    with pytest.raises(DatasetError) as caught:
        load_dataset(tmp_path, ann, class_names, **bound_by_model)
    message = str(caught.value)
    assert message.startswith(f"{ann}: 1 labels outside {bound}") and "line 3: img.jpg (label " in message
    assert label[:20] in message and len(message) < 400
    assert ("pass --classes FILE" in message) == (classes is None and num_classes is None)


def test_labels_within_the_bound_still_load(tmp_path):
    shutil.copy(IMAGES / "skimage_coffee.png", tmp_path / "a.png")
    shutil.copy(IMAGES / "coral_cat.bmp", tmp_path / "b.bmp")
    (tmp_path / "val.txt").write_text("a.png 0967\nb.bmp -0\n")
    dataset = load_dataset(tmp_path, tmp_path / "val.txt", num_classes=1000)
    assert dataset.labels.tolist() == [967, 0] and dataset.num_classes == 968
